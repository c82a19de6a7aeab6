"""The table of op cases every VJP rule is checked on (op, attributes, input shapes, opset).

Each input is ``(kind, spec)``:

- ``"x"``: a float graph input (gets an input gradient); spec is a shape or an array;
- ``"w"``: a float initializer (gets a weight gradient); spec is a shape or an array;
- ``"i"``: an integer initializer (shapes, axes, indices): spec is the array;
- ``"c"``: a float initializer that carries no gradient by definition (Clip bounds): spec is the array;
- ``""``: an omitted optional input.

Generators keep random inputs away from kinks (Relu at 0, ties in a max) by more than the
finite-difference step: ``away`` (|x| >= 0.1), ``pos`` (0.5..2), ``spaced`` (distinct values at least 0.05
apart), ``normal``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Case:
    op: str
    inputs: list[tuple[str, Any]]
    attrs: dict[str, Any] = field(default_factory=dict)
    opset: int = 17
    outputs: int = 1
    gen: str = "normal"
    name: str = ""
    dtype: str | None = None  # force a dtype (else float64 where onnxruntime runs the op in double)

    @property
    def id(self) -> str:
        return f"{self.op}-{self.name}-op{self.opset}" if self.name else f"{self.op}-op{self.opset}"


def X(*shape: int) -> tuple[str, Any]:
    return ("x", shape)


def W(*shape: int) -> tuple[str, Any]:
    return ("w", shape)


def I(*values: int) -> tuple[str, Any]:  # noqa: E743
    return ("i", np.array(values, dtype=np.int64))


NONE = ("", None)


def generate(gen: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if gen == "away":
        return np.sign(rng.standard_normal(shape)) * rng.uniform(0.1, 1.5, shape)
    if gen == "pos":
        return rng.uniform(0.5, 2.0, shape)
    if gen == "spaced":
        n = int(np.prod(shape))
        return (rng.permutation(n) - n // 2 + 0.5).reshape(shape) * 0.05  # odd multiples of 0.025
    return rng.standard_normal(shape)


_UNARY = [
    Case("Relu", [X(2, 3, 4)], gen="away"),
    Case("LeakyRelu", [X(2, 3, 4)], {"alpha": 0.2}, gen="away"),
    Case("Elu", [X(2, 3, 4)], {"alpha": 0.7}, gen="away"),
    Case("Selu", [X(2, 3, 4)], gen="away"),
    Case("Clip", [X(2, 3, 4), ("c", np.array(-0.55)), ("c", np.array(0.45))], gen="spaced", opset=13),
    Case("Clip", [X(2, 3, 4), NONE, ("c", np.array(0.45))], gen="spaced", opset=13, name="max-only"),
    Case("Clip", [X(2, 3, 4)], {"min": -0.55, "max": 0.45}, gen="spaced", opset=6, name="attrs"),
    Case("Sigmoid", [X(2, 3, 4)]),
    Case("Tanh", [X(2, 3, 4)]),
    Case("HardSigmoid", [X(2, 3, 4)], {"alpha": 0.3, "beta": 0.4}, gen="spaced"),
    Case("HardSwish", [X(2, 3, 40)], gen="spaced"),
    Case("Erf", [X(2, 3, 4)]),
    Case("Gelu", [X(2, 3, 4)], opset=20),
    Case("Gelu", [X(2, 3, 4)], {"approximate": "tanh"}, opset=20, name="tanh"),
    Case("Exp", [X(2, 3, 4)]),
    Case("Log", [X(2, 3, 4)], gen="pos"),
    Case("Sqrt", [X(2, 3, 4)], gen="pos"),
    Case("Reciprocal", [X(2, 3, 4)], gen="pos"),
    Case("Neg", [X(2, 3, 4)]),
    Case("Abs", [X(2, 3, 4)], gen="away"),
    Case("Softplus", [X(2, 3, 4)]),
    Case("Softsign", [X(2, 3, 4)], gen="away"),  # |x| has a kink at 0
    Case("Sin", [X(2, 3, 4)]),
    Case("Cos", [X(2, 3, 4)]),
    Case("Identity", [X(2, 3, 4)]),
    Case("Dropout", [X(2, 3, 4)], opset=13),
    Case("Dropout", [X(2, 3, 4)], {"ratio": 0.5}, opset=7, name="opset7"),
    Case("Cast", [X(2, 3, 4)], {"to": 11}, dtype="float32", name="float-to-double"),
    Case("Cast", [X(2, 3, 4)], {"to": 11}, name="double-to-double"),
    Case("CastLike", [X(2, 3, 4), ("c", np.zeros(1))], opset=15),
    Case("Softmax", [X(2, 3, 4)]),
    Case("Softmax", [X(2, 3, 4)], {"axis": 1}, name="axis1"),
    Case("Softmax", [X(2, 3, 4)], {"axis": 1}, opset=11, name="coerced"),
    Case("LogSoftmax", [X(2, 3, 4)]),
    Case("LogSoftmax", [X(2, 3, 4)], {"axis": 0}, opset=11, name="coerced"),
]

_BINARY = [
    Case("Add", [X(2, 3, 4), X(3, 1)]),
    Case("Add", [X(2, 3, 4), W(4)], name="bias"),
    Case("Sub", [X(2, 3, 4), X(2, 1, 4)]),
    Case("Mul", [X(2, 3, 4), W(1, 3, 1)]),
    Case("Div", [X(2, 3, 4), X(4)], gen="pos"),
    Case("Pow", [X(2, 3, 4), X(3, 4)], gen="pos"),
    Case("Pow", [X(2, 3, 4), ("w", np.array(2.0))], gen="pos", name="scalar-exp"),
    Case("Max", [X(2, 3, 4), X(3, 4), X(4)]),  # float64: no ties, no kink within the step
    Case("Min", [X(2, 3, 4), X(2, 3, 4)]),
    Case("Sum", [X(2, 3, 4), X(3, 4), X(1)]),
    Case("Mean", [X(2, 3, 4), X(3, 4)]),
    Case("Where", [("i", np.array([[True, False, True, False]] * 3)), X(2, 3, 4), X(3, 1)]),
]

_WEIGHTED = [
    Case("Conv", [X(2, 3, 7, 7), W(4, 3, 3, 3), W(4)]),
    Case("Conv", [X(2, 3, 9, 8), W(4, 3, 3, 2)], {"strides": [2, 3], "pads": [1, 0, 2, 1]}, name="strided-padded"),
    Case("Conv", [X(2, 4, 9, 9), W(6, 2, 3, 3), W(6)], {"group": 2, "dilations": [2, 1]}, name="groups-dilated"),
    Case("Conv", [X(2, 4, 8, 8), W(4, 1, 3, 3), W(4)], {"group": 4, "pads": [1, 1, 1, 1]}, name="depthwise"),
    Case("Conv", [X(2, 3, 8, 8), W(6, 1, 3, 3)], {"group": 3, "strides": [2, 2]}, name="depthwise-mult"),
    Case("Conv", [X(2, 3, 7, 8), W(4, 3, 3, 3)], {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, name="same-upper"),
    Case("Conv", [X(2, 3, 7, 8), W(4, 3, 2, 2)], {"auto_pad": "SAME_LOWER"}, name="same-lower"),
    Case("Conv", [X(2, 3, 7, 8), W(4, 3, 3, 3)], {"auto_pad": "VALID"}, name="valid"),
    Case("Conv", [X(2, 3, 10), W(4, 3, 3), W(4)], {"strides": [2], "pads": [1, 1]}, name="1d"),
    Case("Conv", [X(1, 2, 4, 5, 5), W(3, 2, 2, 3, 3)], {"pads": [0, 1, 1, 1, 0, 0]}, name="3d"),
    Case("Conv", [X(2, 8, 5, 5), W(16, 8, 1, 1)], name="pointwise"),
    Case("Conv", [X(2, 8, 5, 5), W(6, 8, 1, 1), W(6)], name="pointwise-bias"),
    Case("Conv", [X(2, 4, 9, 9), W(4, 1, 3, 3)], {"group": 4, "strides": [2, 2], "dilations": [1, 2]},
         name="depthwise-strided"),
    Case("ConvTranspose", [X(2, 3, 5, 5), W(3, 4, 3, 3), W(4)]),
    Case("ConvTranspose", [X(2, 4, 4, 5), W(4, 3, 3, 3)], {"strides": [2, 2], "pads": [1, 0, 0, 1]}, name="strided"),
    Case("ConvTranspose", [X(2, 4, 4, 4), W(4, 2, 3, 3)], {"group": 2, "dilations": [2, 2]}, name="groups"),
    Case(
        "ConvTranspose",
        [X(2, 3, 4, 4), W(3, 2, 3, 3)],
        {"strides": [2, 2], "output_padding": [1, 1], "pads": [1, 1, 1, 1]},
        name="output-padding",
    ),
    Case(
        "ConvTranspose",
        [X(2, 3, 4, 4), W(3, 2, 3, 3)],
        {"strides": [2, 2], "output_shape": [9, 10]},
        name="output-shape",
    ),
    Case("ConvTranspose", [X(2, 3, 4, 4), W(3, 2, 3, 3)], {"strides": [2, 2], "auto_pad": "SAME_UPPER"}, name="same"),
    Case("Gemm", [X(5, 4), W(3, 4), W(3)], {"transB": 1}),
    Case("Gemm", [X(4, 5), W(4, 3), W(5, 3)], {"transA": 1, "alpha": 0.7, "beta": 1.3}, name="transA-alpha-beta"),
    Case("Gemm", [X(5, 4), X(4, 3)], name="no-bias"),
    Case("Gemm", [X(5, 4), W(3, 4), ("w", np.ones((1, 1)))], {"transB": 1, "beta": 0.5}, name="scalar-bias"),
    Case("MatMul", [X(5, 4), W(4, 3)]),
    Case("MatMul", [X(2, 3, 5, 4), W(4, 3)], name="batched-weight"),
    Case("MatMul", [X(2, 1, 5, 4), X(3, 4, 2)], name="broadcast"),
    Case("MatMul", [X(2, 5, 4), X(4)], name="vector-rhs"),
    Case("MatMul", [X(4), X(2, 4, 3)], name="vector-lhs"),
]

_NORM_POOL = [
    Case("BatchNormalization", [X(2, 3, 4, 4), W(3), W(3), W(3), ("w", np.array([0.5, 1.0, 2.0]))], {"epsilon": 1e-3}),
    Case("BatchNormalization", [X(2, 3), W(3), W(3), W(3), ("w", np.array([0.5, 1.0, 2.0]))], opset=9, name="2d"),
    Case("LRN", [X(2, 7, 3, 3)], {"size": 5, "alpha": 0.5, "beta": 0.75, "bias": 1.0}, gen="pos"),
    Case("LRN", [X(2, 6, 4, 1)], {"size": 3, "alpha": 0.3, "beta": 0.5, "bias": 2.0}, name="narrow", gen="pos"),
    Case("LRN", [X(1, 3, 2, 2)], {"size": 3}, opset=9, name="defaults"),
    Case("MeanVarianceNormalization", [X(2, 3, 4, 4)], opset=13),
    Case("MeanVarianceNormalization", [X(3, 2, 5)], {"axes": [1, 2]}, opset=13, name="per-sample"),
    Case("MeanVarianceNormalization", [X(2, 3, 2, 2)], {"axes": [0, 2, 3]}, opset=9, name="op9"),
    # onnxruntime's Shrink computes in float32 on float64 data: float32 cases (onnx.reference checks float64)
    Case("Shrink", [X(3, 4)], {"lambd": 0.3, "bias": 0.1}, gen="away", opset=9, dtype="float32"),
    Case("Shrink", [X(2, 5)], gen="away", opset=13, name="defaults", dtype="float32"),
    Case("LayerNormalization", [X(2, 3, 5), W(5), W(5)]),
    Case("LayerNormalization", [X(2, 3, 5), W(3, 5), W(5)], {"axis": -2}, outputs=3, name="mean-invstd"),
    Case("LayerNormalization", [X(2, 3, 5), W(3, 5)], {"axis": 1, "epsilon": 1e-3}, name="axis1-no-bias"),
    Case("MaxPool", [X(2, 3, 6, 6)], {"kernel_shape": [2, 2], "strides": [2, 2]}, gen="spaced"),
    Case(
        "MaxPool",
        [X(2, 2, 7, 7)],
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
        gen="spaced",
        name="padded",
    ),
    Case(
        "MaxPool",
        [X(1, 2, 7, 8)],
        {"kernel_shape": [3, 2], "strides": [2, 2], "ceil_mode": 1},
        gen="spaced",
        name="ceil",
    ),
    Case("MaxPool", [X(1, 2, 8, 8)], {"kernel_shape": [2, 2], "dilations": [2, 2]}, gen="spaced", name="dilated"),
    Case(
        "MaxPool",
        [X(1, 2, 7, 7)],
        {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"},
        gen="spaced",
        name="same",
    ),
    Case("MaxPool", [X(2, 3, 6, 6)], {"kernel_shape": [2, 2], "strides": [2, 2]}, opset=8, gen="spaced", name="opset8"),
    Case("AveragePool", [X(2, 3, 6, 6)], {"kernel_shape": [2, 2], "strides": [2, 2]}),
    Case(
        "AveragePool",
        [X(2, 2, 7, 7)],
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
        name="exclude-pad",
    ),
    Case(
        "AveragePool",
        [X(2, 2, 7, 7)],
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1},
        name="include-pad",
    ),
    Case("AveragePool", [X(1, 2, 7, 8)], {"kernel_shape": [3, 2], "strides": [2, 2], "ceil_mode": 1}, name="ceil"),
    Case(
        "AveragePool",
        [X(1, 2, 7, 8)],
        {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1, "pads": [1, 1, 1, 1], "count_include_pad": 1},
        name="ceil-include-pad",
    ),
    Case("AveragePool", [X(1, 2, 7, 7)], {"kernel_shape": [3, 3], "auto_pad": "SAME_LOWER"}, name="same"),
    Case("AveragePool", [X(1, 2, 8, 8)], {"kernel_shape": [2, 2], "dilations": [2, 2]}, opset=19, name="dilated"),
    Case("GlobalAveragePool", [X(2, 3, 4, 5)]),
    Case("GlobalMaxPool", [X(2, 3, 4, 5)], gen="spaced"),
]

_REDUCE = [
    Case("ReduceMean", [X(2, 3, 4)], {"axes": [1]}, opset=13),
    Case("ReduceMean", [X(2, 3, 4), I(-1, 0)], {"keepdims": 0}, opset=18, name="axes-input"),
    Case("ReduceMean", [X(2, 3, 4)], {}, opset=13, name="all"),
    Case("ReduceSum", [X(2, 3, 4)], {"axes": [2], "keepdims": 0}, opset=11, name="attr"),
    Case("ReduceSum", [X(2, 3, 4), I(1)], opset=13),
    Case("ReduceSum", [X(2, 3, 4), ("i", np.zeros(0, np.int64))], {"noop_with_empty_axes": 1}, opset=13, name="noop"),
    Case("ReduceMax", [X(2, 3, 4)], {"axes": [1]}, opset=13, gen="spaced"),
    Case("ReduceMin", [X(2, 3, 4), I(2)], opset=18, gen="spaced"),
    Case("ReduceSumSquare", [X(2, 3, 4)], {"axes": [0, 2]}, opset=13),
    Case("ReduceL1", [X(2, 3, 4)], {"axes": [1]}, opset=13, gen="away"),
    Case("ReduceL2", [X(2, 3, 4), I(1)], opset=18),
    Case("ReduceLogSumExp", [X(2, 3, 4)], {"axes": [1]}, opset=13),
]

_LAYOUT = [
    Case("Flatten", [X(2, 3, 4)], {"axis": 2}),
    Case("Reshape", [X(2, 3, 4), I(4, -1)]),
    Case("Reshape", [X(2, 3, 4), I(0, 12)], opset=5, name="opset5"),
    Case("Transpose", [X(2, 3, 4)], {"perm": [1, 2, 0]}),
    Case("Transpose", [X(2, 3, 4)], name="default-perm"),
    Case("Squeeze", [X(2, 1, 4)], {"axes": [1]}, opset=11, name="attr"),
    Case("Squeeze", [X(2, 1, 4), I(1)], opset=13),
    Case("Unsqueeze", [X(2, 4)], {"axes": [0, 3]}, opset=11, name="attr"),
    Case("Unsqueeze", [X(2, 4), I(-1)], opset=13),
    Case("Concat", [X(2, 3), W(2, 2), X(2, 1)], {"axis": 1}),
    Case("Split", [X(2, 6)], {"axis": 1}, opset=11, outputs=3, name="equal"),
    Case("Split", [X(2, 6), I(1, 5)], {"axis": 1}, opset=13, outputs=2),
    Case("Split", [X(4, 3)], {"split": [3, 1]}, opset=11, outputs=2, name="attr"),
    Case("Slice", [X(5, 6), I(1, -1), I(4, 100), I(0, 1), I(2, -2)], opset=13),
    Case("Slice", [X(5, 6), I(-1), I(-100), I(0), I(-2)], opset=13, name="negative-step"),
    Case("Slice", [X(5, 6), I(1), I(3)], opset=13, name="default-axes"),
    Case("Slice", [X(5, 6)], {"starts": [1, 0], "ends": [3, 4], "axes": [0, 1]}, opset=9, name="attrs"),
    Case("Gather", [X(5, 3), I(0, 2, 2, -1)], {"axis": 0}),
    Case("Gather", [X(2, 5, 3), ("i", np.array([[1, 0], [4, 4]], dtype=np.int64))], {"axis": 1}, name="2d-indices"),
    Case("Pad", [X(2, 3, 4), I(0, 1, 2, 0, 0, 1)], {"mode": "constant"}, opset=13),
    Case("Pad", [X(2, 3, 4), I(0, -1, 2, 0, 1, -1)], {"mode": "constant"}, opset=13, name="negative"),
    Case("Pad", [X(2, 3, 4), I(0, 2, 1, 0, 1, 3)], {"mode": "reflect"}, opset=13, name="reflect"),
    Case("Pad", [X(2, 3, 4), I(0, 2, 1, 0, 1, 3)], {"mode": "edge"}, opset=13, name="edge"),
    Case("Pad", [X(2, 3, 4), I(1, 2, 1, 3), NONE, I(1, 2)], {"mode": "constant"}, opset=18, name="axes"),
    Case("Pad", [X(2, 3, 4)], {"pads": [0, 1, 1, 0, 2, 0], "mode": "edge"}, opset=2, name="attrs"),
    Case("Expand", [X(3, 1), I(2, 3, 4)], opset=13),
    Case("Tile", [X(2, 3), I(2, 3)], opset=13),
]

CASES: list[Case] = _UNARY + _BINARY + _WEIGHTED + _NORM_POOL + _REDUCE + _LAYOUT

from _vjp_cases_extra import extra_cases  # noqa: E402  (cases of the rules in the new rule files)

CASES += extra_cases()
