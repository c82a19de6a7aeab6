"""Recording equals onnxruntime; bad inputs raise DataError naming the input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxslice as osl
from onnxslice.errors import DataError, OnnxSliceError
from onnxslice.record import Recorder, Trace, cuda_usable, max_ort_ir_version, record, runtime_proto


def _plain_ort(proto: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(runtime_proto(proto).SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def test_record_outputs_equal_plain_onnxruntime(cnn_proto: onnx.ModelProto, cnn_input: np.ndarray) -> None:
    m = osl.load(cnn_proto)
    trace = record(m, {"x": cnn_input})
    (ref,) = _plain_ort(cnn_proto, {"x": cnn_input})
    np.testing.assert_allclose(trace["logits"], ref, rtol=1e-6, atol=1e-6)
    assert trace.device in ("cpu", "cuda")


def test_record_keeps_every_intermediate_and_bn_unfused(cnn_proto: onnx.ModelProto, cnn_input: np.ndarray) -> None:
    trace = record(osl.load(cnn_proto), cnn_input)
    assert set(trace.values) == {"c", "b", "r", "p", "f", "logits"}
    np.testing.assert_array_equal(trace["r"], np.maximum(trace["b"], 0))
    assert trace.shapes["c"] == (5, 4, 8, 8) and trace.shapes["f"] == (5, 64)
    np.testing.assert_array_equal(trace["x"], cnn_input)  # inputs are part of the trace


def test_record_batching_equals_one_run(cnn_proto: onnx.ModelProto, cnn_input: np.ndarray) -> None:
    m = osl.load(cnn_proto)
    whole, parts = record(m, cnn_input), record(m, cnn_input, batch_size=2)
    for name in whole.values:
        np.testing.assert_allclose(parts[name], whole[name], rtol=1e-6, atol=1e-6)


def test_record_selected_values_only(cnn_proto: onnx.ModelProto, cnn_input: np.ndarray) -> None:
    trace = record(osl.load(cnn_proto), cnn_input, values=["r"])
    assert set(trace.values) == {"r", "logits"}
    with pytest.raises(KeyError, match="was not recorded"):
        trace["c"]
    with pytest.raises(DataError, match="no value named nope"):
        record(osl.load(cnn_proto), cnn_input, values=["nope"])


def test_record_lowers_ir_version_for_onnxruntime(cnn_proto: onnx.ModelProto, cnn_input: np.ndarray) -> None:
    cnn_proto.ir_version = onnx.IR_VERSION  # what onnx writes by default; may exceed onnxruntime's limit
    trace = record(osl.load(cnn_proto), cnn_input)
    assert trace["logits"].shape == (5, 3)
    assert runtime_proto(cnn_proto).ir_version <= max_ort_ir_version()


def test_recorder_swaps_weights_without_new_session(cnn_proto: onnx.ModelProto, cnn_input: np.ndarray) -> None:
    m = osl.load(cnn_proto)
    rec = Recorder(m, None, "cpu", weight_inputs=["fc.w"])
    base = rec.run({"x": cnn_input})["logits"]
    session = rec.session
    zero = rec.run({"x": cnn_input}, weights={"fc.w": np.zeros((3, 64), np.float32)})["logits"]
    assert rec.session is session
    np.testing.assert_allclose(zero, np.broadcast_to(m.initializer("fc.b"), zero.shape), atol=1e-6)
    np.testing.assert_allclose(rec.run({"x": cnn_input})["logits"], base)
    with pytest.raises(DataError, match="must have shape"):
        rec.run({"x": cnn_input}, weights={"fc.w": np.zeros((2, 2), np.float32)})
    with pytest.raises(DataError, match="not swappable"):
        rec.run({"x": cnn_input}, weights={"conv.w": np.zeros((4, 1, 3, 3), np.float32)})


@pytest.mark.parametrize(
    ("feed", "pattern"),
    [
        ({}, "missing input 'x'"),
        ({"x": np.zeros((2, 1, 8, 8), np.float32), "y": np.zeros(1)}, "unknown input.*y"),
        ({"x": np.zeros((2, 8, 8), np.float32)}, r"input 'x' has shape \[2, 8, 8\].*rank 4"),
        ({"x": np.zeros((2, 3, 8, 8), np.float32)}, "axis 1 must be 1"),
        ({"x": np.zeros((2, 1, 8, 8), np.int64)}, "dtype int64.*float32"),
        ({"x": np.full((2, 1, 8, 8), np.nan, np.float32)}, "input 'x' holds 128 NaN or Inf"),
        ({"x": np.full((1, 1, 8, 8), np.inf, np.float32)}, "NaN or Inf"),
    ],
)
def test_record_bad_inputs_raise_data_error(cnn_proto: onnx.ModelProto, feed: dict, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern):
        record(osl.load(cnn_proto), feed)


def test_record_casts_float64_to_model_float(cnn_proto: onnx.ModelProto, cnn_input: np.ndarray) -> None:
    m = osl.load(cnn_proto)
    np.testing.assert_allclose(record(m, cnn_input.astype(np.float64))["logits"], record(m, cnn_input)["logits"])


@pytest.mark.skipif(cuda_usable(), reason="CUDA works here: the forced-CUDA failure path cannot be shown")
def test_record_forced_cuda_without_gpu_says_so(cnn_proto: onnx.ModelProto, cnn_input: np.ndarray) -> None:
    with pytest.raises(OnnxSliceError, match="CUDA was requested"):
        record(osl.load(cnn_proto), cnn_input, device="cuda")


def test_trace_save_load_roundtrip(tmp_path: Path, cnn_proto: onnx.ModelProto, cnn_input: np.ndarray) -> None:
    trace = record(osl.load(cnn_proto), cnn_input)
    back = Trace.load(trace.save(tmp_path / "t.npz"))
    assert set(back.values) == set(trace.values) and back.outputs == ["logits"]
    np.testing.assert_array_equal(back["r"], trace["r"])
    np.testing.assert_array_equal(back["x"], cnn_input)


def test_in_memory_weights_stay_initializers_and_fuse(cnn_proto: onnx.ModelProto, cnn_input: np.ndarray) -> None:
    """``in_memory``: the weights are handed over from the model's arrays (stubs in the proto), stay
    initializers (onnxruntime may fold them when optimizing) and give the same outputs."""
    from onnxslice.model import load
    from onnxslice.session import MEMORY_LOCATION

    m = load(cnn_proto)
    big = [n for n in m.initializer_names if m.initializer(n).size >= 16]
    assert big
    stubbed = runtime_proto(cnn_proto, [], [], big)
    stubs = [t for t in stubbed.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert {t.name for t in stubs} == set(big) and all(not t.raw_data for t in stubs)
    assert all(e.value == MEMORY_LOCATION for t in stubs for e in t.external_data if e.key == "location")
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in cnn_proto.graph.initializer)
    ref = Recorder(m, None, "cpu").run({m.input_names[0]: cnn_input})
    for optimize in (False, True):
        rec = Recorder(m, None, "cpu", in_memory=big, optimize=optimize)
        assert not {i.name for i in rec.session.get_inputs()} & set(big)  # not inputs: initializers
        got = rec.run({m.input_names[0]: cnn_input})
        for k, v in ref.items():
            np.testing.assert_allclose(got[k], v, rtol=1e-5, atol=1e-5)


def test_kernel_sessions_share_one_arena() -> None:
    from onnxslice.opsets.vjp import kernels

    a = np.ones((2, 3), np.float32)
    kernels.run_kernel("MatMul", a, a.T)
    sess = next(s for s in kernels._SESSIONS.values() if s is not None)
    assert sess.get_session_options().get_session_config_entry("session.use_env_allocators") == "1"


def test_sessions_run_between_other_work_do_not_spin(cnn_proto: onnx.ModelProto) -> None:
    """The one-node kernel sessions and the gradient engine's recordings let their worker threads sleep
    after a run (each session has its own pool: spinning workers of dozens of sessions took the cores
    from each other); other recordings keep onnxruntime's default."""
    from onnxslice.opsets.vjp import kernels

    from onnxslice.grad import GradientEngine

    a = np.ones((2, 3), np.float32)
    kernels.run_kernel("MatMul", a, a.T)
    kernels.run_const_kernel("MatMul", a, a.T.copy())
    key = "session.intra_op.allow_spinning"
    sessions = [s for s in (*kernels._SESSIONS.values(), *kernels._CONST_SESSIONS.values()) if s is not None]
    assert sessions and all(s.get_session_options().get_session_config_entry(key) == "0" for s in sessions)
    engine = GradientEngine(osl.load(cnn_proto), "pred")
    assert engine.recorder.session.get_session_options().get_session_config_entry(key) == "0"
    plain = Recorder(osl.load(cnn_proto)).session.get_session_options()
    with pytest.raises(Exception):  # noqa: B017 - unset: onnxruntime raises for a missing key
        plain.get_session_config_entry(key)


@pytest.mark.skipif(not Path("/proc/self/statm").is_file(), reason="reads the resident size from /proc")
def test_a_session_runs_on_the_arrays_it_is_handed_without_a_copy() -> None:
    """``make_session(external=)``: onnxruntime's tensors are the given buffers (a copy would add 64 MiB)."""
    import resource

    from onnx import helper

    from onnxslice.session import make_session, trim_heap

    w = np.random.default_rng(0).random(16 * 2**20, dtype=np.float32)  # 64 MiB
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [w.size])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [w.size])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "g", [x], [y],
                              [onnx.numpy_helper.from_array(w, "w")])
    proto = runtime_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), in_memory=["w"])

    def rss_mib() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20

    trim_heap()
    before = rss_mib()
    sess = make_session(proto, "cpu", optimize=True, external={"w": w})
    trim_heap()  # the build's passing copy goes back
    assert rss_mib() - before < 16  # 64 MiB if onnxruntime kept a copy
    ones = np.ones(w.size, np.float32)
    np.testing.assert_array_equal(sess.run(None, {"x": ones})[0], w)
