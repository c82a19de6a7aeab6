"""``contributions`` rules added for "any model a user brings", against naive per-neuron references.

Each case is a one-node model. The reference enumerates every (output neuron, input neuron) edge with its
weight, obtained independently of the rule (by running the op in onnxruntime on one-hot inputs, which
gives the columns of its linear map), and accumulates ``sign(CONTRIB_n * dy_n * w_ni * dx_i)`` with Python
loops, with theta where the rule is a weighted sum.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from onnx import helper

from onnxslice.model import load
from onnxslice.profile import Profile
from onnxslice.record import Recorder
from onnxslice.slicing import BackwardOptions, backward, deltas
from onnxslice.testing import make_model, run_ort

THETA = 0.3
RNG = np.random.default_rng(11)


def _run(
    node: Any,
    x_shape: tuple[int, ...],
    y_shape: tuple[int, ...],
    inits: dict[str, np.ndarray],
    batch: int = 2,
    granularity: str = "element",
):
    model = load(make_model([node], {"x": (np.float32, ["N", *x_shape])}, {"y": (np.float32, ["N", *y_shape])}, inits))
    x = RNG.standard_normal((batch, *x_shape)).astype(np.float32)
    values = Recorder(model, "all", "cpu").run({"x": x})
    values["x"] = x
    prof = Profile(
        {
            "x": (0.5 * RNG.standard_normal(x_shape)).astype(np.float32),
            "y": (0.5 * RNG.standard_normal(y_shape)).astype(np.float32),
        },
        1,
        model.fingerprint,
    )
    d = deltas(prof, values)
    seeds = {"y": RNG.integers(-2, 3, size=(batch, *y_shape)).astype(np.int32)}
    neurons, synapses = backward(model, values, d, seeds, BackwardOptions(theta=THETA, granularity=granularity))
    return model, x, values, d, seeds, neurons, synapses


def _linear_map(model, x_shape: tuple[int, ...]) -> np.ndarray:
    """``M [out, in]`` of a model linear in x (no bias), from onnxruntime on one-hot inputs."""
    n_in = int(np.prod(x_shape))
    basis = np.eye(n_in, dtype=np.float32).reshape(n_in, *x_shape)
    (y,) = run_ort(model, {"x": basis})
    return y.reshape(n_in, -1).T.astype(np.float64)


def _naive(m: np.ndarray, d, seeds, values, theta: bool) -> np.ndarray:
    bsz = d["x"].shape[0]
    tab = np.zeros(d["x"][0].size, np.int64)
    for b in range(bsz):
        dx, dy, c, y = d["x"][b].ravel(), d["y"][b].ravel(), seeds["y"][b].ravel(), values["y"][b].ravel()
        for n in range(m.shape[0]):
            if c[n] == 0:
                continue
            ins = [i for i in range(m.shape[1]) if m[n, i] != 0]
            terms = [m[n, i] * float(dx[i]) for i in ins]
            keep = [True] * len(ins)
            if theta and abs(float(y[n])) >= 1e-12:
                acc = 0.0
                for q in sorted(range(len(ins)), key=lambda q: abs(terms[q])):
                    acc += terms[q]
                    if abs(acc) < THETA * abs(float(y[n])):
                        keep[q] = False
                    else:
                        break
            for i, t, k in zip(ins, terms, keep, strict=True):
                if k:
                    tab[i] += int(np.sign(c[n]) * np.sign(dy[n]) * np.sign(np.float32(t)))
    return tab.reshape(d["x"].shape[1:])


RESIZE = [
    ({"mode": "linear"}, (1, 1, 1.5, 2.0)),
    ({"mode": "linear", "coordinate_transformation_mode": "align_corners"}, (1, 1, 2.0, 0.6)),
    ({"mode": "cubic"}, (1, 1, 2.0, 1.5)),
    ({"mode": "cubic", "exclude_outside": 1, "cubic_coeff_a": -0.5}, (1, 1, 0.6, 1.5)),
]


@pytest.mark.parametrize(("attrs", "scales"), RESIZE, ids=lambda v: str(v))
def test_contrib_resize_weighted_average_matches_naive(attrs: dict[str, Any], scales: tuple[float, ...]) -> None:
    x_shape = (2, 4, 5)
    y_shape = (2, *(int(np.floor(n * s)) for n, s in zip(x_shape[1:], scales[2:], strict=True)))
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], **attrs)
    model, _, values, d, seeds, neurons, _ = _run(node, x_shape, y_shape, {"scales": np.array(scales, np.float32)})
    ref = _naive(_linear_map(model, x_shape), d, seeds, values, theta=False)
    assert np.abs(ref).sum() > 0
    np.testing.assert_array_equal(neurons["x"], ref)


def test_contrib_resize_nearest_routes_contrib() -> None:
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest")
    _, _, _, _, seeds, neurons, _ = _run(node, (2, 3, 3), (2, 6, 6), {"scales": np.array([1, 1, 2, 2], np.float32)})
    expected = seeds["y"].reshape(2, 2, 3, 2, 3, 2).sum(axis=(5, 3)).sum(axis=0)
    np.testing.assert_array_equal(neurons["x"], expected)


def _convt_edges(w: np.ndarray, x_sp, y_sp, strides, begin, dil, group):
    """(out flat, in flat, weight, weight flat index) of ConvTranspose, straight from its definition."""
    cin, cout_g, kh, kw = w.shape
    cin_g = cin // group
    edges = []
    for c in range(cin):
        g = c // cin_g
        for o in range(cout_g):
            for i in range(x_sp[0]):
                for j in range(x_sp[1]):
                    for a in range(kh):
                        for b in range(kw):
                            qi = i * strides[0] + a * dil[0] - begin[0]
                            qj = j * strides[1] + b * dil[1] - begin[1]
                            if 0 <= qi < y_sp[0] and 0 <= qj < y_sp[1]:
                                co = g * cout_g + o
                                widx = ((c * cout_g + o) * kh + a) * kw + b
                                edges.append(
                                    (
                                        ((co * y_sp[0]) + qi) * y_sp[1] + qj,
                                        (c * x_sp[0] + i) * x_sp[1] + j,
                                        float(w.flat[widx]),
                                        widx,
                                    )
                                )
    return edges


def _naive_edges(edges, d, seeds, values, w_size: int):
    bsz = d["x"].shape[0]
    tab = np.zeros(d["x"][0].size, np.int64)
    syn = np.zeros(w_size, np.int64)
    by_out: dict[int, list] = {}
    for o, i, wt, wi in edges:
        by_out.setdefault(o, []).append((i, wt, wi))
    for b in range(bsz):
        dx, dy, c, y = d["x"][b].ravel(), d["y"][b].ravel(), seeds["y"][b].ravel(), values["y"][b].ravel()
        for o, ins in by_out.items():
            if c[o] == 0:
                continue
            terms = [wt * float(dx[i]) for i, wt, _ in ins]
            keep = [True] * len(ins)
            if abs(float(y[o])) >= 1e-12:
                acc = 0.0
                for q in sorted(range(len(ins)), key=lambda q: abs(terms[q])):
                    acc += terms[q]
                    if abs(acc) < THETA * abs(float(y[o])):
                        keep[q] = False
                    else:
                        break
            for (i, _, wi), t, k in zip(ins, terms, keep, strict=True):
                if k:
                    sg = int(np.sign(c[o]) * np.sign(dy[o]) * np.sign(np.float32(t)))
                    tab[i] += sg
                    syn[wi] += sg
    return tab.reshape(d["x"].shape[1:]), syn


CONVT = [
    ({}, (3, 4, 3, 3), (3, 4, 4), 1, (0, 0)),
    ({"strides": [2, 2], "pads": [1, 0, 0, 1]}, (4, 3, 3, 3), (4, 3, 4), 1, (1, 0)),
    ({"strides": [2, 2], "dilations": [2, 1], "group": 2}, (4, 2, 3, 2), (4, 3, 3), 2, (0, 0)),
    ({"strides": [2, 2], "output_padding": [1, 1], "pads": [1, 1, 1, 1]}, (2, 3, 3, 3), (2, 3, 3), 1, (1, 1)),
    ({"strides": [2, 2], "auto_pad": "SAME_UPPER"}, (2, 3, 3, 3), (2, 3, 3), 1, None),
]


@pytest.mark.parametrize(("attrs", "w_shape", "x_shape", "group", "begin"), CONVT, ids=lambda v: str(v))
def test_contrib_conv_transpose_matches_naive(attrs, w_shape, x_shape, group, begin) -> None:
    w = RNG.standard_normal(w_shape).astype(np.float32)
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], **attrs)
    probe = load(
        make_model([node], {"x": (np.float32, ["N", *x_shape])}, {"y": (np.float32, ["N", None, None, None])}, {"w": w})
    )
    (y0,) = run_ort(probe, {"x": np.zeros((1, *x_shape), np.float32)})
    y_shape = y0.shape[1:]
    _, _, values, d, seeds, neurons, synapses = _run(node, x_shape, y_shape, {"w": w})
    if begin is None:  # SAME_UPPER: total padding split with the extra cell at the end
        full = [(i - 1) * s + k for i, s, k in zip(x_shape[1:], attrs["strides"], w_shape[2:], strict=True)]
        begin = tuple((f - o) // 2 for f, o in zip(full, y_shape[1:], strict=True))
    edges = _convt_edges(
        w, x_shape[1:], y_shape[1:], attrs.get("strides", [1, 1]), begin, attrs.get("dilations", [1, 1]), group
    )
    ref_in, ref_syn = _naive_edges(edges, d, seeds, values, w.size)
    assert np.abs(ref_in).sum() > 0
    np.testing.assert_array_equal(neurons["x"], ref_in)
    np.testing.assert_array_equal(synapses["w"].ravel(), ref_syn)
    # the edges reproduce the op: sum of weight * x over each output's edges is the recorded output
    y = np.zeros(int(np.prod(y_shape)))
    for o, i, wt, _ in edges:
        y[o] += wt * float(values["x"][0].ravel()[i])
    np.testing.assert_allclose(y, values["y"][0].ravel(), rtol=1e-4, atol=1e-4)


def test_contrib_conv_transpose_chunking_and_channel_level() -> None:
    attrs, w_shape, x_shape, group, begin = CONVT[1]
    w = RNG.standard_normal(w_shape).astype(np.float32)
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], **attrs)
    y_shape = (3, 6, 8)
    model, _, values, d, seeds, neurons, synapses = _run(node, x_shape, y_shape, {"w": w})
    n2, s2 = backward(model, values, d, seeds, BackwardOptions(theta=THETA, chunk=5))
    np.testing.assert_array_equal(n2["x"], neurons["x"])
    np.testing.assert_array_equal(s2["w"], synapses["w"])
    # channel level: t[o, c] = mean over output positions of the (o, c) terms
    ch_seeds = {"y": seeds["y"].reshape(2, 3, -1).sum(axis=2)}
    nc, sc = backward(model, values, d, ch_seeds, BackwardOptions(theta=THETA, granularity="channel"))
    edges = _convt_edges(w, x_shape[1:], y_shape[1:], attrs["strides"], begin, [1, 1], group)
    npos, nin = int(np.prod(y_shape[1:])), int(np.prod(x_shape[1:]))
    ref_in, ref_pair = np.zeros(4, np.int64), np.zeros((4, 3), np.int64)
    for b in range(2):
        t = np.zeros((3, 4))
        for o, i, wt, _ in edges:
            t[o // npos, i // nin] += wt * float(d["x"][b].ravel()[i]) / npos
        y_c, dy_c = values["y"][b].reshape(3, -1).mean(1), d["y"][b].reshape(3, -1).mean(1)
        for co in range(3):
            if ch_seeds["y"][b, co] == 0:
                continue
            keep, acc = np.ones(4, bool), 0.0
            for j in np.argsort(np.abs(t[co]), kind="stable"):
                acc += t[co, j]
                if abs(acc) < THETA * abs(y_c[co]):
                    keep[j] = False
                else:
                    break
            sg = (np.sign(ch_seeds["y"][b, co]) * np.sign(dy_c[co]) * np.sign(t[co]) * keep).astype(np.int64)
            ref_in += sg
            ref_pair[:, co] += sg
    np.testing.assert_array_equal(nc["x"], ref_in)
    np.testing.assert_array_equal(sc["w"], np.broadcast_to(ref_pair[:, :, None, None], w.shape))


def _run_two(
    node: Any,
    shapes: dict[str, tuple[int, ...]],
    y_shape: tuple[int, ...],
    inits: dict[str, np.ndarray],
    batch: int = 2,
):
    """Like :func:`_run` for a node whose data inputs are the graph inputs in ``shapes`` (sample axis first)."""
    model = load(
        make_model(
            [node], {k: (np.float32, ["N", *s]) for k, s in shapes.items()}, {"y": (np.float32, ["N", *y_shape])}, inits
        )
    )
    feed = {k: RNG.standard_normal((batch, *s)).astype(np.float32) for k, s in shapes.items()}
    values = Recorder(model, "all", "cpu").run(feed)
    values.update(feed)
    means = {k: (0.5 * RNG.standard_normal(s)).astype(np.float32) for k, s in shapes.items()}
    means["y"] = (0.5 * RNG.standard_normal(y_shape)).astype(np.float32)
    d = deltas(Profile(means, 1, model.fingerprint), values)
    seeds = {"y": RNG.integers(-2, 3, size=(batch, *y_shape)).astype(np.int32)}
    neurons, synapses = backward(model, values, d, seeds, BackwardOptions(theta=THETA))
    return values, d, seeds, neurons, synapses


def _naive_product(eq: str, names: list[str], values, d, seeds, inits):
    """Product rule over an explicit einsum equation (sample letter 'n' first), one term per operand with neurons."""
    import itertools

    lhs, out = eq.split("->")
    subs = lhs.split(",")
    size: dict[str, int] = {}
    arrs = [values[n] if n in values else inits[n] for n in names]
    for s, a in zip(subs, arrs, strict=True):
        size.update(zip(s, a.shape, strict=True))
    contracted = [c for c in dict.fromkeys("".join(subs)) if c not in out]
    tabs = {n: np.zeros(a.shape, np.int64) for n, a in zip(names, arrs, strict=True)}
    for oidx in itertools.product(*(range(size[c]) for c in out)):
        env = dict(zip(out, oidx, strict=True))
        c = int(seeds["y"][oidx])
        if c == 0:
            continue
        yv, dyv = float(values["y"][oidx]), float(d["y"][oidx])
        terms = []  # (operand name, index, term)
        for cidx in itertools.product(*(range(size[ch]) for ch in contracted)):
            full = {**env, **dict(zip(contracted, cidx, strict=True))}
            for i, (s, n) in enumerate(zip(subs, names, strict=True)):
                if n not in d:
                    continue
                other = 1.0
                for j, (sj, aj) in enumerate(zip(subs, arrs, strict=True)):
                    if j != i:
                        other *= float(aj[tuple(full[ch] for ch in sj)])
                idx = tuple(full[ch] for ch in s)
                terms.append((n, idx, other * float(d[n][idx]), full))
        keep = [True] * len(terms)
        if abs(yv) >= 1e-12:
            acc = 0.0
            for q in sorted(range(len(terms)), key=lambda q: abs(terms[q][2])):
                acc += terms[q][2]
                if abs(acc) < THETA * abs(yv):
                    keep[q] = False
                else:
                    break
        for (n, idx, t, full), k in zip(terms, keep, strict=True):
            if not k:
                continue
            sg = int(np.sign(c) * np.sign(dyv) * np.sign(np.float32(t)))
            tabs[n][idx] += sg
            for sw, nw in zip(subs, names, strict=True):
                if nw in inits and nw != n:
                    tabs[nw][tuple(full[ch] for ch in sw)] += sg
    return tabs


PRODUCTS = [
    ("MatMul", {}, {"a": (3, 4), "b": (4, 2)}, (3, 2), "nik,nkj->nij", {}),
    ("MatMul", {}, {"a": (2, 3, 4), "b": (2, 4, 3)}, (2, 3, 3), "nhik,nhkj->nhij", {}),
    ("MatMul", {}, {"b": (4, 3)}, (2, 3), "ik,nkj->nij", {"a": (2, 4)}),
    ("Einsum", {"equation": "bqd,bkd->bqk"}, {"a": (3, 4), "b": (2, 4)}, (3, 2), "nqd,nkd->nqk", {}),
    ("Einsum", {"equation": "bi,bj->bij"}, {"a": (3,), "b": (2,)}, (3, 2), "ni,nj->nij", {}),
    ("Einsum", {"equation": "...d,de->...e"}, {"a": (3, 4)}, (3, 2), "nid,de->nie", {"b": (4, 2)}),
]


@pytest.mark.parametrize(("op", "attrs", "shapes", "y_shape", "eq", "consts"), PRODUCTS, ids=lambda v: str(v))
def test_contrib_products_of_activations_match_naive(op, attrs, shapes, y_shape, eq, consts) -> None:
    inits = {k: RNG.standard_normal(s).astype(np.float32) for k, s in consts.items()}
    node = helper.make_node(op, ["a", "b"], ["y"], **attrs)
    values, d, seeds, neurons, synapses = _run_two(node, shapes, y_shape, inits)
    tabs = _naive_product(eq, ["a", "b"], values, d, seeds, inits)
    for name in ("a", "b"):
        if name in shapes:
            assert np.abs(tabs[name]).sum() > 0
            np.testing.assert_array_equal(neurons[name], tabs[name].sum(axis=0), err_msg=name)
        else:
            np.testing.assert_array_equal(synapses[name], tabs[name], err_msg=name)


def test_contrib_product_chunking_does_not_change_tables() -> None:
    node = helper.make_node("MatMul", ["a", "b"], ["y"])
    model = load(
        make_model(
            [node],
            {"a": (np.float32, ["N", 2, 3, 4]), "b": (np.float32, ["N", 2, 4, 3])},
            {"y": (np.float32, ["N", 2, 3, 3])},
        )
    )
    feed = {
        "a": RNG.standard_normal((3, 2, 3, 4)).astype(np.float32),
        "b": RNG.standard_normal((3, 2, 4, 3)).astype(np.float32),
    }
    values = {**Recorder(model, "all", "cpu").run(feed), **feed}
    means = {k: np.zeros(v.shape[1:], np.float32) for k, v in values.items()}
    d = deltas(Profile(means, 1, model.fingerprint), values)
    seeds = {"y": RNG.integers(-2, 3, size=(3, 2, 3, 3)).astype(np.int32)}
    n1, _ = backward(model, values, d, seeds, BackwardOptions(theta=THETA))
    n2, _ = backward(model, values, d, seeds, BackwardOptions(theta=THETA, chunk=10))
    for k in ("a", "b"):
        np.testing.assert_array_equal(n1[k], n2[k])


@pytest.mark.parametrize("attrs", [{}, {"exclusive": 1, "reverse": 1}], ids=str)
def test_contrib_cumsum_matches_naive(attrs) -> None:
    node = helper.make_node("CumSum", ["x", "axis"], ["y"], **attrs)
    model, _, values, d, seeds, neurons, _ = _run(node, (3, 4), (3, 4), {"axis": np.array(1, np.int64)})
    ref = _naive(_linear_map(model, (3, 4)), d, seeds, values, theta=False)
    assert np.abs(ref).sum() > 0
    np.testing.assert_array_equal(neurons["x"], ref)


def test_contrib_trilu_routes_contrib() -> None:
    node = helper.make_node("Trilu", ["x", "k"], ["y"], upper=0)
    _, _, _, _, seeds, neurons, _ = _run(node, (3, 4), (3, 4), {"k": np.array(1, np.int64)})
    np.testing.assert_array_equal(neurons["x"], (seeds["y"] * np.tril(np.ones((3, 4)), 1)).sum(axis=0))


@pytest.mark.parametrize(
    ("op", "attrs", "inits", "local"),
    [
        (
            "GroupNormalization",
            {"num_groups": 2},
            {"s": np.array([1.0, -2.0, 0.5, -1.0], np.float32), "b": np.zeros(4, np.float32)},
            np.array([1.0, -1.0, 1.0, -1.0]).reshape(4, 1, 1),
        ),
        ("LpNormalization", {"axis": 1}, {}, np.ones((4, 1, 1))),
    ],
    ids=["GroupNormalization", "LpNormalization"],
)
def test_contrib_one_to_one_norms(op, attrs, inits, local) -> None:
    node = helper.make_node(op, ["x", *inits], ["y"], **attrs)
    opset_node = node
    model = load(
        make_model(
            [opset_node], {"x": (np.float32, ["N", 4, 2, 3])}, {"y": (np.float32, ["N", 4, 2, 3])}, inits, opset=21
        )
    )
    x = RNG.standard_normal((2, 4, 2, 3)).astype(np.float32)
    values = {**Recorder(model, "all", "cpu").run({"x": x}), "x": x}
    prof = Profile(
        {k: (0.5 * RNG.standard_normal(v.shape[1:])).astype(np.float32) for k, v in values.items()},
        1,
        model.fingerprint,
    )
    d = deltas(prof, values)
    seeds = {"y": RNG.integers(-2, 3, size=(2, 4, 2, 3)).astype(np.int32)}
    neurons, _ = backward(model, values, d, seeds, BackwardOptions(theta=THETA))
    expected = (np.sign(seeds["y"]) * np.sign(d["y"]) * np.sign(local * d["x"])).astype(np.int64).sum(axis=0)
    np.testing.assert_array_equal(neurons["x"], expected)


def test_contrib_crosses_quantize_dequantize_pairs() -> None:
    w = RNG.standard_normal((3, 2, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["h"], pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["h", "s", "z"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
    ]
    inits = {"w": w, "s": np.array(0.05, np.float32), "z": np.array(128, np.uint8)}
    model = load(make_model(nodes, {"x": (np.float32, ["N", 2, 4, 4])}, {"y": (np.float32, ["N", 3, 4, 4])}, inits))
    x = RNG.standard_normal((2, 2, 4, 4)).astype(np.float32)
    values = {**Recorder(model, "all", "cpu").run({"x": x}), "x": x}
    prof = Profile(
        {k: np.zeros(v.shape[1:], np.float32) for k, v in values.items() if v.dtype == np.float32}, 1, model.fingerprint
    )
    d = deltas(prof, values)
    assert "q" not in d  # the integer value holds no neurons
    seeds = {"y": RNG.integers(-2, 3, size=(2, 3, 4, 4)).astype(np.int32)}
    neurons, synapses = backward(model, values, d, seeds, BackwardOptions(theta=THETA))
    np.testing.assert_array_equal(neurons["h"], seeds["y"].sum(axis=0))  # element n of y is element n of h
    assert "q" not in neurons and np.abs(synapses["w"]).sum() > 0 and np.abs(neurons["x"]).sum() > 0


def test_contrib_routing_when_axis0_is_not_the_samples() -> None:
    """Split of a stacked [3, N, ...] value then Squeeze (attention's qkv): the map uses the recorded shapes."""
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t"], perm=[1, 0, 2]),
        helper.make_node("Split", ["t"], ["a", "b", "c"], axis=0, num_outputs=3),
        helper.make_node("Squeeze", ["b", "ax"], ["y"]),
    ]
    inits = {"shape": np.array([-1, 3, 2], np.int64), "ax": np.array([0], np.int64)}
    model = load(make_model(nodes, {"x": (np.float32, ["N", 6])}, {"y": (np.float32, ["N", 2])}, inits, opset=18))
    x = RNG.standard_normal((4, 6)).astype(np.float32)
    values = {**Recorder(model, "all", "cpu").run({"x": x}), "x": x}
    prof = Profile({k: np.zeros(v.shape[1:], np.float32) for k, v in values.items()}, 1, model.fingerprint)
    seeds = {"y": RNG.integers(-2, 3, size=(4, 2)).astype(np.int32)}
    neurons, _ = backward(model, values, deltas(prof, values), seeds, BackwardOptions(theta=THETA))
    expected = np.zeros((4, 6), np.int64)
    expected[:, 2:4] = seeds["y"]  # y = x.reshape(N, 3, 2)[:, 1]
    np.testing.assert_array_equal(neurons["x"], expected.sum(axis=0))


