"""``onnxslice prune``: before/after report, refuses to overwrite MODEL, bad ratios exit 2 writing nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from _prune_nets import build

import onnxslice as osl
from onnxslice.cli import main


def _model(tmp_path: Path) -> tuple[Path, Path]:
    proto, _x = build("flatgemm")
    path = tmp_path / "m.onnx"
    onnx.save(proto, str(path))
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((32, 1, 28, 28)).astype(np.float32))
    return path, data


def test_prune_cli_reports_and_writes(tmp_path, capsys):
    path, data = _model(tmp_path)
    out = tmp_path / "p.onnx"
    rc = main(["prune", str(path), "--ratio", "0.3", "--data", str(data), "--out", str(out), "--repeats", "3",
               "--json", "--save-plan", str(tmp_path / "plan.json")])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["after"]["params"] < res["before"]["params"] and res["after"]["macs"] < res["before"]["macs"]
    assert 0.0 <= res["fidelity"]["top1_agreement"] <= 1.0 and res["fidelity"]["samples"] == 32
    assert osl.load(out).num_params == res["after"]["params"]
    rc = main(["prune", str(path), "--plan", str(tmp_path / "plan.json"), "--out", str(tmp_path / "q.onnx"),
               "--repeats", "2"])
    assert rc == 0 and "parameters" in capsys.readouterr().out


def test_prune_cli_refuses_overwrite_and_bad_ratio(tmp_path, capsys):
    path, _ = _model(tmp_path)
    before = path.read_bytes()
    assert main(["prune", str(path), "--ratio", "0.3", "--out", str(path)]) == 2
    assert path.read_bytes() == before
    assert main(["prune", str(path), "--ratio", "1.5", "--out", str(tmp_path / "x.onnx")]) == 2
    assert not (tmp_path / "x.onnx").exists()
    assert "[0, 1)" in capsys.readouterr().err


ROOT = Path(__file__).resolve().parents[2]
from models import zoo  # noqa: E402

MNIST = "builtin:mnist?split=test"


def test_prune_cli_sensitivity_budget_computes_wgrad(tmp_path, capsys):
    out = tmp_path / "p.onnx"
    rc = main(["prune", str(zoo.path("lenet5")), "--ratio", "0.3", "--budget", "sensitivity", "--data", MNIST,
               "--samples", "32", "--out", str(out), "--repeats", "2", "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    meta = res["plan"]["meta"]
    assert res["plan"]["budget"] == "sensitivity" and meta["criterion"] == "wgrad"
    assert abs(meta["achieved_ratio"] - 0.3) <= 0.02
    shares = meta["group_share"]
    assert len(set(shares.values())) > 1  # the criterion really shaped the budget
    fid = res["fidelity"]
    assert fid["samples"] == 32 and fid["accuracy"] is not None and fid["ref_accuracy"] > 0.9
    assert osl.load(out).num_params == res["after"]["params"]


def test_prune_cli_sensitivity_without_data_exits_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "p.onnx"
    rc = main(["prune", str(zoo.path("lenet5")), "--ratio", "0.3", "--budget", "sensitivity", "--out", str(out)])
    assert rc == 2 and not out.exists()
    assert "--data" in capsys.readouterr().err


def test_prune_cli_slice_budget_from_targets_and_from_slice_file(tmp_path, capsys):
    model = str(zoo.path("lenet5"))
    out = tmp_path / "p.onnx"
    rc = main(["prune", model, "--ratio", "0.3", "--budget", "slice", "--mode", "unstructured", "--data", MNIST,
               "--target", "class:0,1", "--samples", "16", "--out", str(out), "--repeats", "2", "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["target_classes"] == [0, 1] and res["target_fidelity"]["accuracy"] is not None
    assert res["plan"]["meta"]["synapse_scores"] == "slice CONTRIB"
    # the chain of verbs: profile -> slice -> prune --slice (structured: channels by summed |CONTRIB|)
    prof, sl = tmp_path / "prof.npz", tmp_path / "s.npz"
    assert main(["profile", model, "--data", MNIST, "--out", str(prof)]) == 0
    assert main(["slice", model, "--profile", str(prof), "--data", MNIST, "--samples", "0:8", "--target", "class:3",
                 "--out", str(sl), "--workers", "1"]) == 0
    capsys.readouterr()
    rc = main(["prune", model, "--ratio", "0.3", "--budget", "slice", "--slice", str(sl), "--out",
               str(tmp_path / "q.onnx"), "--repeats", "2", "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["plan"]["meta"]["channel_score"] == "slice CONTRIB" and res["after"]["params"] < res["before"]["params"]


def test_prune_cli_slice_budget_bad_inputs_exit_2(tmp_path, capsys):
    path, _data = _model(tmp_path)
    out = tmp_path / "p.onnx"
    assert main(["prune", str(path), "--ratio", "0.3", "--budget", "slice", "--out", str(out)]) == 2
    assert "--slice" in capsys.readouterr().err
    # a slice of LeNet-5 used on another model
    model = str(zoo.path("lenet5"))
    prof, sl = tmp_path / "prof.npz", tmp_path / "s.npz"
    assert main(["profile", model, "--data", MNIST, "--out", str(prof)]) == 0
    assert main(["slice", model, "--profile", str(prof), "--data", MNIST, "--samples", "0:2", "--out", str(sl),
                 "--workers", "1"]) == 0
    capsys.readouterr()
    assert main(["prune", str(path), "--ratio", "0.3", "--budget", "slice", "--slice", str(sl), "--out", str(out)]) == 2
    assert "another model" in capsys.readouterr().err
    assert not out.exists()


def test_prune_cli_slice_accumulation_follows_the_mode(tmp_path, capsys, monkeypatch):
    # channels rank better by NNSlicer's signed CONTRIB, single weights by the count of significant uses
    import onnxslice.plans.prune_plan as prune_plan

    seen: list[str] = []
    real = prune_plan.class_slice

    def spy(*args, **kwargs):
        seen.append(kwargs["accumulate"])
        return real(*args, **kwargs)

    monkeypatch.setattr(prune_plan, "class_slice", spy)
    model = str(zoo.path("lenet5"))
    for mode in ("structured", "unstructured"):
        rc = main(["prune", model, "--ratio", "0.3", "--budget", "slice", "--mode", mode, "--data", MNIST,
                   "--target", "class:0,1", "--samples", "8", "--out", str(tmp_path / f"{mode}.onnx"),
                   "--repeats", "1", "--json"])
        assert rc == 0
    assert seen == ["signed", "abs"]
    capsys.readouterr()
