"""GradientEngine / gradients: targets, per-sample gradients, swapped weights, fallbacks and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from _grad_nets import cnn, mlp, with_shape_subgraph
from onnx import helper
from onnxslice.opsets.capabilities.vjp import VjpRule

from onnxslice.errors import DataError, UnsupportedOpError
from onnxslice.grad import GradientEngine, Gradients, check_vjp, gradients
from onnxslice.model import load
from onnxslice.record import Recorder
from onnxslice.testing import make_model, run_ort

RNG = np.random.default_rng(0)
X8 = RNG.standard_normal((6, 3, 8, 8)).astype(np.float32)
XM = RNG.standard_normal((5, 6))


def _fd_target(model, x, fn, v, h=1e-6):
    """Central difference of sum_n fn(output_n) along v (float64 models)."""
    out = lambda t: fn(run_ort(model, {"x": x + t * v})[0])  # noqa: E731
    return (out(h) - out(-h)) / (2 * h)


@pytest.mark.parametrize("target", ["pred", "class:2", "loss", "output-norm"])
def test_gradients_target_matches_finite_differences(target):
    model = mlp(softmax=target != "output-norm")
    labels = np.array([0, 1, 2, 3, 1])
    g = gradients(model, XM, target, labels=labels)
    v = RNG.uniform(-1, 1, XM.shape)
    logits = run_ort(mlp(softmax=False), {"x": XM})[0]
    k = logits.argmax(1)

    if target == "pred":
        num = _fd_target(mlp(softmax=False), XM, lambda z: z[np.arange(5), k].sum(), v)
    elif target == "class:2":
        num = _fd_target(mlp(softmax=False), XM, lambda z: z[:, 2].sum(), v)
    elif target == "loss":
        num = _fd_target(model, XM, lambda lp: -lp[np.arange(5), labels].sum(), v)
    else:
        num = _fd_target(model, XM, lambda y: np.linalg.norm(y, axis=1).sum(), v)
    ana = float((g.inputs["x"] * v).sum())
    assert ana == pytest.approx(num, rel=1e-6)
    assert g.target == target and g.target_values.shape == (5,)


def test_gradients_pred_reads_logits_under_softmax():
    g = gradients(cnn(), X8, "pred")
    logits = run_ort(cnn(softmax=False), {"x": X8})[0]
    np.testing.assert_allclose(g.target_values, logits.max(1), rtol=1e-6)
    assert g.meta["value"] == "logits" and g.meta["output"] == "prob"


def test_gradients_weights_match_finite_differences_cnn():
    # float32 with Relu/MaxPool/Clip kinks everywhere: a small step keeps the kink noise below 1%
    for seed in range(3):
        res = check_vjp(cnn(), {"x": X8}, fixed=["lo", "hi"], seed=seed, step=1e-3, tolerance=1e-2)
        assert res.ok, res


def test_engine_per_sample_sums_and_matches_single_samples():
    eng = GradientEngine(cnn(), "pred")
    per = eng(X8, per_sample=True)
    total = eng(X8)
    for k, v in total.weights.items():
        assert per.weights[k].shape == (6, *v.shape)
        np.testing.assert_allclose(per.weights[k].sum(0), v, rtol=1e-4, atol=1e-5)
    for i in (0, 4):
        one = eng(X8[i : i + 1])
        for k, v in one.weights.items():
            np.testing.assert_allclose(per.weights[k][i], v, rtol=1e-4, atol=1e-5, err_msg=k)


def test_engine_per_sample_through_weight_only_nodes():
    """w2 = Mul(w2a, half) is a weight-only node: its per-sample cotangent runs sample by sample."""
    eng = GradientEngine(mlp(), "pred")
    per = eng(XM, per_sample=True)
    for i in range(len(XM)):
        one = eng(XM[i : i + 1])
        for k in ("w1", "b1", "w2a", "half", "b2"):
            np.testing.assert_allclose(per.weights[k][i], one.weights[k], rtol=1e-10, err_msg=k)


def test_engine_per_sample_with_a_rule_without_native_support():
    """Concat of a weight with a batch value (class-token style) goes through the per-node sample loop."""
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("Expand", ["tok", "shape"], ["tokb"]),
        helper.make_node("Concat", ["x", "tokb"], ["c"], axis=1),
        helper.make_node("Gemm", ["c", "w"], ["y"]),
    ]
    inits = {"tok": rng.standard_normal((1, 2)), "w": rng.standard_normal((5, 3)), "shape": np.array([4, 2])}
    x = rng.standard_normal((4, 3))
    model = make_model(nodes, {"x": (np.float64, [4, 3])}, {"y": (np.float64, [4, 3])}, inits)
    eng = GradientEngine(model, "class:1")
    per = eng(x, per_sample=True)
    total = eng(x)
    np.testing.assert_allclose(per.weights["tok"].sum(0), total.weights["tok"], rtol=1e-10)
    np.testing.assert_allclose(per.weights["w"].sum(0), total.weights["w"], rtol=1e-10)
    # sample i's own gradient: only row i of the expanded token and of c
    w = inits["w"]
    for i in range(4):
        np.testing.assert_allclose(per.weights["tok"][i], w[3:, 1][None, :], rtol=1e-10)


def test_engine_swapped_weights_equal_a_rebuilt_model():
    base = cnn()
    eng = GradientEngine(base, "class:1", swappable=["c1.w", "fc.w"])
    m = load(base)
    new = {"c1.w": m.initializer("c1.w") * 0.5, "fc.w": m.initializer("fc.w")[::-1].copy()}
    got = eng(X8, weights=new)
    rebuilt = load(base)
    proto = rebuilt.proto
    for t in proto.graph.initializer:
        if t.name in new:
            t.CopyFrom(helper.make_tensor(t.name, t.data_type, t.dims, new[t.name].reshape(-1).tolist()))
    want = gradients(proto, X8, "class:1")
    for k, v in want.weights.items():
        np.testing.assert_allclose(got.weights[k], v, rtol=1e-4, atol=1e-6, err_msg=k)
    np.testing.assert_allclose(got.target_values, want.target_values, rtol=1e-5)
    assert got.weight_norms["c1.w"] == pytest.approx(float(np.linalg.norm(new["c1.w"])), rel=1e-6)
    with pytest.raises(DataError, match="not swappable"):
        eng(X8, weights={"c1.b": m.initializer("c1.b")})


def test_engine_batch_size_gives_identical_results():
    eng = GradientEngine(cnn(), "pred")
    a, b = eng(X8), eng(X8, batch_size=4)
    for k in a.weights:
        np.testing.assert_allclose(a.weights[k], b.weights[k], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a.inputs["x"], b.inputs["x"])


def test_engine_integer_shape_subgraph_carries_no_gradient():
    model = with_shape_subgraph()
    x = RNG.standard_normal((4, 3, 4)).astype(np.float32)
    eng = GradientEngine(model, "class:0", exact=True)
    assert {s.node.op_type for s in eng.steps} == {"Gemm", "Reshape"}
    g = eng(x)
    w = load(model).initializer("w")
    np.testing.assert_allclose(g.inputs["x"], np.broadcast_to(w[:, 0].reshape(3, 4), x.shape), rtol=1e-6)
    assert check_vjp(model, {"x": x}).ok


def test_engine_weights_selection():
    eng = GradientEngine(cnn(), weights="layers", inputs=False)
    g = eng(X8)
    assert set(g.weights) == {"c1.w", "c1.b", "dw.w", "fc.w", "fc.b"}
    assert g.inputs == {}
    assert list(g.layers) == [layer.name for layer in load(cnn()).layers]
    g2 = GradientEngine(cnn(), weights=["fc.w"])(X8)
    assert set(g2.weights) == {"fc.w"}
    np.testing.assert_allclose(g2.weights["fc.w"], g.weights["fc.w"], rtol=1e-6)


def _atan_model():
    nodes = [helper.make_node("Atan", ["x"], ["a"]), helper.make_node("Gemm", ["a", "w"], ["y"])]
    w = np.random.default_rng(2).standard_normal((3, 2)).astype(np.float32)
    return make_model(nodes, {"x": (np.float32, ["N", 3])}, {"y": (np.float32, ["N", 2])}, {"w": w}), w


def test_engine_without_rule_uses_finite_differences_with_a_warning():
    model, w = _atan_model()
    x = RNG.standard_normal((4, 3)).astype(np.float32)
    with pytest.warns(UserWarning, match=r"no VJP rule for Atan.*finite differences"):
        eng = GradientEngine(model, "class:1")
    g = eng(x)
    np.testing.assert_allclose(g.inputs["x"], w[:, 1] / (1 + x * x), rtol=1e-3, atol=1e-4)


def test_engine_exact_refuses_ops_without_rule():
    model, _ = _atan_model()
    with pytest.raises(UnsupportedOpError, match="Atan"):
        GradientEngine(model, exact=True)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target": "class:5"}, "out of range"),
        ({"target": "class:-1"}, "out of range"),
        ({"target": "loss"}, "needs labels"),
        ({"target": "loss", "labels": [0, 1]}, "2 labels for 6 samples"),
        ({"target": "loss", "labels": [0, 1, 2, 3, 9, 0]}, "labels must lie"),
        ({"target": "cotangent"}, "needs cotangent"),
        ({"target": "nonsense"}, "unknown target"),
        ({"target": "class:x"}, "must be an integer"),
        ({"weights": ["nope"]}, "no initializer named nope"),
        ({"weights": "some"}, "weights must be"),
    ],
)
def test_gradients_bad_input_raises_data_error(kwargs, match):
    with pytest.raises(DataError, match=match):
        gradients(cnn(), X8, **kwargs)


def test_gradients_integer_output_is_not_differentiable():
    nodes = [helper.make_node("Gemm", ["x", "w"], ["y"]), helper.make_node("ArgMax", ["y"], ["k"], axis=1)]
    model = make_model(
        nodes, {"x": (np.float32, ["N", 3])}, {"k": (np.int64, ["N", 1])}, {"w": np.ones((3, 2), np.float32)}
    )
    with pytest.raises(DataError, match="not differentiable"):
        GradientEngine(model)


def test_gradients_save_load_roundtrip(tmp_path):
    g = gradients(cnn(), X8, per_sample=True)
    path = g.save(tmp_path / "g.npz")
    back = Gradients.load(path)
    assert back.per_sample and back.target == "pred" and back.layers == g.layers
    for k in g.weights:
        np.testing.assert_array_equal(back.weights[k], g.weights[k])
    np.testing.assert_array_equal(back.inputs["x"], g.inputs["x"])
    text = back.table()
    assert "c1.w" in text and "grad_norm" in text
    assert [r["weight"] for r in back.summary()][:3] == ["c1.w", "dw.w", "fc.w"]
    with pytest.raises(DataError):
        Gradients.load(tmp_path / "missing.npz")


def test_check_vjp_detects_a_wrong_rule(monkeypatch):
    """The finite-difference check can fail: a Tanh rule off by 10% is caught."""
    from onnxslice.opsets import REGISTRY

    rule = REGISTRY.find("vjp", "Tanh", "", 17)
    bad = VjpRule(lambda ctx: [g * 1.1 if g is not None else None for g in rule(ctx)], False, "bad")
    monkeypatch.setattr(
        REGISTRY, "find", lambda cap, op, d, o: bad if (cap, op) == ("vjp", "Tanh") else _find(cap, op, d, o)
    )
    _find = REGISTRY.__class__.find.__get__(REGISTRY)
    assert not check_vjp(mlp(), {"x": XM}).ok


def test_recorder_is_reused_across_calls():
    eng = GradientEngine(cnn())
    rec = eng.recorder
    eng(X8)
    eng(X8[:2])
    assert eng.recorder is rec and isinstance(rec, Recorder)