def test_contrib_topk_routes_to_the_selected_elements() -> None:
    node = helper.make_node("TopK", ["x", "k"], ["y", "i"], axis=1)
    model = load(
        make_model(
            [node],
            {"x": (np.float32, ["N", 5])},
            {"y": (np.float32, ["N", 2]), "i": (np.int64, ["N", 2])},
            {"k": np.array([2], np.int64)},
        )
    )
    x = RNG.standard_normal((3, 5)).astype(np.float32)
    values = {**Recorder(model, "all", "cpu").run({"x": x}), "x": x}
    prof = Profile(
        {k: np.zeros(v.shape[1:], np.float32) for k, v in values.items() if v.dtype == np.float32}, 1, model.fingerprint
    )
    seeds = {"y": RNG.integers(-2, 3, size=(3, 2)).astype(np.int32)}
    neurons, _ = backward(model, values, deltas(prof, values), seeds, BackwardOptions(theta=THETA))
    expected = np.zeros((3, 5), np.int64)
    for b in range(3):
        for j in range(2):
            expected[b, int(np.argsort(-x[b])[j])] += seeds["y"][b, j]
    np.testing.assert_array_equal(neurons["x"], expected.sum(axis=0))


def test_contrib_routing_gather_of_a_time_first_state() -> None:
    """Gather of the last direction of a [D, N, H] state (a GRU's Y_h): the map uses the recorded shapes."""
    node = helper.make_node("Gather", ["s", "i"], ["y"], axis=0)
    model = load(
        make_model(
            [helper.make_node("Identity", ["x"], ["s"]), node],
            {"x": (np.float32, [2, "N", 3])},
            {"y": (np.float32, ["N", 3])},
            {"i": np.array(1, np.int64)},
        )
    )
    x = RNG.standard_normal((2, 4, 3)).astype(np.float32)
    values = {**Recorder(model, "all", "cpu").run({"x": x}), "x": x}
    prof = Profile({k: np.zeros(v.shape[1:], np.float32) for k, v in values.items()}, 1, model.fingerprint)
    seeds = {"y": RNG.integers(-2, 3, size=(4, 3)).astype(np.int32)}
    neurons, _ = backward(model, values, deltas(prof, values), seeds, BackwardOptions(theta=THETA))
    expected = np.zeros((2, 4, 3), np.int64)
    expected[1] = seeds["y"]
    np.testing.assert_array_equal(neurons["x"], expected.sum(axis=0))
