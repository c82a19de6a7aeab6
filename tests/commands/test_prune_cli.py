"""``onnxslice prune``: before/after report, refuses to overwrite MODEL, bad ratios exit 2 writing nothing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "rewrite"))
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
    assert 0.0 <= res["agreement"] <= 1.0
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
