"""``onnxslice quantize``: prints precision, size and fidelity; a bad plan or budget writes nothing."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from _quant_models import conv_net, images

from onnxslice.cli import main
from onnxslice.model import load


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    onnx.save_model(conv_net(), str(d / "net.onnx"))
    np.savez(d / "data.npz", x=images(48), y=np.arange(48) % 10)
    return d


@pytest.mark.parametrize(("criterion", "planned_by"), [([], "wgrad/linf"), (["--criterion", "oracle"], "oracle:int4"),
                                                    (["--criterion", "ig", "--steps", "2"], "ig/linf")])
def test_cli_quantize_prints_plan_size_and_fidelity(files, capsys, criterion, planned_by):
    out = files / "q.onnx"
    rc = main(["quantize", str(files / "net.onnx"), "--avg-bits", "6", "--choices", "int4,int8", *criterion,
               "--data", str(files / "data.npz"), "--out", str(out), "--samples", "32"])
    text = capsys.readouterr().out
    assert rc == 0 and out.is_file()
    for word in ("precision", "int4", "int8", "float parameters", "file size", "latency", "top1_agreement", "before",
                 "after", f"planned by: {planned_by}"):
        assert word in text
    q = load(out)
    assert q.output_names == ["y"] and out.stat().st_size < (files / "net.onnx").stat().st_size / 3
    stamped = json.loads({p.key: p.value for p in q.proto.metadata_props}["onnxslice.quantize_report"])
    assert stamped["float_params_before"] == load(files / "net.onnx").num_params
    assert 0 <= stamped["float_params_after"] < stamped["float_params_before"]
    assert stamped["latency_ratio"] > 0 and stamped["fidelity_after"]["top1_agreement"] is not None


def test_cli_format_qdq_percentile_and_measured_float_layers(files, capsys):
    out = files / "fq.onnx"
    rc = main(["quantize", str(files / "net.onnx"), "--format", "qdq", "--calibrate-method", "percentile",
               "--criterion", "qdq", "--float-layers", "1", "--data", str(files / "data.npz"), "--out", str(out),
               "--repeats", "2", "--json"])
    res = json.loads(capsys.readouterr().out)
    assert rc == 0 and res["format"] == "qdq" and len(res["float_layers"]) == 1
    assert res["sensitivity"].startswith("qdq (measured")
    layers = json.loads({p.key: p.value for p in load(out).proto.metadata_props}["onnxslice.plan"])["layers"]
    assert [n for n, p in layers.items() if p == "fp32"] == res["float_layers"]


def test_cli_user_plan_overrides(files, capsys):
    plan = files / "plan.json"
    plan.write_text(json.dumps({"kind": "quantize", "layers": {"fc1": "int4", "conv1": "fp16"}}))
    out = files / "p.onnx"
    rc = main(["quantize", str(files / "net.onnx"), "--avg-bits", "8", "--plan", str(plan), "--out", str(out),
               "--json"])
    res = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert {r["layer"]: r["precision"] for r in res["layers"]} == {
        "conv1": "fp16", "conv2": "fp32", "deconv": "fp32", "fc1": "int4", "fc2": "fp32", "head": "fp32"}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--plan", "PLAN"], "unknown layer"),
        (["--avg-bits", "3", "--data", "DATA"], "no plan meets"),
        (["--avg-bits", "6", "--criterion", "oracle"], "needs --data"),
        (["--avg-bits", "6"], "planning by 'wgrad' needs --data"),
        (["--avg-bits", "6", "--criterion", "nope", "--data", "DATA"], "unknown criterion"),
    ],
)
def test_cli_bad_plan_or_budget_exits_2_and_writes_nothing(files, capsys, extra, message):
    plan = files / "bad.json"
    plan.write_text(json.dumps({"kind": "quantize", "layers": {"nope": "int8"}}))
    extra = [str(plan) if e == "PLAN" else str(files / "data.npz") if e == "DATA" else e for e in extra]
    out = files / "never.onnx"
    rc = main(["quantize", str(files / "net.onnx"), "--out", str(out), *extra])
    assert rc == 2 and message in capsys.readouterr().err
    assert not out.exists()


def test_cli_refuses_to_overwrite_input(files, capsys):
    src = files / "net.onnx"
    before = src.read_bytes()
    rc = main(["quantize", str(src), "--avg-bits", "8", "--choices", "int8", "--scores", "x", "--out", str(src)])
    assert rc == 2 and src.read_bytes() == before
