"""onnxslice.targets: one target implementation for every output layout, checked against naive loops."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from onnxslice.errors import DataError
from onnxslice.grad import GradientEngine
from onnxslice.model import load
from onnxslice.sensitivity import sensitivity
from onnxslice.targets import BoundTarget, layout, parse_target
from onnxslice.testing import make_model


def _linear(out_perm: tuple[int, ...] | None, in_shape: list, w_shape: tuple[int, int], seed: int = 0):
    """x [batch, ..., F] -> MatMul W [F, C] (-> Transpose out_perm): an output of any layout, with a layer."""
    rng = np.random.default_rng(seed)
    inits = {"w": rng.normal(size=w_shape).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["z" if out_perm else "y"], name="mm")]
    out = [*in_shape[:-1], w_shape[1]]
    if out_perm:
        nodes.append(helper.make_node("Transpose", ["z"], ["y"], name="tr", perm=list(out_perm)))
        out = [out[i] for i in out_perm]
    return load(make_model(nodes, {"x": (np.float32, in_shape)}, {"y": (np.float32, out)}, inits))


def _naive_pred(y: np.ndarray, batch: int, cls: int) -> np.ndarray:
    """Sum over positions of the predicted class's logit, by explicit loops."""
    z = np.moveaxis(np.moveaxis(y, batch, 0), cls if cls > batch else cls + 1, -1)
    out = np.zeros(z.shape[0])
    for n in range(z.shape[0]):
        for pos in np.ndindex(*z.shape[1:-1]):
            out[n] += z[(n, *pos)].max()
    return out


@pytest.mark.parametrize(
    ("case", "in_shape", "w", "perm", "batch", "cls", "kind"),
    [
        ("vector", ["batch", 4], (4, 5), None, 0, 1, "vector"),
        ("sequence", ["batch", 6, 4], (4, 5), None, 0, 2, "sequence"),
        ("time-first", ["batch", 6, 4], (4, 5), (1, 0, 2), 1, 2, "sequence"),
        ("dense map", ["batch", 3, 2, 4], (4, 5), (0, 3, 1, 2), 0, 1, "map"),
        ("singleton dims", ["batch", 1, 1, 4], (4, 5), (0, 3, 1, 2), 0, 1, "vector"),
        ("heatmap", ["batch", 2, 3, 4], (4, 1), (0, 3, 1, 2), 0, None, "map"),
    ],
)
def test_pred_on_every_layout_matches_loops_and_grad_is_the_selection(case, in_shape, w, perm, batch, cls, kind):
    m = _linear(perm, in_shape, w)
    n = 3
    x = np.random.default_rng(1).normal(size=[n if d == "batch" else d for d in in_shape]).astype(np.float32)
    eng = GradientEngine(m, "pred")
    g = eng({"x": x})
    y = eng.recorder.run({"x": x})["y"]
    lay = layout(m, ["y"], y.shape, n)
    assert (lay.batch, lay.classes, lay.kind) == (batch, cls, kind), case
    ref = _naive_pred(y, batch, cls) if cls is not None else np.moveaxis(y, batch, 0).reshape(n, -1).sum(axis=1)
    np.testing.assert_allclose(g.target_values, ref, rtol=1e-5)
    # the target is linear in x through the selected entries: check d f / d x by central differences
    h = 1e-2
    for idx in [(0,) + (0,) * (x.ndim - 1), (n - 1, *tuple(s - 1 for s in x.shape[1:]))]:
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        fp = eng({"x": xp}).target_values[idx[0]]
        fm = eng({"x": xm}).target_values[idx[0]]
        assert abs((fp - fm) / (2 * h) - g.inputs["x"][idx]) < 1e-2


