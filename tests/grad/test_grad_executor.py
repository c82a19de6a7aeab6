"""``GradientEngine(executor=)``: the emitted gradient graph as a CPU execution of the engine.

``"graph"`` and ``"auto"`` must give the eager engine's gradients within the emit tolerance, fall back
to the eager path where the graph does not apply (per-sample, swapped weights, explicit cotangents,
models it cannot be emitted for), and reuse one cached session per batch shape.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import onnx
import pytest
from _common import ROOT
from onnx import helper, numpy_helper

from onnxslice.errors import DataError
from onnxslice.grad import GradientEngine
from onnxslice.grad.emitted import GRAPH_TOL, graph_disagreement
from onnxslice.model import load
from onnxslice.record import validate_inputs

GRAPH = "emitted gradient graph"


def _feed(name: str, batch: int, seed: int = 0) -> tuple[Any, dict[str, np.ndarray]]:
    m: Any = load(str(ROOT / "models" / f"{name}.onnx"))
    rng = np.random.default_rng(seed)
    feed = {i.name: rng.random([d if isinstance(d, int) and d > 0 else batch for d in i.shape]).astype(i.dtype)
            for i in m.inputs}
    return m, validate_inputs(m, feed)


@pytest.mark.parametrize("name", ["lenet5", "resnet8_mnist"])
@pytest.mark.parametrize("target", ["pred", "loss"])
def test_graph_executor_matches_eager(name: str, target: str) -> None:
    m, feed = _feed(name, 3)
    labels = np.array([1, 0, 2]) if target == "loss" else None
    eager = GradientEngine(m, target, device="cpu", executor="eager")(feed, labels=labels)
    engine = GradientEngine(m, target, device="cpu", executor="graph")
    g = engine(feed, labels=labels)
    assert g.meta.get("backend") == GRAPH and eager.meta.get("backend") is None
    assert graph_disagreement(g, eager) <= GRAPH_TOL
    np.testing.assert_allclose(g.target_values, eager.target_values, rtol=1e-5, atol=1e-6)
    assert set(g.weights) == set(eager.weights) and set(g.inputs) == set(eager.inputs)


def test_graph_executor_caches_one_session_per_batch_shape() -> None:
    m, feed = _feed("lenet5", 4)
    engine = GradientEngine(m, "pred", device="cpu", executor="graph")
    a = engine(feed)
    b = engine(feed)
    c = engine(feed, batch_size=2)  # a second shape: [2, ...]
    assert len(engine._runner._sessions) == 2
    engine(feed, batch_size=2)
    assert len(engine._runner._sessions) == 2  # reused
    for k, v in a.weights.items():
        np.testing.assert_array_equal(b.weights[k], v)
        np.testing.assert_allclose(c.weights[k], v, rtol=1e-4, atol=1e-5 * float(np.abs(v).max()))


@pytest.mark.parametrize("target", ["pred", "loss"])
def test_graph_executor_runs_data_parallel_parts_on_single_threaded_sessions(
    monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    """With two threads and parts allowed, a call of 6 samples runs as two concurrent parts of 3 on one
    single-threaded session: the same gradients as one run, target values and input gradients in order."""
    import onnxslice.grad.emitted as emitted

    m, feed = _feed("resnet8_mnist", 6, seed=3)
    labels = np.array([1, 0, 2, 5, 4, 3]) if target == "loss" else None
    monkeypatch.setenv("ONNXSLICE_THREADS", "2")
    whole = GradientEngine(m, target, device="cpu", executor="graph")
    a = whole(feed, labels=labels)
    assert whole._runner.parts(6, None, feed) == 1  # parts of 3 samples are below the default minimum
    monkeypatch.setattr(emitted, "GRAPH_SPLIT_MIN_SAMPLES", 3)
    monkeypatch.setattr(emitted, "GRAPH_SPLIT_MIN_MACS", 0)
    engine = GradientEngine(m, target, device="cpu", executor="graph")
    b = engine(feed, labels=labels)
    runner = engine._runner
    assert runner.parts(6, None, feed) == 2 and runner.parts(6, 2, feed) == 1 and runner.parts(5, None, feed) == 1
    (key,) = runner._sessions  # one session, traced at 3 samples, single-threaded
    assert key[1] is True and dict(key[0])[next(iter(feed))][0] == 3
    assert runner._sessions[key].get_session_options().intra_op_num_threads == 1
    assert b.meta.get("backend") == GRAPH
    np.testing.assert_allclose(b.target_values, a.target_values, rtol=1e-6, atol=1e-7)
    for k, v in a.inputs.items():
        np.testing.assert_allclose(b.inputs[k], v, rtol=1e-5, atol=1e-6 * float(np.abs(v).max()))
    for k, v in a.weights.items():
        np.testing.assert_allclose(b.weights[k], v, rtol=1e-4, atol=1e-5 * float(np.abs(v).max()))
    monkeypatch.setenv("ONNXSLICE_THREADS", "1")
    assert runner.parts(6, None, feed) == 1


def test_graph_executor_leaves_per_sample_weights_and_cotangents_to_eager() -> None:
    m, feed = _feed("lenet5", 2)
    engine = GradientEngine(m, "pred", device="cpu", executor="graph", swappable=["conv1.weight"])
    assert engine(feed, per_sample=True).meta.get("backend") is None
    cot = np.ones((2, 10), np.float32)
    assert engine(feed, cotangent=cot).meta.get("backend") is None
    swapped = engine(feed, weights={"conv1.weight": m.initializer("conv1.weight") * 2})
    assert swapped.meta.get("backend") is None
    assert engine(feed).meta.get("backend") == GRAPH


def _pad_model() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 5])
    e = numpy_helper.from_array(np.array([0, 1, 0, 1], np.int64), "e")
    g = helper.make_graph([helper.make_node("Pad", ["x", "e"], ["y"], name="pad")], "pad", [x], [y], [e])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_unemittable_model_runs_eagerly_with_a_warning_for_graph_and_silently_for_auto() -> None:
    feed = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}
    ref = GradientEngine(_pad_model(), "pred", device="cpu", executor="eager")(feed)
    engine = GradientEngine(_pad_model(), "pred", device="cpu", executor="graph")
    with pytest.warns(UserWarning, match="cannot be emitted"):
        g = engine(feed)
    np.testing.assert_array_equal(g.inputs["x"], ref.inputs["x"])
    assert engine._runner is False
    auto = GradientEngine(_pad_model(), "pred", device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            np.testing.assert_array_equal(auto(feed).inputs["x"], ref.inputs["x"])
    assert auto._runner is False


def test_auto_tries_the_graph_on_the_second_call_and_keeps_the_choice() -> None:
    m, feed = _feed("lenet5", 4)
    engine = GradientEngine(m, "pred", device="cpu")
    assert engine.executor == "auto"
    first = engine(feed)
    assert engine._runner is None  # a one-off call builds no graph
    second = engine(feed)
    assert second.meta.get("backend") is None  # the trial returns the eager result
    (choice,) = engine._auto.values()
    assert isinstance(choice, bool)
    third = engine(feed)
    assert (third.meta.get("backend") == GRAPH) is choice
    assert graph_disagreement(third, first) <= GRAPH_TOL
    runner: Any = engine._runner
    assert len(runner._sessions) == 1


def test_auto_refuses_a_graph_that_disagrees(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxslice.grad.engine as engine_module

    monkeypatch.setattr(engine_module, "graph_disagreement", lambda a, b: 1.0)
    m, feed = _feed("lenet5", 4)
    engine = GradientEngine(m, "pred", device="cpu")
    for _ in range(3):
        g = engine(feed)
    assert list(engine._auto.values()) == [False] and g.meta.get("backend") is None


def test_unknown_executor_is_refused() -> None:
    with pytest.raises(DataError, match="executor must be one of auto, eager, graph, not 'fast'"):
        GradientEngine(str(ROOT / "models" / "lenet5.onnx"), executor="fast")


def test_one_shot_gradients_stay_eager_unless_asked() -> None:
    from onnxslice.grad import clear_cache, gradients

    path = str(ROOT / "models" / "lenet5.onnx")
    _, feed = _feed("lenet5", 2)
    clear_cache()
    try:
        for _ in range(3):
            assert gradients(path, feed).meta.get("backend") is None
        assert gradients(path, feed, executor="graph").meta.get("backend") == GRAPH
    finally:
        clear_cache()


@pytest.mark.parametrize("mode", ["pred", "loss", "per_sample", "cotangent"])
def test_eager_call_runs_in_parts_on_a_single_threaded_recording(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """With two threads and parts allowed, an eager call of 5 samples runs as parts of 2 and 3 at once on the
    single-threaded recording (the multi-threaded one is never built): the one-thread engine's gradients,
    target values, per-sample gradients and input gradients in sample order; a smaller ``batch_size`` or
    one thread runs as before."""
    import onnxslice.grad.engine as engine_mod

    m, feed = _feed("resnet8_mnist", 5, seed=4)
    target = "loss" if mode == "loss" else "pred"
    kw: dict[str, Any] = {"labels": np.array([1, 0, 2, 5, 4])} if mode == "loss" else {}
    if mode == "per_sample":
        kw["per_sample"] = True
    if mode == "cotangent":
        kw["cotangent"] = np.random.default_rng(2).standard_normal((5, 10)).astype(np.float32)
    monkeypatch.setenv("ONNXSLICE_THREADS", "1")
    a = GradientEngine(m, target, device="cpu", executor="eager")(feed, **kw)
    monkeypatch.setenv("ONNXSLICE_THREADS", "2")
    monkeypatch.setattr(engine_mod, "EAGER_SPLIT_MIN_MACS", 0)
    engine = GradientEngine(m, target, device="cpu", executor="eager")
    b = engine(feed, **kw)
    assert engine._recorder is None and engine._single_recorder is not None
    assert engine._single_recorder.session.get_session_options().intra_op_num_threads == 1
    np.testing.assert_allclose(b.target_values, a.target_values, rtol=1e-6, atol=1e-7)
    for k, v in a.inputs.items():
        np.testing.assert_allclose(b.inputs[k], v, rtol=1e-5, atol=1e-6 * float(np.abs(v).max()))
    for k, v in a.weights.items():
        assert b.weights[k].shape == v.shape
        np.testing.assert_allclose(b.weights[k], v, rtol=1e-4, atol=1e-5 * float(np.abs(v).max()))
    c = engine(feed, batch_size=2, **kw)
    assert engine._recorder is not None  # a smaller batch_size: its chunks in turn, on the usual recording
    np.testing.assert_allclose(c.target_values, a.target_values, rtol=1e-6, atol=1e-7)
    assert not engine._parts(5, 2, feed) and engine._parts(5, None, feed)
    assert engine.parts_fit(5, 2) and not engine.parts_fit(5, 10**6)  # each part holds a set of weight cotangents
    monkeypatch.setattr(engine_mod, "EAGER_SPLIT_MEMORY_SHARE", 1e-9)  # a second set of weight cotangents
    assert not engine._parts(5, None, feed)  # would outweigh the recording: whole
    monkeypatch.setattr(engine_mod, "EAGER_SPLIT_MEMORY_SHARE", 0.5)
    monkeypatch.setattr(engine_mod, "EAGER_SPLIT_MIN_MACS", 1 << 30)  # the default: resnet8's parts are too small
    small = GradientEngine(m, target, device="cpu", executor="eager")
    small(feed, **kw)
    assert small._single_recorder is None and small._recorder is not None
    monkeypatch.setenv("ONNXSLICE_THREADS", "1")
    assert not engine._parts(5, None, feed)


def _batch_coupled(coupled: bool) -> onnx.ModelProto:
    """x [N, 4] -> x @ W, minus its mean over the batch when ``coupled`` (samples interact)."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32), "W")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"])]
    if coupled:
        nodes += [helper.make_node("ReduceMean", ["h"], ["m"], axes=[0], keepdims=1),
                  helper.make_node("Sub", ["h", "m"], ["y"])]
    else:
        nodes += [helper.make_node("Relu", ["h"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 3])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


@pytest.mark.parametrize("coupled", [False, True])
def test_a_call_runs_in_parts_only_when_samples_are_independent(monkeypatch: pytest.MonkeyPatch,
                                                                  coupled: bool) -> None:
    """A model that mixes samples along axis 0 (a batch mean) is never split: its gradients stay the
    whole call's; an independent one is split; ``parts=False`` never is."""
    import onnxslice.grad.engine as engine_mod

    m = load(_batch_coupled(coupled))
    x = np.random.default_rng(1).standard_normal((6, 4)).astype(np.float32)
    cot = np.random.default_rng(2).standard_normal((6, 3)).astype(np.float32)
    monkeypatch.setenv("ONNXSLICE_THREADS", "1")
    a = GradientEngine(m, "cotangent", device="cpu", executor="eager")(x, cotangent=cot)
    monkeypatch.setenv("ONNXSLICE_THREADS", "2")
    monkeypatch.setattr(engine_mod, "EAGER_SPLIT_MIN_MACS", 0)
    monkeypatch.setattr(engine_mod, "EAGER_SPLIT_MEMORY_SHARE", 1e9)
    engine = GradientEngine(m, "cotangent", device="cpu", executor="eager")
    b = engine(x, cotangent=cot)
    assert engine.samples_independent({"x": x}) is (not coupled)
    assert (engine._single_recorder is not None) is (not coupled)
    for k, v in a.weights.items():
        np.testing.assert_allclose(b.weights[k], v, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b.inputs["x"], a.inputs["x"], rtol=1e-5, atol=1e-6)
    off = GradientEngine(m, "cotangent", device="cpu", executor="eager", parts=False)
    off(x, cotangent=cot)
    assert off._single_recorder is None and not off.samples_independent({"x": x})


def test_path_criteria_on_stacked_models_are_the_same_at_two_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """IG on resnet8 stacks 16 weight settings along the batch (sensitivity.stacked): with two threads and
    parts allowed everywhere, the scores equal one thread's (the stacked engines never split)."""
    import onnxslice.grad.engine as engine_mod
    from onnxslice.sensitivity import sensitivity

    m = load(str(ROOT / "models" / "resnet8_mnist.onnx"))
    monkeypatch.setenv("ONNXSLICE_THREADS", "1")
    one = sensitivity(m, "builtin:mnist?split=test", "ig", samples=8, steps=8)
    monkeypatch.setenv("ONNXSLICE_THREADS", "2")
    monkeypatch.setattr(engine_mod, "EAGER_SPLIT_MIN_MACS", 0)
    monkeypatch.setattr(engine_mod, "EAGER_SPLIT_MEMORY_SHARE", 1e9)
    two = sensitivity(m, "builtin:mnist?split=test", "ig", samples=8, steps=8)
    for k, v in one.scores.items():
        assert two.scores[k] == pytest.approx(v, rel=1e-4), k
