"""Models users bring: fixed batch, old exports, pre-quantized models (built by models/conformance.py)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from _common import files_in

pytest.importorskip("torch")

from models import conformance
from onnxslice.cli import main
from onnxslice.grad import GradientEngine
from onnxslice.model import load
from onnxslice.profile import profile
from onnxslice.record import Recorder
from onnxslice.sensitivity import sensitivity
from onnxslice.slicing import slice as slice_model


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("conformance")


def _build(name, cache):
    path, data = conformance.build(name, cache=cache)
    return path, dict(np.load(data)) if data.endswith(".npz") else data


@pytest.mark.parametrize("fixed", ["cnn_batch1", "cnn_batch4"])
def test_fixed_batch_equals_dynamic_batch_export(fixed, cache):
    """Same net exported with a dynamic and a fixed batch: outputs, gradients, ranks and slices agree on a
    sample count that is not a multiple of the batch (the last batch is padded)."""
    dyn_path, _ = _build("cnn", cache)
    fix_path, _ = _build(fixed, cache)
    dyn, fix = load(dyn_path), load(fix_path)
    x = np.random.default_rng(0).normal(size=(6, 3, 16, 16)).astype(np.float32)
    a, b = Recorder(dyn, "all", "cpu").run({"x": x}), Recorder(fix, "all", "cpu").run({"x": x})
    np.testing.assert_allclose(a["y"], b["y"], rtol=1e-4, atol=1e-5)
    ga = GradientEngine(dyn, "pred")({"x": x}, batch_size=4)
    gb = GradientEngine(fix, "pred")({"x": x}, batch_size=4)
    np.testing.assert_allclose(ga.target_values, gb.target_values, rtol=1e-4)
    np.testing.assert_allclose(ga.inputs["x"], gb.inputs["x"], rtol=1e-3, atol=1e-5)
    for crit in ("wgrad", "fd"):  # fd runs suffix sub-models on cached boundary values
        sa = sensitivity(dyn, {"x": x}, crit, "l2", samples=None, batch_size=5)
        sb = sensitivity(fix, {"x": x}, crit, "l2", samples=None, batch_size=5)
        assert list(sa.scores) == list(sb.scores)
        for k in sa.scores:
            assert sa.scores[k] == pytest.approx(sb.scores[k], rel=1e-3, abs=1e-6), crit
    la = slice_model(dyn, profile(dyn, {"x": x}, show_progress=False), {"x": x}, "pred", samples="0:5", workers=1)
    lb = slice_model(fix, profile(fix, {"x": x}, show_progress=False), {"x": x}, "pred", samples="0:5", workers=1)
    for k in la.synapses:
        np.testing.assert_array_equal(la.synapses[k], lb.synapses[k])


def test_old_export_prunes_and_quantizes_keeping_the_interface(cache, tmp_path, capsys):
    path, x = _build("cnn_opset8", cache)
    src = onnx.load(str(path))
    assert src.ir_version == 3 and src.opset_import[0].version == 8 and len(src.graph.input) > 1
    np.savez(tmp_path / "d.npz", **x)
    for argv, out in (
        (["prune", str(path), "--ratio", "0.3", "--data", str(tmp_path / "d.npz"), "--samples", "8",
          "--repeats", "1", "--out", str(tmp_path / "p.onnx"), "--json"], "p.onnx"),
        (["quantize", str(path), "--avg-bits", "6", "--criterion", "weight", "--data", str(tmp_path / "d.npz"),
          "--out", str(tmp_path / "q.onnx"), "--json"], "q.onnx"),
    ):
        assert main(argv) == 0, capsys.readouterr().err
        capsys.readouterr()
        emitted = onnx.load(str(tmp_path / out))
        onnx.checker.check_model(emitted, full_check=True)
        assert [i.name for i in emitted.graph.input] == ["x"]
        assert [o.name for o in emitted.graph.output] == [o.name for o in src.graph.output]
        y = Recorder(load(tmp_path / out), None, "cpu").run(x)
        assert y[emitted.graph.output[0].name].shape == (len(x["x"]), 6)


@pytest.mark.parametrize("name", ["cnn_qdq", "cnn_qop", "vit_tiny_qdyn", "crnn_ctc_qdyn"])
def test_float_view_computes_the_quantized_model_and_has_layers(name, cache):
    path, x = _build(name, cache)
    quant, view = load(path), load(path, dequantize=True)
    assert not quant.layers and view.layers
    assert any("float view" in note for note in view.notes)
    # the reference runs the integer arithmetic exactly: on x86 without VNNI onnxruntime's default uint8 x
    # int8 kernels saturate (0.06 off on cnn_qop, 0.29 on vit_tiny_qdyn on an AMD EPYC with AVX2)
    so = ort.SessionOptions()
    so.add_session_config_entry("session.x64quantprecision", "1")
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    a = sess.run([quant.output_names[0]], x)[0]
    b = Recorder(view, None, "cpu").run(x)[view.output_names[0]]
    # exact up to float rounding; DynamicQuantizeLSTM also quantizes its activations inside the cell
    tol = 0.02 if name == "crnn_ctc_qdyn" else 1e-4
    assert float(np.abs(a - b).max()) <= tol * max(1.0, float(np.abs(a).max()))


def test_rewrites_refuse_a_quantized_model_in_one_line_and_write_nothing(cache, tmp_path, capsys):
    path, x = _build("cnn_qdq", cache)
    np.savez(tmp_path / "d.npz", **x)
    before = files_in(tmp_path)
    for verb in (["prune", "--ratio", "0.3"], ["quantize", "--avg-bits", "6", "--criterion", "weight"]):
        rc = main([verb[0], str(path), *verb[1:], "--data", str(tmp_path / "d.npz"), "--out", str(tmp_path / "o.onnx")])
        err = capsys.readouterr().err.strip()
        assert rc == 3 and len(err.splitlines()) == 1
        assert "already quantized" in err and "--dequantize" in err
    assert files_in(tmp_path) == before
    rc = main(["prune", str(path), "--ratio", "0.3", "--data", str(tmp_path / "d.npz"), "--samples", "8",
               "--repeats", "1", "--round-to", "1", "--out", str(tmp_path / "o.onnx"), "--dequantize", "--json"])
    assert rc == 0, capsys.readouterr().err
    res = json.loads(capsys.readouterr().out)
    assert res["after"]["params"] < res["before"]["params"]


def test_fixed_batch_with_a_hard_coded_reshape_in_suffix_runs():
    """An old export bakes its batch into a Reshape: the black-box criteria's suffix sub-models (boundary
    shapes unknown) must still run in whole batches of the model's size."""
    from onnx import helper

    from onnxslice.testing import make_model

    rng = np.random.default_rng(0)
    inits = {"w": rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "fc": rng.normal(size=(64, 3)).astype(np.float32)}

    def net(batch):
        shape = np.array([batch if isinstance(batch, int) else -1, 64], np.int64)
        nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
                 helper.make_node("Relu", ["c"], ["r"], name="relu"),
                 helper.make_node("Reshape", ["r", "shape"], ["f"], name="flat"),
                 helper.make_node("MatMul", ["f", "fc"], ["y"], name="head")]
        return load(make_model(nodes, {"x": (np.float32, [batch, 3, 4, 4])}, {"y": (np.float32, [batch, 3])},
                               {**inits, "shape": shape}))

    x = rng.normal(size=(5, 3, 4, 4)).astype(np.float32)
    a = sensitivity(net("N"), {"x": x}, "fd", "l2", samples=None, batch_size=5)
    b = sensitivity(net(2), {"x": x}, "fd", "l2", samples=None, batch_size=5)
    for k in a.scores:
        assert a.scores[k] == pytest.approx(b.scores[k], rel=1e-4, abs=1e-7)


def test_time_first_crnn_slices_through_the_lstm_to_the_convolutions(cache):
    path, x = _build("crnn_ctc", cache)
    m = load(path)
    prof = profile(m, x, show_progress=False)
    assert prof.axis("y") == 1 and prof.axis("/rnn/LSTM_output_0") == 2  # [T, N, C] and [T, D, N, H]
    s = slice_model(m, prof, x, "pred", theta=0.1, samples="0:2", workers=1)
    rows = {r["layer"]: r for r in s.per_layer()}
    assert all(r["synapses_in"] > 0 for r in rows.values()), rows
    assert s.neurons["y"].shape == (8, 11)  # per sample: [T, C]