def test_time_first_batch_axis_comes_from_the_input_even_when_sizes_match():
    m = _linear((1, 0, 2), ["batch", 4, 3], (3, 2))  # T == N == 4
    x = np.random.default_rng(0).normal(size=(4, 4, 3)).astype(np.float32)
    y = np.transpose(x @ m.initializer("w"), (1, 0, 2))
    assert BoundTarget(m, "pred").layout(y, 4).batch == 1
    f, cot = BoundTarget(m, "class:1").seed(y, n=4)
    np.testing.assert_allclose(f, y[:, :, 1].sum(axis=0), rtol=1e-6)
    assert cot.shape == y.shape and cot[:, :, 1].all() and not cot[:, :, 0].any()


def test_time_first_rank_equals_batch_first_rank():
    """The same net with a time-first output ranks exactly like its batch-first twin."""
    rng = np.random.default_rng(2)
    inits = {"w1": rng.normal(size=(3, 6)).astype(np.float32), "w2": rng.normal(size=(6, 4)).astype(np.float32)}

    def net(time_first: bool):
        nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="l1"),
                 helper.make_node("Relu", ["h"], ["r"], name="relu"),
                 helper.make_node("MatMul", ["r", "w2"], ["z" if time_first else "y"], name="l2")]
        out = ["batch", 5, 4]
        if time_first:
            nodes.append(helper.make_node("Transpose", ["z"], ["y"], name="tr", perm=[1, 0, 2]))
            out = [5, "batch", 4]
        return load(make_model(nodes, {"x": (np.float32, ["batch", 5, 3])}, {"y": (np.float32, out)}, inits))

    x = rng.normal(size=(7, 5, 3)).astype(np.float32)
    a = sensitivity(net(False), {"x": x}, "wgrad", "l2", samples=None, batch_size=3)
    b = sensitivity(net(True), {"x": x}, "wgrad", "l2", samples=None, batch_size=3)
    for k in a.scores:
        assert a.scores[k] == pytest.approx(b.scores[k], rel=1e-5)


def test_value_target_with_slices_and_errors():
    m = _linear(None, ["batch", 6, 4], (4, 5))
    y = np.arange(2 * 6 * 5, dtype=np.float32).reshape(2, 6, 5)
    t = BoundTarget(m, "value:y[0:2,3]")
    f, mask = t.seed(y, n=2)
    np.testing.assert_allclose(f, y[:, 0:2, 3].sum(axis=1))
    assert mask.sum() == 2 * 2
    assert parse_target("value:y[0:2,3]").spec == "value:y[0:2,3]"
    assert parse_target("class:1,3").classes == (1, 3)
    with pytest.raises(DataError, match="out of range"):
        BoundTarget(m, "value:y[9]").mask(y, 2)
    with pytest.raises(DataError, match="out of range"):
        BoundTarget(m, "class:7").seed(y, n=2)
    with pytest.raises(DataError, match="loss' needs logits shaped"):
        BoundTarget(m, "loss").seed(y, labels=np.zeros(2, np.int64), n=2)
    with pytest.raises(DataError, match="unknown target"):
        parse_target("bogus")
    with pytest.raises(DataError, match="no output named"):
        BoundTarget(m, "pred", "nope")


def test_fidelity_outputs_put_samples_first_for_time_first_outputs():
    from onnxslice.rewrite.fidelity import compare_outputs, run_outputs

    m = _linear((1, 0, 2), ["batch", 6, 4], (4, 5))
    x = np.random.default_rng(3).normal(size=(7, 6, 4)).astype(np.float32)
    (y,) = run_outputs(m, {"x": x}, batch_size=3)
    np.testing.assert_allclose(y, x @ m.initializer("w"), rtol=1e-5)  # [N, T, C], batches joined on samples
    assert compare_outputs([y], [y]).samples == 7


def test_per_sample_gradients_of_a_time_first_output_equal_the_batch_first_twin():
    a, b = _linear(None, ["batch", 6, 4], (4, 5)), _linear((1, 0, 2), ["batch", 6, 4], (4, 5))
    x = np.random.default_rng(0).normal(size=(3, 6, 4)).astype(np.float32)
    ga = GradientEngine(a, "pred")({"x": x}, per_sample=True)
    gb = GradientEngine(b, "pred")({"x": x}, per_sample=True)
    np.testing.assert_allclose(ga.weights["w"], gb.weights["w"], rtol=1e-6)


