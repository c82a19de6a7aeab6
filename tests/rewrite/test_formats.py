"""Deployment formats: QDQ with float layers, float16, MatMulNBits, the measured choice, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from _quant_models import conv_net, images, matmul_net

import onnxslice as osl
from onnxslice.cli import main
from onnxslice.errors import PlanError
from onnxslice.rewrite import formats
from onnxslice.rewrite.fidelity import fidelity


@pytest.fixture(scope="module")
def net():
    return osl.load(conv_net())


def _float_weight_inputs(q, node_name):
    inits = {t.name for t in q.proto.graph.initializer}
    node = next(n for n in q.proto.graph.node if n.name == node_name)
    return [i for i in node.input[1:2] if i in inits]


def test_qdq_quantizes_activations_and_keeps_excluded_layers_float(net):
    b = formats.QdqBuilder(net, images(64))
    try:
        q = formats.convert(net, "qdq", builder=b)
        kinds = [n.op_type for n in q.proto.graph.node]
        assert "QuantizeLinear" in kinds and "DequantizeLinear" in kinds
        assert _float_weight_inputs(q, "conv2") == []  # its weight comes through a DequantizeLinear
        q2 = formats.convert(net, "qdq", exclude=["conv2"], builder=b)
        assert _float_weight_inputs(q2, "conv2")  # kept float: reads its float initializer
        meta = {p.key: p.value for p in q2.proto.metadata_props}
        assert json.loads(meta["onnxslice.plan"])["layers"]["conv2"] == "fp32"
        f = fidelity(q, net, images(64, seed=5))
        assert f.top1_agreement >= 0.9 and f.rel_error < 0.1
    finally:
        b.close()


def test_plan_float_layers_stops_at_the_goal(net):
    b = formats.QdqBuilder(net, images(32))
    try:
        order = b.layers
        easy = formats.plan_float_layers(b, order, goal=0.0)
        assert easy.exclude == [] and easy.met
        hard = formats.plan_float_layers(b, order, goal=1.01, max_float=2)
        assert not hard.met and [t["float_layers"] for t in hard.trials] == [0, 1, 2]
    finally:
        b.close()


def test_fp16_graph_runs_close_to_float(net):
    q = formats.convert(net, "fp16")
    onnx.checker.check_model(q.proto, full_check=True)
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in q.proto.graph.initializer)
    f = fidelity(q, net, images(32, seed=3))
    assert f.rel_error < 1e-2


@pytest.mark.parametrize("reduce_range", [True, False])
def test_dynamic_reduce_range_gives_7_bit_weights_and_is_recorded(reduce_range):
    """7-bit weights where onnxruntime's uint8 x int8 kernels saturate (x86 without VNNI); the default
    follows this CPU (onnxslice.cpu.int8_saturates), an explicit choice wins and is recorded."""
    from onnx import numpy_helper

    mm = osl.load(matmul_net())
    b = formats.DynamicBuilder(mm, reduce_range=reduce_range)
    try:
        q = formats.convert(mm, "dynamic", builder=b)
    finally:
        b.close()
    ints = [numpy_helper.to_array(t) for t in q.proto.graph.initializer if t.data_type == onnx.TensorProto.INT8
            and len(t.dims) == 2]
    assert ints
    top = max(int(np.abs(w.astype(np.int32)).max()) for w in ints)
    assert (top <= 64) if reduce_range else (top == 127)
    plan = json.loads({p.key: p.value for p in q.proto.metadata_props}["onnxslice.plan"])
    assert plan["meta"]["reduce_range"] is reduce_range
    auto = formats.DynamicBuilder(mm)
    try:
        assert auto.reduce_range is formats.int8_saturates()
    finally:
        auto.close()


def test_nbits_emits_matmulnbits_and_unknown_formats_fail(net):
    mm = osl.load(matmul_net())
    q = formats.convert(mm, "nbits", block_size=16)
    assert "MatMulNBits" in {n.op_type for n in q.proto.graph.node}
    with pytest.raises(PlanError, match="format"):
        formats.convert(net, "int3")


def test_dynamic_quantizes_matmuls_at_run_time_and_keeps_excluded_layers_float():
    mm = osl.load(matmul_net())
    x = np.random.default_rng(4).normal(0, 1, (64, 64)).astype(np.float32)
    assert formats.matmul_dominated(mm)
    b = formats.DynamicBuilder(mm, x)
    try:
        assert b.layers == ["mm1", "mm2"]
        q = formats.convert(mm, "dynamic", builder=b)
        kinds = {n.op_type for n in q.proto.graph.node}
        assert "DynamicQuantizeLinear" in kinds and "MatMulInteger" in kinds
        q2 = formats.convert(mm, "dynamic", exclude=["mm2"], builder=b)
        assert "w2" in {t.name for t in q2.proto.graph.initializer}  # mm2 reads its float weight
        meta = {p.key: p.value for p in q2.proto.metadata_props}
        assert json.loads(meta["onnxslice.plan"])["layers"]["mm2"] == "fp32"
        f = fidelity(q, mm, x)
        assert f.rel_error < 0.05
        # the planner drives it like QDQ: a goal it cannot reach keeps layers float, in order
        hard = formats.plan_float_layers(b, ["mm2", "mm1"], goal=1.01, max_float=1)
        assert hard.exclude == ["mm2"] or hard.exclude == []
        assert [t["float_layers"] for t in hard.trials] == [0, 1]
    finally:
        b.close()
    with pytest.raises(PlanError, match="quantized no layer"):
        formats.convert(mm, "dynamic", exclude=["mm1", "mm2"])


def test_pick_prefers_the_fastest_format_meeting_the_goal():
    rows = [{"format": "fp32", "latency": 1.0, "top1_agreement": 1.0, "kl": 0.0, "rel_error": 0.0},
            {"format": "qdq", "latency": 0.5, "top1_agreement": 0.95, "kl": 0.1, "rel_error": 0.1},
            {"format": "weight", "latency": 0.9, "top1_agreement": 1.0, "kl": 0.0, "rel_error": 0.01},
            {"format": "nbits", "latency": 1.5, "top1_agreement": 1.0, "kl": 0.0, "rel_error": 0.01}]
    assert formats.pick(rows, 0.01) == ("weight", True)
    assert formats.pick(rows, 0.1) == ("qdq", True)
    assert formats.pick([rows[0], rows[1]], 0.01) == ("qdq", False)
    assert formats.pick([rows[0], rows[3]], 0.01) == ("fp32", False)


def test_quantize_cli_format_auto_writes_model_and_report(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(conv_net(), str(path))
    data = tmp_path / "d.npz"
    np.savez(data, x=images(48))
    out, rep = tmp_path / "q.onnx", tmp_path / "r.json"
    rc = main(["quantize", str(path), "--data", str(data), "--out", str(out), "--report", str(rep), "--repeats", "3",
               "--device", "cpu", "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["format"] in ("qdq", "weight", "nbits") and out.is_file()
    assert {r["format"] for r in res["rows"]} >= {"fp32", "qdq", "weight"}
    assert json.loads(rep.read_text())["format"] == res["format"]
    q = osl.load(out)
    assert q.output_names == ["y"]
    assert res["rows"][0]["float_params"] == osl.load(path).num_params
    assert all(0 <= r["float_params"] <= res["rows"][0]["float_params"] and r["bytes"] > 0 for r in res["rows"])
    stamped = json.loads({p.key: p.value for p in q.proto.metadata_props}["onnxslice.quantize_report"])
    assert stamped["format"] == res["format"] and stamped["before"]["format"] == "fp32"
    assert res["fidelity_on"] == "the calibration samples"
    assert stamped["after"]["latency"] == next(r["latency"] for r in res["rows"] if r["format"] == res["format"])


def test_quantize_cli_format_measures_fidelity_on_held_out_samples(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(conv_net(), str(path))
    data = tmp_path / "d.npz"
    np.savez(data, x=images(40))
    out = tmp_path / "q.onnx"
    rc = main(["quantize", str(path), "--format", "weight", "--data", str(data), "--samples", "24", "--out", str(out),
               "--repeats", "2", "--json"])
    res = json.loads(capsys.readouterr().out)
    assert rc == 0 and res["fidelity_on"] == "16 held-out samples of --data"
    w = osl.load(out)
    want = fidelity(w, osl.load(path), images(40)[24:])
    assert res["rows"][1]["kl"] == pytest.approx(want.kl, rel=1e-5, abs=1e-12)


def test_quantize_cli_dynamic_reduce_range_is_the_users_choice(tmp_path, capsys, monkeypatch):
    path = tmp_path / "m.onnx"
    onnx.save(matmul_net(), str(path))
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(0).normal(0, 1, (32, 64)).astype(np.float32))
    for flag, want in (("on", True), ("off", False)):
        out = tmp_path / f"q_{flag}.onnx"
        rc = main(["quantize", str(path), "--format", "dynamic", "--data", str(data), "--accuracy-goal", "1",
                   "--reduce-range", flag, "--repeats", "1", "--out", str(out), "--json"])
        res = json.loads(capsys.readouterr().out)
        assert rc == 0 and res["dynamic_reduce_range"] is want
        meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
        assert json.loads(meta["onnxslice.plan"])["meta"]["reduce_range"] is want
    monkeypatch.setattr(formats, "int8_saturates", lambda: True)  # auto on a saturating CPU says what it did
    rc = main(["quantize", str(path), "--format", "dynamic", "--data", str(data), "--accuracy-goal", "1",
               "--repeats", "1", "--out", str(tmp_path / "q_auto.onnx")])
    assert rc == 0 and "weights quantized to 7 bits" in capsys.readouterr().out


def test_quantize_cli_format_bad_paths_write_nothing(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(conv_net(), str(path))
    out = tmp_path / "q.onnx"
    assert main(["quantize", str(path), "--format", "qdq", "--out", str(out)]) == 2
    assert "needs --data" in capsys.readouterr().err and not out.exists()
    assert main(["quantize", str(path), "--format", "qdq", "--avg-bits", "6", "--out", str(out)]) == 2
    assert not out.exists()
    assert main(["quantize", str(path), "--format", "auto", "--out", str(path)]) == 2
