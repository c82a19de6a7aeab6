"""The guard pass: a valid model, bit-identical outputs, a flag exactly when a guarded layer is corrupted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from _common import small_cnn
from onnx import helper

from onnxslice.apps.bits import flip_bits
from onnxslice.cli import main
from onnxslice.errors import DataError, ModelError
from onnxslice.model import Model, load
from onnxslice.record import make_session, runtime_proto
from onnxslice.rewrite.guard import FAULT_OUTPUT, full_duplication, guard, guard_unit
from onnxslice.testing import make_model

ROOT = Path(__file__).resolve().parents[2]
RESNET = ROOT / "models" / "resnet8_mnist.onnx"


def _x(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 1, 8, 8)).astype(np.float32)


def test_guarded_model_contract() -> None:
    m = load(small_cnn())
    g = guard(m, ["conv", "fc"])
    onnx.checker.check_model(g.proto, full_check=True)
    assert g.output_names == [*m.output_names, FAULT_OUTPUT]
    assert g.proto.ir_version <= 13
    meta = {p.key: p.value for p in g.proto.metadata_props}
    assert meta["onnxslice.pass"] == "guard"
    info = json.loads(meta["onnxslice.info"])
    assert info["guarded"] == ["conv", "fc"] and info["rtol"] == 1e-4
    old_nodes = {n.name for n in m.nodes}
    assert all(n.name.startswith("onnxslice/") for n in g.nodes if n.name not in old_nodes)
    assert all(t.startswith("onnxslice/") for t in g.initializer_names if not m.is_initializer(t))
    # the guarded layer has its own weight copy, with the same values
    assert np.array_equal(g.initializer("onnxslice/guard/conv/in1"), m.initializer("conv.w"))
    x = _x(16)
    for optimize in (False, True):
        ref = make_session(runtime_proto(m.proto), "cpu", optimize=optimize).run(None, {"x": x})
        got = make_session(runtime_proto(g.proto), "cpu", optimize=optimize).run(None, {"x": x})
        assert np.array_equal(ref[0], got[0])  # bit-identical
        assert got[1].dtype == np.bool_ and got[1].shape == () and not got[1]


def test_no_flag_on_1000_clean_runs() -> None:
    m = load(small_cnn())
    g = guard(m, ["conv", "fc"])
    sess = make_session(runtime_proto(g.proto), "cpu", optimize=True, threads=1)
    x = _x(1000, seed=4) * np.random.default_rng(5).uniform(0.01, 100, (1000, 1, 1, 1)).astype(np.float32)
    flags = [bool(sess.run([FAULT_OUTPUT], {"x": x[i : i + 1]})[0]) for i in range(1000)]
    assert not any(flags)


@pytest.mark.parametrize("layer", ["conv", "fc"])
def test_flag_raised_exactly_when_a_flip_changes_the_guarded_output(layer: str) -> None:
    """Flip single bits of the guarded layer's primary weight: the flag must equal the tolerance test on
    the recorded layer output (so 100% of the flips that change it beyond the tolerance are caught)."""
    m = load(small_cnn())
    g = guard(m, [layer])
    weight = m.node(layer).inputs[1]
    y = m.node(guard_unit(m, layer)[-1]).outputs[0]
    sess = make_session(runtime_proto(g.proto, [y], [weight]), "cpu")
    x = _x(8, seed=1)
    clean = sess.run([y, FAULT_OUTPUT], {"x": x, weight: m.initializer(weight)})
    assert not clean[1]
    rng = np.random.default_rng(0)
    w0 = m.initializer(weight)
    caught = changed = 0
    for _ in range(300):
        w = flip_bits(w0, [rng.integers(w0.size)], [rng.integers(32)])
        yf, flag = sess.run([y, FAULT_OUTPUT], {"x": x, weight: w})
        with np.errstate(invalid="ignore", over="ignore"):
            beyond = bool(np.any(~(np.abs(yf - clean[0]) <= 1e-6 + 1e-4 * np.abs(clean[0]))))
        assert bool(flag) == beyond
        changed += beyond
        caught += bool(flag) and beyond
    assert changed > 30 and caught == changed


def test_residual_and_batchnorm_units_keep_bits() -> None:
    m = load(RESNET)
    names = [x.name for x in m.layers]
    x = np.random.default_rng(0).uniform(0, 1, (8, 1, 28, 28)).astype(np.float32)
    ref = make_session(runtime_proto(m.proto), "cpu", optimize=True).run(None, {"x": x})[0]
    g = guard(m, names)
    out = make_session(runtime_proto(g.proto), "cpu", optimize=True).run(None, {"x": x})
    assert np.array_equal(ref, out[0]) and not out[1]
    units = {n: [m.node(u).op_type for u in guard_unit(m, n)] for n in names}
    assert units["/layer1/layer1.0/conv2/Conv"] == ["Conv", "BatchNormalization", "Add", "Relu"]
    assert units["/layer2/layer2.0/shortcut/shortcut.0/Conv"] == ["Conv", "BatchNormalization"]
    d = full_duplication(m)
    out = make_session(runtime_proto(d.proto), "cpu", optimize=True).run(None, {"x": x})
    assert np.array_equal(ref, out[0]) and not out[1]


def test_quantized_guard_copies_stored_weights() -> None:
    from onnxslice.rewrite.bits_plan import uniform_plan
    from onnxslice.rewrite.quantize import quantize

    m = load(small_cnn())
    q = quantize(m, uniform_plan(m, "int8"), use_matmul_nbits=False)
    g = guard(q, ["fc"])
    stored = next(t for t in q.initializer_names if t.endswith("fc.w/int8"))
    sess = make_session(runtime_proto(g.proto, weight_inputs=[stored]), "cpu")
    x = _x(4)
    w = q.initializer(stored)
    assert not sess.run([FAULT_OUTPUT], {"x": x, stored: w})[0]
    assert sess.run([FAULT_OUTPUT], {"x": x, stored: flip_bits(w, [0], [6])})[0]


def test_bad_guard_requests() -> None:
    m = load(small_cnn())
    with pytest.raises(ModelError, match="no layer named nope"):
        guard(m, ["nope"])
    with pytest.raises(ModelError, match="no layers to guard"):
        guard(m, [])
    with pytest.raises(DataError, match="tolerances"):
        guard(m, ["conv"], rtol=-1.0)
    relu = make_model([helper.make_node("Relu", ["x"], ["y"], name="r")], {"x": (np.float32, ["N", 3])},
                      {"y": (np.float32, ["N", 3])}, {})
    with pytest.raises(ModelError, match="no layers faults can hit"):
        guard(load(relu), ["r"])
    with pytest.raises(ModelError, match="guarded already"):
        guard(guard(m, ["conv"]), ["fc"])


def _save(tmp_path: Path, proto: onnx.ModelProto, name: str = "m.onnx") -> Path:
    p = tmp_path / name
    onnx.save_model(proto, str(p))
    return p


def test_cli_guard_writes_verified_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _save(tmp_path, small_cnn())
    data = tmp_path / "d.npz"
    np.savez(data, x=_x(32), y=np.random.default_rng(0).integers(0, 3, 32))
    out = tmp_path / "g.onnx"
    rc = main(["guard", str(model), "--layers", "1", "--criterion", "weight", "--data", str(data), "--out", str(out),
               "--repeats", "3", "--json"])
    assert rc == 0 and out.is_file()
    report = json.loads(capsys.readouterr().out)
    assert len(report["guarded"]) == 1 and 0 < report["flops_share"] < 1
    assert report["verified_samples"] == 32 and set(report["latency_ms"]) == {"original", "guarded",
                                                                              "full_duplication"}
    g = load(out)
    assert g.output_names[-1] == FAULT_OUTPUT


def test_cli_guard_bad_input_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _save(tmp_path, small_cnn())
    out = tmp_path / "g.onnx"
    relu = _save(tmp_path, make_model([helper.make_node("Relu", ["x"], ["y"], name="r")],
                                      {"x": (np.float32, ["N", 3])}, {"y": (np.float32, ["N", 3])}, {}), "relu.onnx")
    ints = _save(tmp_path, make_model(
        [helper.make_node("Cast", ["x"], ["xf"], name="cast", to=onnx.TensorProto.FLOAT),
         helper.make_node("MatMul", ["xf", "w"], ["y"], name="mm")],
        {"x": (np.int64, ["N", 4])}, {"y": (np.float32, ["N", 2])}, {"w": np.ones((4, 2), np.float32)}), "int.onnx")
    cases = [
        ([str(model), "--layers", "conv,nope"], "no layer named nope"),
        ([str(relu), "--layers", "r"], "no layers faults can hit"),
        ([str(ints), "--layers", "mm"], "float inputs"),
        ([str(model), "--layers", "9", "--criterion", "weight"], "give a count in 1..2"),
        ([str(model), "--max-loss", "0.01"], "--max-loss needs --data"),
        ([str(model), "--layers", "conv", "--rate", "3"], "must be in (0, 1)"),
        ([str(model), "--layers", "conv", "--out", str(model)], "refusing to overwrite"),
    ]
    for argv, msg in cases:
        rc = main(["guard", *argv, *(["--out", str(out)] if "--out" not in argv else [])])
        err = capsys.readouterr().err
        assert rc == 2, (argv, err)
        assert msg in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()
    assert load(model).output_names == ["logits"]  # the input was not overwritten


def test_guard_and_duplication_flag_nan() -> None:
    m: Model = load(small_cnn())
    g = guard(m, ["fc"])
    sess = make_session(runtime_proto(g.proto, weight_inputs=["fc.w"]), "cpu")
    w = m.initializer("fc.w").copy()
    w[0, 0] = np.nan
    assert sess.run([FAULT_OUTPUT], {"x": _x(2), "fc.w": w})[0]


def test_exact_mode_flags_any_change() -> None:
    m = load(small_cnn())
    g = guard(m, ["conv"], rtol=0.0, atol=0.0)
    assert "Equal" in g.op_histogram()
    sess = make_session(runtime_proto(g.proto, weight_inputs=["conv.w"]), "cpu")
    w = m.initializer("conv.w")
    x = _x(4)
    assert not sess.run([FAULT_OUTPUT], {"x": x, "conv.w": w})[0]
    assert sess.run([FAULT_OUTPUT], {"x": x, "conv.w": flip_bits(w, [3], [0])})[0]  # lowest mantissa bit
    nan = w.copy()
    nan[0, 0, 0, 0] = np.nan
    assert sess.run([FAULT_OUTPUT], {"x": x, "conv.w": nan})[0]


def test_cli_guard_max_loss_picks_fewest_layers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _save(tmp_path, small_cnn())
    data = tmp_path / "d.npz"
    x = _x(24)
    np.savez(data, x=x, y=np.argmax(make_session(runtime_proto(small_cnn()), "cpu").run(None, {"x": x})[0], 1))
    out = tmp_path / "g.onnx"
    rc = main(["guard", str(model), "--max-loss", "0.01", "--criterion", "weight", "--data", str(data),
               "--flips", "4", "--bits", "exponent", "--on", "weights", "--trials", "3", "--repeats", "2",
               "--out", str(out), "--json"])
    assert rc == 0 and out.is_file()
    report = json.loads(capsys.readouterr().out)
    curve = report["curve"]
    k = len(report["guarded"])
    assert curve[str(len(curve) - 1)] == report["clean"]  # every layer checked: no fault
    assert all(report["clean"] - curve[str(j)] <= 0.01 for j in range(k, len(curve)))
    assert k == 0 or report["clean"] - curve[str(k - 1)] > 0.01


def test_full_duplication_compares_an_integer_label_output_exactly() -> None:
    """A model with an int64 label output: the full-duplication baseline compares it exactly (it used to
    refuse it), and the flag stays false on clean inputs."""
    rng = np.random.default_rng(7)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["logits"], name="fc"),
             helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0)]
    m = load(make_model(nodes, {"x": (np.float32, ["N", 8])}, {"label": (np.int64, ["N"]),
                                                                 "logits": (np.float32, ["N", 3])},
                        {"w": rng.normal(size=(8, 3)).astype(np.float32)}))
    dup = full_duplication(m)
    sess = make_session(runtime_proto(dup.proto), "cpu")
    out = sess.run([FAULT_OUTPUT, "label"], {"x": rng.normal(size=(5, 8)).astype(np.float32)})
    assert out[0].dtype == np.bool_ and not out[0]
    assert any(n.op_type == "Equal" for n in dup.proto.graph.node)
