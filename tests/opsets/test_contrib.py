"""``contributions`` rules against a naive per-neuron reference written straight from ALGORITHMS.md 1.

Every case is a one-node model. The reference enumerates the node's edges (output neuron, input neuron,
weight) with Python loops, applies theta by sorting each neuron's terms, and accumulates
``sign(CONTRIB_n * dy_n * w_i * dx_i)``; the vectorised rule must give the same integer tables. Routing
ops are checked against numpy moving the CONTRIB back by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from onnx import helper

from onnxslice.errors import UnsupportedOpError
from onnxslice.model import load
from onnxslice.profile import Profile
from onnxslice.record import Recorder
from onnxslice.slicing import BackwardOptions, backward, deltas
from onnxslice.testing import make_model

THETA = 0.3
Edges = list[tuple[int, int, float, int]]  # (out flat, in flat, weight, weight flat index or -1)


@dataclass
class Case:
    name: str
    node: Any
    x_shape: tuple[int, ...]
    y_shape: tuple[int, ...]
    inits: dict[str, np.ndarray] = field(default_factory=dict)
    edges: Callable[[np.ndarray, np.ndarray], Edges] | None = None  # (x one sample, y one sample) -> edges
    theta: bool = True
    weight: str | None = None
    route: Callable[[np.ndarray], np.ndarray] | None = None  # out CONTRIB (batched) -> in CONTRIB


RNG = np.random.default_rng(42)


def _w(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def _conv_edges(w: np.ndarray, strides=(1, 1), pads=(0, 0), dil=(1, 1), group=1):
    def edges(x: np.ndarray, y: np.ndarray) -> Edges:
        _cin, h, wd = x.shape
        co, cig, kh, kw = w.shape
        _, oh, ow = y.shape
        out: Edges = []
        for c in range(co):
            g = c // (co // group)
            for i in range(oh):
                for j in range(ow):
                    o = (c * oh + i) * ow + j
                    for ci in range(cig):
                        for a in range(kh):
                            for b in range(kw):
                                ih, iw = i * strides[0] - pads[0] + a * dil[0], j * strides[1] - pads[1] + b * dil[1]
                                if 0 <= ih < h and 0 <= iw < wd:
                                    cin_i = g * cig + ci
                                    widx = ((c * cig + ci) * kh + a) * kw + b
                                    out.append((o, (cin_i * h + ih) * wd + iw, float(w.flat[widx]), widx))
        return out

    return edges


def _dense_edges(w_kn: np.ndarray, w_index: Callable[[int, int], int]):
    def edges(x: np.ndarray, y: np.ndarray) -> Edges:
        k, n = w_kn.shape
        rows = x.reshape(-1, k).shape[0]
        return [
            (r * n + j, r * k + i, float(w_kn[i, j]), w_index(i, j))
            for r in range(rows)
            for j in range(n)
            for i in range(k)
        ]

    return edges


def _pool_edges(kernel, strides, is_max: bool, pads=(0, 0)):
    def edges(x: np.ndarray, y: np.ndarray) -> Edges:
        c, h, wd = x.shape
        _, oh, ow = y.shape
        out: Edges = []
        for ch in range(c):
            for i in range(oh):
                for j in range(ow):
                    o = (ch * oh + i) * ow + j
                    taken = False  # max pooling credits the first input holding the maximum (row-major)
                    for a in range(kernel[0]):
                        for b in range(kernel[1]):
                            ih, iw = i * strides[0] - pads[0] + a, j * strides[1] - pads[1] + b
                            if not (0 <= ih < h and 0 <= iw < wd) or (is_max and taken):
                                continue
                            if not is_max or x[ch, ih, iw] == y[ch, i, j]:
                                taken = True
                                out.append((o, (ch * h + ih) * wd + iw, 1.0, -1))
        return out

    return edges


def _diag_edges(weight: Callable[[np.ndarray], np.ndarray]):
    def edges(x: np.ndarray, y: np.ndarray) -> Edges:
        g = np.broadcast_to(weight(x), x.shape).ravel()
        return [(i, i, float(g[i]), -1) for i in range(x.size) if g[i] != 0]

    return edges


def _gap_edges(x: np.ndarray, y: np.ndarray) -> Edges:
    c = x.shape[0]
    per = x[0].size
    return [(ch, ch * per + k, 1.0, -1) for ch in range(c) for k in range(per)]


_W_CONV = _w(4, 3, 3, 3)
_W_DW = _w(3, 1, 3, 3)
_W_GRP = _w(4, 2, 2, 2)
_W_GEMM = _w(5, 6)  # (N, K) for transB=1
_W_MM = _w(6, 5)
_BN = (np.abs(_w(3)) + 0.5, _w(3), _w(3), np.abs(_w(3)) + 0.5)
_BN_G = _BN[0] / np.sqrt(_BN[3] + 1e-5)

CASES = [
    Case(
        "Conv",
        helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]),
        (3, 5, 5),
        (4, 5, 5),
        {"w": _W_CONV},
        _conv_edges(_W_CONV, pads=(1, 1)),
        weight="w",
    ),
    Case(
        "Conv_stride_dilation",
        helper.make_node("Conv", ["x", "w"], ["y"], strides=[2, 2], dilations=[2, 1]),
        (3, 7, 6),
        (4, 2, 2),
        {"w": _W_CONV},
        _conv_edges(_W_CONV, strides=(2, 2), dil=(2, 1)),
        weight="w",
    ),
    # 6x6 input, kernel 3, stride 2 -> 3x3 output and one padding cell per axis: SAME_UPPER puts it at
    # the end (begin 0), SAME_LOWER at the beginning (begin 1), so the two windows differ.
    Case(
        "Conv_auto_pad_same_upper",
        helper.make_node("Conv", ["x", "w"], ["y"], strides=[2, 2], auto_pad="SAME_UPPER"),
        (3, 6, 6),
        (4, 3, 3),
        {"w": _W_CONV},
        _conv_edges(_W_CONV, strides=(2, 2), pads=(0, 0)),
        weight="w",
    ),
    Case(
        "Conv_auto_pad_same_lower",
        helper.make_node("Conv", ["x", "w"], ["y"], strides=[2, 2], auto_pad="SAME_LOWER"),
        (3, 6, 6),
        (4, 3, 3),
        {"w": _W_CONV},
        _conv_edges(_W_CONV, strides=(2, 2), pads=(1, 1)),
        weight="w",
    ),
    Case(
        "Conv_depthwise",
        helper.make_node("Conv", ["x", "w"], ["y"], group=3, pads=[1, 1, 1, 1]),
        (3, 4, 4),
        (3, 4, 4),
        {"w": _W_DW},
        _conv_edges(_W_DW, pads=(1, 1), group=3),
        weight="w",
    ),
    Case(
        "Conv_grouped",
        helper.make_node("Conv", ["x", "w"], ["y"], group=2),
        (4, 4, 4),
        (4, 3, 3),
        {"w": _W_GRP},
        _conv_edges(_W_GRP, group=2),
        weight="w",
    ),
    Case(
        "Gemm_transB",
        helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1),
        (6,),
        (5,),
        {"w": _W_GEMM, "b": _w(5)},
        _dense_edges(_W_GEMM.T, lambda i, j: j * 6 + i),
        weight="w",
    ),
    Case(
        "MatMul",
        helper.make_node("MatMul", ["x", "w"], ["y"]),
        (2, 6),
        (2, 5),
        {"w": _W_MM},
        _dense_edges(_W_MM, lambda i, j: i * 5 + j),
        weight="w",
    ),
    Case(
        "Add_broadcast",
        helper.make_node("Add", ["x", "c"], ["y"]),
        (3, 4),
        (3, 4),
        {"c": _w(4)},
        _diag_edges(lambda x: np.ones_like(x)),
    ),
    Case("Mul_const", helper.make_node("Mul", ["x", "c"], ["y"]), (3, 4), (3, 4), {"c": _w(3, 1)}, None, weight="c"),
    Case(
        "AveragePool",
        helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2]),
        (2, 4, 4),
        (2, 2, 2),
        edges=_pool_edges((2, 2), (2, 2), False),
        theta=False,
    ),
    Case(
        "MaxPool_pad",
        helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        (2, 5, 5),
        (2, 3, 3),
        edges=_pool_edges((3, 3), (2, 2), True, pads=(1, 1)),
        theta=False,
    ),
    Case(
        "GlobalAveragePool",
        helper.make_node("GlobalAveragePool", ["x"], ["y"]),
        (3, 2, 2),
        (3, 1, 1),
        edges=_gap_edges,
        theta=False,
    ),
    Case(
        "Relu",
        helper.make_node("Relu", ["x"], ["y"]),
        (3, 4),
        (3, 4),
        edges=_diag_edges(lambda x: (x > 0) * 1.0),
        theta=False,
    ),
    Case(
        "LeakyRelu",
        helper.make_node("LeakyRelu", ["x"], ["y"], alpha=0.1),
        (3, 4),
        (3, 4),
        edges=_diag_edges(lambda x: (x > 0) * 1.0),
        theta=False,
    ),
    Case(
        "Clip_relu6",
        helper.make_node("Clip", ["x", "lo", "hi"], ["y"]),
        (3, 4),
        (3, 4),
        {"lo": np.array(0, np.float32), "hi": np.array(0.5, np.float32)},
        _diag_edges(lambda x: ((x > 0) & (x < 0.5)) * 1.0),
        theta=False,
    ),
    Case(
        "HardSwish",
        helper.make_node("HardSwish", ["x"], ["y"]),
        (3, 4),
        (3, 4),
        edges=_diag_edges(lambda x: (x > -3) * 1.0),
        theta=False,
    ),
    Case(
        "HardSigmoid",
        helper.make_node("HardSigmoid", ["x"], ["y"], alpha=0.5),
        (3, 4),
        (3, 4),
        edges=_diag_edges(lambda x: ((0.5 * x + 0.5 > 0) & (0.5 * x + 0.5 < 1)) * 0.5),
        theta=False,
    ),
    Case(
        "Sigmoid",
        helper.make_node("Sigmoid", ["x"], ["y"]),
        (3, 4),
        (3, 4),
        edges=_diag_edges(lambda x: np.ones_like(x)),
        theta=False,
    ),
    Case(
        "Neg",
        helper.make_node("Neg", ["x"], ["y"]),
        (3, 4),
        (3, 4),
        edges=_diag_edges(lambda x: -np.ones_like(x)),
        theta=False,
    ),
    Case(
        "Softmax",
        helper.make_node("Softmax", ["x"], ["y"], axis=-1),
        (5,),
        (5,),
        edges=_diag_edges(lambda x: np.ones_like(x)),
        theta=False,
    ),
    Case(
        "BatchNormalization",
        helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"]),
        (3, 2, 2),
        (3, 2, 2),
        {"s": _BN[0], "b": _BN[1], "m": _BN[2], "v": _BN[3]},
        _diag_edges(lambda x: _BN_G.reshape(3, 1, 1)),
        theta=False,
    ),
    Case(
        "Transpose",
        helper.make_node("Transpose", ["x"], ["y"], perm=[0, 2, 3, 1]),
        (2, 3, 4),
        (3, 4, 2),
        route=lambda c: c.transpose(0, 3, 1, 2),
    ),
    Case(
        "Flatten",
        helper.make_node("Flatten", ["x"], ["y"], axis=1),
        (2, 3, 4),
        (24,),
        route=lambda c: c.reshape(c.shape[0], 2, 3, 4),
    ),
    Case(
        "Reshape",
        helper.make_node("Reshape", ["x", "shape"], ["y"]),
        (2, 6),
        (3, 4),
        {"shape": np.array([-1, 3, 4], np.int64)},
        route=lambda c: c.reshape(c.shape[0], 2, 6),
    ),
    Case(
        "Slice",
        helper.make_node("Slice", ["x", "st", "en", "ax"], ["y"]),
        (4, 5),
        (2, 5),
        {"st": np.array([1], np.int64), "en": np.array([3], np.int64), "ax": np.array([1], np.int64)},
        route=lambda c: np.concatenate(
            [np.zeros((c.shape[0], 1, 5), c.dtype), c, np.zeros((c.shape[0], 1, 5), c.dtype)], 1
        ),
    ),
    Case(
        "Pad",
        helper.make_node("Pad", ["x", "pads"], ["y"]),
        (2, 3),
        (2, 5),
        {"pads": np.array([0, 0, 1, 0, 0, 1], np.int64)},
        route=lambda c: c[:, :, 1:4],
    ),
    Case("Identity", helper.make_node("Identity", ["x"], ["y"]), (2, 3), (2, 3), route=lambda c: c),
    Case(
        "Squeeze",
        helper.make_node("Squeeze", ["x", "ax"], ["y"]),
        (1, 3),
        (3,),
        {"ax": np.array([1], np.int64)},
        route=lambda c: c[:, None, :],
    ),
    Case(
        "Expand",
        helper.make_node("Expand", ["x", "shape"], ["y"]),
        (1, 3),
        (4, 3),
        {"shape": np.array([1, 4, 3], np.int64)},
        route=lambda c: c.sum(axis=1, keepdims=True),
    ),
]


def _run(case: Case, batch: int = 2, theta: float = THETA):
    inits = dict(case.inits)
    proto = make_model(
        [case.node],
        {"x": (np.float32, ["N", *case.x_shape])},
        {"y": (np.float32, ["N", *case.y_shape])},
        inits,
    )
    model = load(proto)
    x = RNG.standard_normal((batch, *case.x_shape)).astype(np.float32)
    values = Recorder(model, "all", "cpu").run({"x": x})
    values["x"] = x
    prof = Profile(
        {
            "x": RNG.standard_normal(case.x_shape).astype(np.float32) * 0.5,
            "y": RNG.standard_normal(case.y_shape).astype(np.float32) * 0.5,
        },
        1,
        model.fingerprint,
    )
    d = deltas(prof, values)
    seeds = {"y": RNG.integers(-2, 3, size=(batch, *case.y_shape)).astype(np.int32)}
    neurons, synapses = backward(model, values, d, seeds, BackwardOptions(theta=theta))
    return model, x, values, d, seeds, neurons, synapses


def _naive(case: Case, x, values, d, seeds, theta: float = THETA, accumulate: str = "signed"):
    w_size = case.inits[case.weight].size if case.weight else 0
    in_tab = np.zeros(x.shape[1:], np.int64).ravel()
    syn = np.zeros(w_size, np.int64)
    assert case.edges is not None
    for b in range(x.shape[0]):
        edges = case.edges(x[b], values["y"][b])
        dx, y, dy, c = d["x"][b].ravel(), values["y"][b].ravel(), d["y"][b].ravel(), seeds["y"][b].ravel()
        by_out: dict[int, list[tuple[int, float, int]]] = {}
        for o, i, w, wi in edges:
            by_out.setdefault(o, []).append((i, w, wi))
        for o, ins in by_out.items():
            if c[o] == 0:
                continue
            terms = [w * float(dx[i]) for i, w, _ in ins]
            keep = [True] * len(ins)
            if case.theta and abs(float(y[o])) >= 1e-12:
                s = 0.0
                for j in sorted(range(len(ins)), key=lambda j: abs(terms[j])):
                    s += terms[j]
                    if abs(s) < theta * abs(float(y[o])):
                        keep[j] = False
                    else:
                        break
            for (i, _, wi), t, k in zip(ins, terms, keep, strict=True):
                if k:
                    sgn = int(np.sign(c[o]) * np.sign(dy[o]) * np.sign(t))
                    in_tab[i] += sgn
                    if wi >= 0:
                        syn[wi] += abs(sgn) if accumulate == "abs" else sgn
    return in_tab.reshape(x.shape[1:]), syn


@pytest.mark.parametrize("case", [c for c in CASES if c.edges is not None], ids=lambda c: c.name)
def test_contrib_matches_naive_reference(case: Case):
    _, x, values, d, seeds, neurons, synapses = _run(case)
    ref_in, ref_syn = _naive(case, x, values, d, seeds)
    assert np.abs(ref_in).sum() > 0, "degenerate case: nothing reached the input"
    np.testing.assert_array_equal(neurons["x"], ref_in)
    if case.weight:
        np.testing.assert_array_equal(synapses[case.weight].ravel(), ref_syn)


@pytest.mark.parametrize("case", [c for c in CASES if c.edges is not None and c.weight], ids=lambda c: c.name)
def test_contrib_abs_accumulation_counts_every_significant_use(case: Case):
    model, x, values, d, seeds, signed_n, signed_s = _run(case, batch=3)
    neurons, synapses = backward(model, values, d, seeds, BackwardOptions(theta=THETA, accumulate="abs"))
    ref_in, ref_syn = _naive(case, x, values, d, seeds, accumulate="abs")
    np.testing.assert_array_equal(synapses[case.weight].ravel(), ref_syn)
    np.testing.assert_array_equal(neurons["x"], ref_in)  # neuron CONTRIB stays signed
    np.testing.assert_array_equal(neurons["x"], signed_n["x"])
    assert (synapses[case.weight] >= np.abs(signed_s[case.weight])).all()


@pytest.mark.parametrize("case", [c for c in CASES if c.route is not None], ids=lambda c: c.name)
def test_contrib_routing_moves_contrib(case: Case):
    _, _, _, _, seeds, neurons, _ = _run(case, batch=3)
    expected = case.route(seeds["y"]).sum(axis=0)  # type: ignore[misc]
    np.testing.assert_array_equal(neurons["x"], expected)


def test_contrib_mul_const_synapse_is_unbroadcast_input_table():
    case = next(c for c in CASES if c.name == "Mul_const")
    _, _x, values, d, seeds, neurons, synapses = _run(case)
    cst = case.inits["c"]
    terms = cst * d["x"]
    sgn = np.sign(seeds["y"]) * np.sign(d["y"]) * np.sign(terms)
    keep = np.abs(terms) >= THETA * np.abs(values["y"])  # one term per neuron: kept iff it alone reaches theta
    expected = (sgn * keep).astype(np.int64)
    np.testing.assert_array_equal(neurons["x"], expected.sum(0))
    np.testing.assert_array_equal(synapses["c"], expected.sum(axis=(0, 2)).reshape(3, 1))


def test_contrib_theta_abs_and_delta_options_change_selection():
    case = CASES[0]
    model, _x, values, d, seeds, n_raw, _ = _run(case)
    n_abs, _ = backward(model, values, d, seeds, BackwardOptions(theta=THETA, theta_sum="abs"))
    n_delta, _ = backward(model, values, d, seeds, BackwardOptions(theta=THETA, theta_denominator="delta"))
    assert not np.array_equal(n_raw["x"], n_abs["x"]) or not np.array_equal(n_raw["x"], n_delta["x"])


def test_contrib_conv_chunking_does_not_change_tables():
    case = CASES[0]
    model, _x, values, d, seeds, neurons, synapses = _run(case)
    n2, s2 = backward(model, values, d, seeds, BackwardOptions(theta=THETA, chunk=7))
    np.testing.assert_array_equal(n2["x"], neurons["x"])
    np.testing.assert_array_equal(s2["w"], synapses["w"])


def test_contrib_conv_channel_level_matches_reference():
    case = CASES[0]
    model, _x, values, d, seeds, _, _ = _run(case)
    ch_seeds = {"y": seeds["y"].reshape(2, 4, -1).sum(axis=2)}
    neurons, synapses = backward(model, values, d, ch_seeds, BackwardOptions(theta=THETA, granularity="channel"))
    # reference: terms t[c, cin] = sum_k W[c, cin, k] * mean over positions of the padded input window
    w = case.inits["w"]
    xp = np.pad(d["x"], ((0, 0), (0, 0), (1, 1), (1, 1)))
    ref_in = np.zeros(3, np.int64)
    ref_syn = np.zeros((4, 3), np.int64)
    for b in range(2):
        mean_win = np.array(
            [[[xp[b, ci, a : a + 5, k : k + 5].mean() for k in range(3)] for a in range(3)] for ci in range(3)]
        )
        y_c, dy_c = values["y"][b].mean(axis=(1, 2)), d["y"][b].mean(axis=(1, 2))
        for c in range(4):
            if ch_seeds["y"][b, c] == 0:
                continue
            t = (w[c] * mean_win).sum(axis=(1, 2))
            keep = np.ones(3, bool)
            s = 0.0
            for j in np.argsort(np.abs(t), kind="stable"):
                s += t[j]
                if abs(s) < THETA * abs(y_c[c]):
                    keep[j] = False
                else:
                    break
            sg = (np.sign(ch_seeds["y"][b, c]) * np.sign(dy_c[c]) * np.sign(t) * keep).astype(np.int64)
            ref_in += sg
            ref_syn[c] += sg
    np.testing.assert_array_equal(neurons["x"], ref_in)
    np.testing.assert_array_equal(synapses["w"], np.broadcast_to(ref_syn[:, :, None, None], w.shape))


def test_contrib_missing_rule_names_op():
    proto = make_model(
        [helper.make_node("Relu", ["x"], ["h"]), helper.make_node("MeanVarianceNormalization", ["h"], ["y"], axes=[1])],
        {"x": (np.float32, ["N", 4])},
        {"y": (np.float32, ["N", 4])},
    )
    model = load(proto)
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    values = Recorder(model, "all", "cpu").run({"x": x})
    values["x"] = x
    prof = Profile({k: np.zeros(v.shape[1:], np.float32) for k, v in values.items()}, 1, model.fingerprint)
    with pytest.raises(UnsupportedOpError, match="MeanVarianceNormalization") as e:
        backward(model, values, deltas(prof, values), {"y": np.ones((2, 4), np.int32)}, BackwardOptions())
    assert e.value.capability == "contributions"


ISSUE_OPS = [
    "Conv",
    "Gemm",
    "MatMul",
    "AveragePool",
    "MaxPool",
    "GlobalAveragePool",
    "ReduceMean",
    "Relu",
    "Clip",
    "LeakyRelu",
    "HardSwish",
    "HardSigmoid",
    "BatchNormalization",
    "Add",
    "Sub",
    "Mul",
    "Concat",
    "Split",
    "Slice",
    "Flatten",
    "Reshape",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Identity",
    "Pad",
    "Softmax",
    "Sigmoid",
    "Tanh",
    "Shape",
    "Gather",
    "Dropout",
    "Cast",
]


@pytest.mark.parametrize("op", ISSUE_OPS)
def test_contrib_rule_registered_for_issue_ops(op: str):
    from onnxslice.opsets import REGISTRY

    assert REGISTRY.has("contributions", op, "", 17)


def test_contrib_split_concat_route_through_both_branches():
    proto = make_model(
        [
            helper.make_node("Split", ["x", "sizes"], ["a", "b"], axis=1),
            helper.make_node("Concat", ["b", "a"], ["y"], axis=1),
        ],
        {"x": (np.float32, ["N", 5])},
        {"y": (np.float32, ["N", 5])},
        {"sizes": np.array([2, 3], np.int64)},
    )
    model = load(proto)
    x = RNG.standard_normal((3, 5)).astype(np.float32)
    values = Recorder(model, "all", "cpu").run({"x": x})
    values["x"] = x
    prof = Profile({k: np.zeros(v.shape[1:], np.float32) for k, v in values.items()}, 1, model.fingerprint)
    seeds = {"y": RNG.integers(-3, 4, size=(3, 5)).astype(np.int32)}
    neurons, _ = backward(model, values, deltas(prof, values), seeds, BackwardOptions())
    expected = np.concatenate([seeds["y"][:, 3:], seeds["y"][:, :3]], axis=1).sum(0)
    np.testing.assert_array_equal(neurons["x"], expected)