def test_zero_gradient_and_empty_slice_are_reported_not_silent(tmp_path, capsys):
    import json

    import onnx

    from onnxslice.cli import main

    dead = make_model(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
         helper.make_node("Add", ["h", "b"], ["a"], name="bias"),
         helper.make_node("Relu", ["a"], ["y"], name="relu")],
        {"x": (np.float32, ["batch", 4])}, {"y": (np.float32, ["batch", 3])},
        {"w": np.zeros((4, 3), np.float32), "b": -np.ones(3, np.float32)},
    )
    onnx.save_model(dead, str(tmp_path / "dead.onnx"))
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).normal(size=(4, 4)).astype(np.float32))
    m, d = str(tmp_path / "dead.onnx"), str(tmp_path / "d.npz")
    assert main(["grad", m, "--data", d, "--json"]) == 0
    out, err = capsys.readouterr()
    assert "every gradient of target 'pred' is zero" in json.loads(out)["warning"]
    assert len(err.strip().splitlines()) == 1 and "warning" in err
    assert main(["profile", m, "--data", d, "--out", str(tmp_path / "p.npz")]) == 0
    capsys.readouterr()
    assert main(["slice", m, "--profile", str(tmp_path / "p.npz"), "--data", d, "--out", str(tmp_path / "s.npz"),
                 "--workers", "1", "--json"]) == 0
    out, err = capsys.readouterr()
    assert "the slice is empty" in json.loads(out)["warning"] and "lower --theta" in err


def test_prune_and_quantize_fall_back_to_fd_when_gradients_are_unavailable(tmp_path, capsys):
    import onnx
    from onnxslice.opsets import REGISTRY

    from onnxslice.cli import main

    op = next(o for o in ("Sinh", "Cosh", "Atan", "Asinh") if REGISTRY.find("vjp", o, "", 17) is None)
    rng = np.random.default_rng(0)
    net = make_model(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node(op, ["c"], ["n"], name="norm"),  # an op without a VJP rule
         helper.make_node("Flatten", ["n"], ["f"], name="flat"),
         helper.make_node("MatMul", ["f", "fc"], ["y"], name="head")],
        {"x": (np.float32, ["batch", 2, 4, 4])}, {"y": (np.float32, ["batch", 3])},
        {"w": rng.normal(size=(8, 2, 3, 3)).astype(np.float32), "fc": rng.normal(size=(128, 3)).astype(np.float32)},
    )
    onnx.save_model(net, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(6, 2, 4, 4)).astype(np.float32))
    m, d = str(tmp_path / "m.onnx"), str(tmp_path / "d.npz")
    for argv in (["prune", m, "--ratio", "0.3", "--budget", "sensitivity", "--mode", "unstructured", "--repeats", "1"],
                 ["quantize", m, "--avg-bits", "6"]):
        assert main([*argv, "--data", d, "--out", str(tmp_path / "o.onnx"), "--json"]) == 0
        err = capsys.readouterr().err
        assert "falling back to 'fd'" in err and op in err


def test_default_output_is_the_first_float_output() -> None:
    """scikit-learn classifiers put the integer label first: targets read the float scores by default."""
    from onnx import helper

    from onnxslice.grad import GradientEngine
    from onnxslice.model import load
    from onnxslice.targets import check_output, default_output
    from onnxslice.testing import make_model

    nodes = [helper.make_node("MatMul", ["x", "w"], ["scores"], name="fc"),
             helper.make_node("ArgMax", ["scores"], ["label"], axis=1, keepdims=0)]
    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    m = load(make_model(nodes, {"x": (np.float32, ["N", 4])}, {"label": (np.int64, ["N"]),
                                                                 "scores": (np.float32, ["N", 3])}, {"w": w}))
    assert default_output(m) == "scores" and check_output(m, None) == "scores"
    assert check_output(m, "label") == "label"
    assert GradientEngine(m).output == "scores"
