"""VJP cases of the rules added for "any model a user brings": LSTM, GRU, RNN, ... (same form as ``_vjp_cases``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from _vjp_cases import Case


def _lens(*v: int) -> tuple[str, np.ndarray]:
    return ("i", np.array(v, dtype=np.int32))


def extra_cases() -> list[Case]:
    """The cases (built on call: ``_vjp_cases`` imports this module while it is being defined)."""
    from _vjp_cases import NONE, Case, W, X

    _H = 3
    _RECURRENT = [
        Case("RNN", [X(4, 2, 3), W(1, _H, 3), W(1, _H, _H), W(1, 2 * _H)], {"hidden_size": _H}, outputs=2),
        Case(
            "RNN",
            [X(4, 2, 3), W(2, _H, 3), W(2, _H, _H), W(2, 2 * _H), _lens(4, 2), X(2, 2, _H)],
            {
                "hidden_size": _H,
                "direction": "bidirectional",
                "activations": ["Sigmoid", "Affine"],
                "activation_alpha": [0.7],
                "activation_beta": [0.2],
            },
            outputs=2,
            name="bidi-lens-acts",
        ),
        Case(
            "RNN",
            [X(4, 2, 3), W(1, _H, 3), W(1, _H, _H), NONE, NONE, X(1, 2, _H)],
            {"hidden_size": _H, "direction": "reverse", "activations": ["LeakyRelu"], "activation_alpha": [0.1]},
            opset=14,
            outputs=2,
            gen="away",
            name="reverse-leaky",
        ),
        Case(
            "GRU",
            [X(4, 2, 3), W(1, 3 * _H, 3), W(1, 3 * _H, _H), W(1, 6 * _H)],
            {"hidden_size": _H},
            outputs=2,
            dtype="float32",
        ),
        Case(
            "GRU",
            [X(4, 2, 3), W(2, 3 * _H, 3), W(2, 3 * _H, _H), W(2, 6 * _H), _lens(3, 4), X(2, 2, _H)],
            {"hidden_size": _H, "direction": "bidirectional", "linear_before_reset": 1},
            outputs=2,
            dtype="float32",
            name="bidi-lbr-lens",
        ),
        Case(
            "GRU",
            [X(3, 2, 3), W(1, 3 * _H, 3), W(1, 3 * _H, _H), W(1, 6 * _H)],
            {
                "hidden_size": _H,
                "direction": "reverse",
                "activations": ["HardSigmoid", "Softsign"],
                "activation_alpha": [0.3],
                "activation_beta": [0.45],
                "clip": 1.5,
            },
            outputs=2,
            dtype="float32",
            name="reverse-acts-clip",
        ),
        Case(
            "LSTM",
            [X(4, 2, 3), W(1, 4 * _H, 3), W(1, 4 * _H, _H), W(1, 8 * _H)],
            {"hidden_size": _H},
            outputs=3,
            dtype="float32",
        ),
        Case(
            "LSTM",
            [
                X(4, 2, 3),
                W(2, 4 * _H, 3),
                W(2, 4 * _H, _H),
                W(2, 8 * _H),
                _lens(2, 4),
                X(2, 2, _H),
                X(2, 2, _H),
                W(2, 3 * _H),
            ],
            {"hidden_size": _H, "direction": "bidirectional"},
            outputs=3,
            dtype="float32",
            name="bidi-lens-states-peepholes",
        ),
        Case(
            "LSTM",
            [X(3, 2, 3), W(1, 4 * _H, 3), W(1, 4 * _H, _H), W(1, 8 * _H), NONE, X(1, 2, _H), X(1, 2, _H)],
            {"hidden_size": _H, "direction": "reverse", "clip": 1.2, "activations": ["Sigmoid", "Relu", "Tanh"]},
            opset=14,
            outputs=3,
            dtype="float32",
            gen="away",
            name="reverse-clip-relu",
        ),
    ]

    def sizes(*v: int) -> tuple[str, np.ndarray]:
        return ("i", np.array(v, dtype=np.int64))

    def f32(*v: float) -> tuple[str, np.ndarray]:  # scales: float32 only (the case runs in float32)
        return ("c", np.array(v, dtype=np.float32))

    up, down = sizes(1, 2, 7, 9), sizes(1, 2, 3, 2)
    _RESIZE = [
        Case("Resize", [X(1, 2, 3, 5), NONE, NONE, up], opset=13, name="nearest-default"),
        Case(
            "Resize",
            [X(1, 2, 6, 5), NONE, NONE, down],
            {"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
            opset=13,
            name="nearest-asymmetric-floor-down",
        ),
        Case(
            "Resize",
            [X(1, 2, 3, 5), NONE, NONE, up],
            {"coordinate_transformation_mode": "align_corners", "nearest_mode": "round_prefer_ceil"},
            opset=13,
            name="nearest-align-ceil",
        ),
        Case(
            "Resize",
            [X(1, 2, 3, 5), NONE, NONE, up],
            {"coordinate_transformation_mode": "tf_half_pixel_for_nn", "nearest_mode": "ceil"},
            opset=13,
            name="nearest-tfnn-ceil",
        ),
        Case(
            "Resize",
            [X(1, 2, 3, 4), NONE, NONE, sizes(1, 2, 6, 8)],
            {"coordinate_transformation_mode": "asymmetric", "nearest_mode": "round_prefer_floor"},
            opset=13,
            name="nearest-asymmetric-ties",
        ),
        Case("Resize", [X(1, 2, 3, 5), NONE, NONE, up], {"mode": "linear"}, opset=13, name="linear-half-pixel"),
        Case(
            "Resize",
            [X(1, 2, 3, 5), NONE, NONE, up],
            {"mode": "linear", "coordinate_transformation_mode": "align_corners"},
            opset=13,
            name="linear-align",
        ),
        Case(
            "Resize",
            [X(1, 2, 6, 5), NONE, NONE, down],
            {"mode": "linear", "coordinate_transformation_mode": "asymmetric"},
            opset=13,
            name="linear-asym-down",
        ),
        Case(
            "Resize",
            [X(1, 2, 3, 5), NONE, NONE, sizes(1, 2, 1, 9)],
            {"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel"},
            opset=13,
            name="linear-pytorch-size1",
        ),
        Case(
            "Resize",
            [X(1, 2, 3, 5), NONE, NONE, up],
            {"mode": "linear", "coordinate_transformation_mode": "half_pixel_symmetric"},
            opset=19,
            name="linear-half-pixel-symmetric",
        ),
        Case(
            "Resize",
            [X(1, 2, 4, 5), ("c", np.array([0, 0, 0.1, 0.2, 1, 1, 0.8, 1.1])), NONE, sizes(1, 2, 5, 6)],
            {"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize", "extrapolation_value": 0.5},
            opset=13,
            name="linear-tf-crop",
        ),
        Case("Resize", [X(1, 2, 4, 5), NONE, NONE, up], {"mode": "cubic"}, opset=13, name="cubic"),
        Case(
            "Resize",
            [X(1, 2, 4, 5), NONE, NONE, down],
            {"mode": "cubic", "cubic_coeff_a": -0.5, "exclude_outside": 1},
            opset=13,
            name="cubic-exclude-down",
        ),
        Case(
            "Resize",
            [X(1, 2, 3, 5), NONE, f32(1, 1, 2, 1.5)],
            {"mode": "nearest"},
            opset=13,
            dtype="float32",
            name="nearest-scales",
        ),
        Case(
            "Resize",
            [X(1, 2, 4, 5), NONE, f32(1, 1, 1.5, 0.7)],
            {"mode": "linear"},
            opset=13,
            dtype="float32",
            name="linear-scales",
        ),
        Case(
            "Resize",
            [X(1, 2, 3, 5), NONE, NONE, sizes(8, 8)],
            {"mode": "linear", "axes": [2, 3], "keep_aspect_ratio_policy": "not_larger"},
            opset=18,
            name="linear-axes-not-larger",
        ),
        Case(
            "Resize", [X(1, 2, 3, 5), f32(1, 1, 2, 2)], {"mode": "nearest"}, opset=10, dtype="float32", name="opset10"
        ),
        Case(
            "Upsample", [X(1, 2, 3, 5), f32(1, 1, 2, 3)], {"mode": "nearest"}, opset=9, dtype="float32", name="nearest"
        ),
        Case(
            "Upsample", [X(1, 2, 3, 5), f32(1, 1, 2, 2.5)], {"mode": "linear"}, opset=9, dtype="float32", name="linear"
        ),
        Case(
            "Upsample",
            [X(1, 2, 3, 5)],
            {"mode": "nearest", "scales": [1.0, 1.0, 2.0, 2.0]},
            opset=7,
            dtype="float32",
            name="attr-scales",
        ),
    ]
    _EINSUM = [
        Case("Einsum", [X(2, 3, 4), X(2, 4, 5)], {"equation": "bik,bkj->bij"}, opset=12),
        Case("Einsum", [X(2, 3, 4), W(4, 5)], {"equation": "...k,kj->...j"}, opset=12, name="ellipsis-weight"),
        Case("Einsum", [X(2, 3, 3, 4), X(2, 3, 5, 4)], {"equation": "...ik,...jk"}, opset=12, name="implicit-ellipsis"),
        Case("Einsum", [X(2, 3, 4), X(4)], {"equation": "bij,j->bi"}, opset=12, name="vector"),
        Case("Einsum", [X(2, 3, 4)], {"equation": "bij->bj"}, opset=12, name="reduce"),
        Case("Einsum", [X(2, 3), X(4)], {"equation": "bi,j->bij"}, opset=12, name="outer"),
        Case("Einsum", [X(2, 3), X(3, 4), X(4)], {"equation": "ai,ij,j->a"}, opset=12, name="three"),
        Case("Einsum", [X(2, 3), X(5)], {"equation": "ai,k->a"}, opset=12, name="summed-out"),
    ]
    _MORE = [
        Case(
            "Clip",
            [X(2, 3, 4), ("w", np.array(-0.55)), ("w", np.array(0.45))],
            gen="spaced",
            opset=13,
            name="bound-grads",
        ),
        Case("Clip", [X(2, 3, 4), NONE, ("w", np.array(0.45))], gen="spaced", opset=13, name="max-grad"),
        Case(
            "Clip",
            [X(2, 3, 4), ("w", np.array(0.3)), ("w", np.array(-0.2))],
            gen="spaced",
            opset=13,
            name="min-above-max",
        ),
        Case("InstanceNormalization", [X(2, 3, 4, 5), W(3), W(3)], {"epsilon": 1e-3}),
        Case("InstanceNormalization", [X(2, 3, 7), W(3), W(3)], name="1d"),
        Case(
            "GroupNormalization",
            [X(2, 6, 3, 4), W(6), W(6)],
            {"num_groups": 2, "epsilon": 1e-3},
            opset=21,
            dtype="float32",
        ),
        Case("PRelu", [X(2, 3, 4, 4), W(3, 1, 1)], gen="away"),
        Case("PRelu", [X(2, 3, 4), W(1)], gen="away", name="scalar-slope"),
        Case("DepthToSpace", [X(2, 8, 2, 3)], {"blocksize": 2}, opset=13),
        Case("DepthToSpace", [X(2, 8, 2, 3)], {"blocksize": 2, "mode": "CRD"}, opset=13, name="crd"),
        Case("SpaceToDepth", [X(2, 2, 4, 6)], {"blocksize": 2}, opset=13),
        Case(
            "DequantizeLinear",
            [
                ("i", np.arange(-12, 12, dtype=np.int8).reshape(2, 3, 4)),
                ("w", np.array(0.1)),
                ("i", np.array(3, np.int8)),
            ],
            opset=13,
            dtype="float32",
        ),
        Case(
            "DequantizeLinear",
            [("i", np.arange(0, 24, dtype=np.uint8).reshape(2, 3, 4)), W(3), ("i", np.array([1, 2, 3], np.uint8))],
            {"axis": 1},
            opset=13,
            dtype="float32",
            name="per-axis",
        ),
        Case("Mod", [X(2, 3, 4), ("w", np.array([0.7, -0.9, 1.3, 0.8]))], {"fmod": 1}, gen="away", name="fmod"),
        Case("Mish", [X(2, 3, 4)], opset=18),
        Case("Celu", [X(2, 3, 4)], {"alpha": 0.7}, opset=12, gen="away"),
        Case("ThresholdedRelu", [X(2, 3, 4)], {"alpha": 0.3}, opset=10, gen="spaced"),
        Case("GatherElements", [X(3, 4), ("i", np.array([[0, 2, 2, 1], [1, 0, -1, 0]]))], {"axis": 0}, opset=13),
        Case("GatherND", [X(2, 3, 4), ("i", np.array([[0, 1], [1, 2], [0, 1]]))], opset=13),
        Case("GatherND", [X(2, 3, 4), ("i", np.array([[1], [0]]))], {"batch_dims": 1}, opset=13, name="batch-dims"),
        Case("CumSum", [X(2, 3, 4), ("i", np.array(1))], opset=14),
        Case("CumSum", [X(2, 3, 4), ("i", np.array(-1))], {"exclusive": 1, "reverse": 1}, opset=14, name="excl-rev"),
        Case("Trilu", [X(2, 4, 5), ("i", np.array(1))], opset=14),
        Case("Trilu", [X(2, 4, 5)], {"upper": 0}, opset=14, name="lower"),
        Case("LpNormalization", [X(2, 3, 4)], {"axis": 1}, opset=13),
        Case("LpNormalization", [X(2, 3, 4)], {"axis": -1, "p": 1}, opset=13, gen="away", name="l1"),
        Case("TopK", [X(2, 3, 5), ("i", np.array([2]))], {"axis": -1}, opset=11, outputs=2, gen="spaced"),
        Case(
            "TopK",
            [X(2, 5, 3), ("i", np.array([2]))],
            {"axis": 1, "largest": 0},
            opset=11,
            outputs=2,
            gen="spaced",
            name="smallest",
        ),
        Case("ScatterND", [X(4, 3), ("i", np.array([[1], [3]])), X(2, 3)], opset=13),
        Case(
            "ScatterND", [X(4, 3), ("i", np.array([[0, 1], [2, 2]])), X(2)], {"reduction": "add"}, opset=16, name="add"
        ),
    ]
    return _RECURRENT + _RESIZE + _EINSUM + _MORE


#: ops whose onnx.reference kernels do not implement the spec the cases use (sequence_lens, per-direction
#: activations, layout; DequantizeLinear before opset 19; LRN, whose reference output differs from the
#: spec's formula and onnxruntime by up to 0.9 on the cases) or compute in float32 inside
#: (GroupNormalization's stash_type): their float64 check is a twin (tests/opsets/test_rnn.py,
#: tests/opsets/test_lrn.py) or none
NO_REFERENCE = frozenset({"LSTM", "GRU", "RNN", "DequantizeLinear", "GroupNormalization", "LRN"})

#: ops that compute in float32 inside even on float64 data (onnxruntime's Shrink too): checked in float32 only
FLOAT32_INSIDE = frozenset({"GroupNormalization", "Shrink"})

#: ops whose VJP is the straight-through estimator, not a derivative: finite differences cannot check it;
#: tests/opsets/test_quantize_ste.py checks it against torch's fake-quantize
STRAIGHT_THROUGH_ONLY = frozenset({"QuantizeLinear", "DynamicQuantizeLinear"})
