"""The backward pass emitted as an ONNX graph (``grad --emit``) against the eager engine.

The same VJP rules run on two backends (:mod:`onnxslice.opsets.vjp.prims`): eagerly in the engine and
lowered to ONNX nodes. The emitted graph, run in onnxruntime on the CPU provider with graph
optimizations off, must give the eager engine's weight and input gradients within ``TOL`` relative
(to the largest gradient of the same kind: weights, inputs) on every reference model and on every
op-case whose rule is written against the primitives.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from _common import ROOT

from onnxslice.errors import OnnxSliceError, UnsupportedOpError
from onnxslice.grad import GradientEngine
from onnxslice.grad.emit import (
    EmissionError,
    emission_error,
    emit_gradient_model,
    grad_output_name,
    run_emitted,
)
from onnxslice.model import load
from onnxslice.record import validate_inputs

#: emitted vs eager, relative to the largest gradient of the kind (float32 rounding of a reordered sum)
TOL = 2e-5

FAST = ["lenet5", "resnet8_mnist", "keras_mnist", "mlp_digits", "moons/transformer-4037", "moons/skipsd-3000",
        "moons/skip-2000", "moons/vanilla-1000"]


def _feed(path: str, batch: int, seed: int = 0) -> tuple[object, dict[str, np.ndarray]]:
    m = load(path)
    rng = np.random.default_rng(seed)
    feed = {}
    for i in m.inputs:
        shape = [d if isinstance(d, int) and d > 0 else batch for d in i.shape]
        feed[i.name] = rng.random(shape).astype(i.dtype)
    return m, validate_inputs(m, feed)


def _float_output(m: object) -> str:
    return next(o for o in m.output_names if (vi := m.value_info.get(o)) is None or vi.dtype is None  # type: ignore[attr-defined]
                or vi.dtype.kind == "f")


def _check(path: str, target: str = "pred", batch: int = 2, labels: np.ndarray | None = None) -> onnx.ModelProto:
    m, feed = _feed(path, batch)
    engine = GradientEngine(m, target, output=_float_output(m))
    proto = emit_gradient_model(engine, feed, source=Path(path).name)
    onnx.checker.check_model(proto, full_check=True)
    err = emission_error(engine, proto, feed, labels)
    assert err <= TOL, f"{path} ({target}): emitted vs eager {err:.2e}"
    return proto


@pytest.mark.parametrize("name", FAST)
def test_emitted_graph_matches_eager_on_reference_models(name: str) -> None:
    proto = _check(str(ROOT / "models" / f"{name}.onnx"))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["onnxslice.command"] == "grad --emit"
    assert "static" in meta["onnxslice.grad.shapes"]
    assert {o.name for o in proto.graph.output} >= {"target", *(grad_output_name(i.name) for i in load(
        str(ROOT / "models" / f"{name}.onnx")).inputs if i.dtype is not None and i.dtype.kind == "f")}
    assert all(n.domain in ("", "ai.onnx") for n in proto.graph.node)  # standard ops only: any provider runs it


@pytest.mark.slow
def test_emitted_graph_matches_eager_on_efficientnet_lite0() -> None:
    _check(str(ROOT / "models" / "efficientnet_lite0.onnx"), batch=1)


@pytest.mark.slow
def test_emitted_graph_matches_eager_on_resnet18_cifar() -> None:
    pytest.importorskip("torch")
    from models import zoo

    _check(str(zoo.ensure("resnet18_cifar")), batch=2)


@pytest.mark.parametrize("target", ["loss", "class:3", "output-norm"])
def test_emitted_targets_match_eager(target: str) -> None:
    labels = np.array([1, 7]) if target == "loss" else None
    path = str(ROOT / "models" / "lenet5.onnx")
    proto = _check(path, target, labels=labels)
    m, feed = _feed(path, 2)
    res = run_emitted(proto, feed, labels)
    g = GradientEngine(m, target)(feed, labels=labels)
    np.testing.assert_allclose(res["target"], g.target_values, rtol=1e-5, atol=1e-6)


def test_emitted_graph_with_optimizations_on_still_agrees_on_lenet() -> None:
    path = str(ROOT / "models" / "lenet5.onnx")
    m, feed = _feed(path, 4)
    engine = GradientEngine(m, "pred")
    proto = emit_gradient_model(engine, feed)
    res = run_emitted(proto, feed, optimize=True)
    g = engine(feed)
    for k, v in g.weights.items():
        np.testing.assert_allclose(res[grad_output_name(k)], v, rtol=1e-4, atol=1e-5 * float(np.abs(v).max()))


def test_emission_refuses_an_op_without_a_primitive_rule(tmp_path: Path) -> None:
    from onnx import helper, numpy_helper

    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 5])
    e = numpy_helper.from_array(np.array([0, 1, 0, 1], np.int64), "e")
    g = helper.make_graph([helper.make_node("Pad", ["x", "e"], ["y"], name="pad")], "pad", [x], [y], [e])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    engine = GradientEngine(proto, "pred")
    feed = {"x": np.ones((2, 3), np.float32)}
    with pytest.raises(UnsupportedOpError, match=r"'vjp emission' rule for op ai\.onnx::Pad .* node 'pad'") as err:
        emit_gradient_model(engine, feed)
    assert err.value.exit_code == 3 and "\n" not in str(err.value) and "without --emit" in str(err.value)
    # at the CLI: exit 3, one line, nothing written
    onnx.save(proto, str(tmp_path / "pad.onnx"))
    np.savez(tmp_path / "d.npz", x=np.ones((2, 3), np.float32))
    r = _cli("grad", "pad.onnx", "--data", "d.npz", "--emit", "g.onnx", "--out", "g.npz", cwd=tmp_path)
    assert r.returncode == 3 and "Pad" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz", "pad.onnx"]


def test_emission_refuses_targets_it_cannot_build() -> None:
    path = str(ROOT / "models" / "lenet5.onnx")
    m, feed = _feed(path, 2)
    with pytest.raises(EmissionError, match="cannot be emitted"):
        emit_gradient_model(GradientEngine(m, "class:1,2"), feed)


# -- device="cuda": the engine runs the emitted graph -------------------------------------------------


def test_engine_on_cuda_uses_the_emitted_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU here: the session factory is swapped for a CPU one to check that the path is selected."""
    import onnxslice.grad.emitted as emitted
    from onnxslice.record import make_session

    made: list[str] = []

    def cpu_session(proto: onnx.ModelProto, device: str = "auto", **kw: object) -> object:
        made.append(device)
        return make_session(proto, "cpu", **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(emitted, "make_session", cpu_session)
    path = str(ROOT / "models" / "lenet5.onnx")
    m, feed = _feed(path, 4)
    g_cuda = GradientEngine(m, "pred", device="cuda")(feed, batch_size=2)
    g_cpu = GradientEngine(m, "pred", device="cpu")(feed, batch_size=2)
    assert made == ["cuda"]  # one graph for the batch shape [2, ...], built once
    assert g_cuda.meta["backend"] == "emitted gradient graph"
    for k, v in g_cpu.weights.items():
        np.testing.assert_allclose(g_cuda.weights[k], v, rtol=1e-4, atol=1e-5 * float(np.abs(v).max()))
    np.testing.assert_allclose(g_cuda.target_values, g_cpu.target_values, rtol=1e-5)


def test_engine_on_cuda_without_a_gpu_fails_in_one_line() -> None:
    from onnxslice.record import cuda_usable

    if cuda_usable():
        pytest.skip("a GPU is usable here")
    path = str(ROOT / "models" / "lenet5.onnx")
    m, feed = _feed(path, 2)
    with pytest.raises(OnnxSliceError, match="CUDA was requested") as e:
        GradientEngine(m, "pred", device="cuda")(feed)
    assert "\n" not in str(e.value)


def test_engine_on_cuda_falls_back_to_the_eager_backward_when_emission_is_impossible(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A target the graph cannot compute: one warning, then the usual path (which here needs CUDA too)."""
    from onnxslice.record import cuda_usable

    if cuda_usable():
        pytest.skip("a GPU is usable here")
    path = str(ROOT / "models" / "lenet5.onnx")
    m, feed = _feed(path, 2)
    engine = GradientEngine(m, "class:1,2", device="cuda")
    warned = pytest.warns(UserWarning, match="cannot be emitted")
    with warned, pytest.raises(OnnxSliceError, match="CUDA was requested"):
        engine(feed)
    assert engine._runner is False  # not tried again


# -- the CLI -----------------------------------------------------------------------------------------


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    code = "import sys; from onnxslice.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd,
                          env={"ONNXSLICE_PROGRESS": "0", "PATH": "/usr/bin:/bin"})


@pytest.mark.slow
def test_cli_grad_emit_writes_a_checked_gradient_model(tmp_path: Path) -> None:
    model = str(ROOT / "models" / "lenet5.onnx")
    r = _cli("grad", model, "--data", "builtin:mnist", "--samples", "0:6", "--batch-size", "3", "--target", "loss",
             "--emit", "g.onnx", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    proto = onnx.load(str(tmp_path / "g.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["onnxslice.grad.source"] == "lenet5.onnx" and "fidelity" in " ".join(meta)
    assert [i.name for i in proto.graph.input][-1] == "labels"
    assert next(d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim) == 3


def test_cli_grad_emit_with_per_sample_is_refused(tmp_path: Path) -> None:
    model = str(ROOT / "models" / "lenet5.onnx")
    r = _cli("grad", model, "--data", "builtin:mnist", "--samples", "0:2", "--per-sample", "--emit", "g.onnx",
             cwd=tmp_path)
    assert r.returncode == 2 and "--per-sample" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_emission_refuses_a_model_whose_names_clash_with_the_graph_outputs() -> None:
    from onnx import helper, numpy_helper

    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("target", onnx.TensorProto.FLOAT, [2, 4])
    w = numpy_helper.from_array(np.ones((3, 4), np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["target"])], "mm", [x], [y], [w])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    engine = GradientEngine(proto, "pred")
    with pytest.raises(EmissionError, match="already has a value named 'target'"):
        emit_gradient_model(engine, {"x": np.ones((2, 3), np.float32)})


def test_emission_where_onnx_cannot_full_check_the_source_says_so() -> None:
    """onnx 1.23's full check fails on MeanVarianceNormalization (opset >= 13) in any model: the gradient
    graph gets the structural check, a warning and a metadata note, and still matches the eager engine."""
    from onnx import TensorProto, helper

    w = onnx.numpy_helper.from_array(np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 3, 2, 2), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("MeanVarianceNormalization", ["c"], ["m"], name="mvn"),
             helper.make_node("Flatten", ["m"], ["y"], name="flat")]
    graph = helper.make_graph(nodes, "mvn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 18])], [w])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    with pytest.raises(Exception):  # noqa: B017  (onnx's own InferenceError: the situation this covers)
        onnx.checker.check_model(proto, full_check=True)
    model = load(proto)
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    engine = GradientEngine(model, "pred", executor="eager")
    with pytest.warns(UserWarning, match="full check fails on the source model itself"):
        out = emit_gradient_model(engine, {"x": x})
    meta = {p.key: p.value for p in out.metadata_props}
    assert meta["onnxslice.grad.check"].startswith("structural check only")
    res = run_emitted(out, {"x": x})
    eager = engine(x)
    np.testing.assert_allclose(res[grad_output_name("w")], eager.weights["w"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("size", [12, 4])
def test_emitted_weight_cotangents_take_the_one_hot_im2col_where_the_input_has_few_channels(size: int) -> None:
    """A conv reading 3 channels (per-offset GEMMs would be matrix-vector products) is lowered through the
    one-hot im2col Conv: on 12x12 maps (24 output channels, 144 positions) one product per sample of the
    im2col matrix by the transposed cotangent, summed over the samples; on 4x4 maps (more output channels
    than positions) one GEMM of the transposed im2col matrix. One reading 24 channels on large maps keeps
    a GEMM per kernel offset."""
    from onnx import helper

    from onnxslice.grad.lowering import ONEHOT_MAX_CHANNELS, ONEHOT_MAX_COLUMNS
    from onnxslice.testing import make_model

    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.3, (24, 3, 3, 3)).astype(np.float32)
    w2 = rng.normal(0, 0.1, (8, 24, 3, 3)).astype(np.float32)
    model = load(make_model(
        [helper.make_node("Conv", ["x", "w1"], ["h"], pads=[1, 1, 1, 1], name="few"),
         helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Conv", ["r", "w2"], ["c"], pads=[1, 1, 1, 1], name="many"),
         helper.make_node("ReduceMean", ["c"], ["y"], axes=[2, 3], keepdims=0)],
        {"x": (np.float32, ["N", 3, size, size])}, {"y": (np.float32, ["N", 8])}, {"w1": w1, "w2": w2},
    ))
    feed = {"x": rng.random((2, 3, size, size)).astype(np.float32)}
    assert 3 <= ONEHOT_MAX_CHANNELS < 24 and 2 * 4 * 4 <= ONEHOT_MAX_COLUMNS < 2 * 12 * 12
    engine = GradientEngine(model, "pred")
    proto = emit_gradient_model(engine, feed)
    onnx.checker.check_model(proto, full_check=True)
    assert emission_error(engine, proto, feed, None) <= TOL
    inits = {t.name for t in proto.graph.initializer}
    onehot = [n for n in proto.graph.node if n.op_type == "Conv" and any(
        a.name == "group" and a.i in (3, 24) for a in n.attribute) and n.input[1] in inits]
    ops = [n.op_type for n in proto.graph.node]
    if size == 12:
        assert len(onehot) == 1  # the 3-channel conv's im2col
        assert ops.count("MatMul") == 1 and ops.count("Gemm") == 9  # per sample for it, per offset for the other
    else:  # 2 x 4 x 4 output columns: both one-hot, 24 and 8 output channels against 16 positions
        assert len(onehot) == 2
        assert ops.count("Gemm") == 1 and ops.count("MatMul") == 1  # 24 > 16 channels: one GEMM; 8 <= 16: per sample
