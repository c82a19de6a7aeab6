"""``onnxslice prune --latency / --recover / --report``: measured latency planning from the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from _prune_nets import build

import onnxslice as osl
from onnxslice.cli import main


def _files(tmp_path: Path) -> tuple[Path, Path]:
    proto, _ = build("flatgemm")
    path = tmp_path / "m.onnx"
    onnx.save(proto, str(path))
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((40, 1, 28, 28)).astype(np.float32))
    return path, data


def test_prune_latency_target_plans_measures_and_reports(tmp_path, capsys):
    path, data = _files(tmp_path)
    out, rep = tmp_path / "p.onnx", tmp_path / "r.json"
    rc = main(["prune", str(path), "--latency", "1.0", "--cache", str(tmp_path / "cache"), "--data", str(data),
               "--samples", "16", "--out", str(out), "--report", str(rep), "--repeats", "3", "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    meta = res["plan"]["meta"]
    assert res["plan"]["budget"] == "latency" and meta["latency_target"] == 1.0
    assert meta["predicted_latency"] <= meta["solved_for"] <= 1.0 and "measured_latency" in meta and meta["rounds"]
    assert list((tmp_path / "cache" / "latency").glob("*.json"))  # the table is cached, not beside the model
    assert json.loads(rep.read_text())["ratio"]["latency"] == res["ratio"]["latency"]
    assert osl.load(out).output_names == ["y"]


def test_prune_latency_bad_targets_write_nothing(tmp_path, capsys):
    path, _data = _files(tmp_path)
    out = tmp_path / "p.onnx"
    assert main(["prune", str(path), "--latency", "0.05", "--cache", str(tmp_path / "c"), "--out", str(out),
                 "--repeats", "2"]) == 2
    assert "cannot be reached" in capsys.readouterr().err and not out.exists()
    assert main(["prune", str(path), "--latency", "1.0", "--ratio", "0.95", "--cache", str(tmp_path / "c"),
                 "--out", str(out), "--repeats", "2"]) == 2
    assert "relax" in capsys.readouterr().err and not out.exists()


def test_prune_latency_with_ratio_removes_at_least_the_ratio(tmp_path, capsys, monkeypatch):
    path, _data = _files(tmp_path)
    out = tmp_path / "p.onnx"
    # On this tiny, overhead-bound model real timings under load made every plan "slower" now and then; the
    # ratio constraint is what is under test.
    _fixed_timings(monkeypatch, cut=0.9, measured=0.9)
    assert main(["prune", str(path), "--latency", "1.0", "--ratio", "0.2", "--cache", str(tmp_path / "c"),
                 "--out", str(out), "--repeats", "2", "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)["plan"]["meta"]
    assert meta["min_ratio"] == 0.2 and meta["achieved_ratio"] >= 0.2 and out.exists()


def test_prune_reconstruct_repairs_on_held_out_samples_and_reports(tmp_path, capsys):
    path, data = _files(tmp_path)
    out = tmp_path / "p.onnx"
    rc = main(["prune", str(path), "--ratio", "0.3", "--data", str(data), "--samples", "16", "--reconstruct", "lsq",
               "--reconstruct-samples", "24", "--round-to", "1", "--out", str(out), "--repeats", "2", "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    rep = res["reconstruct"]
    assert rep["method"] == "lsq" and rep["samples"] == 24 and rep["layers"]
    assert all(f["error_after"] <= f["error_before"] for f in rep["layers"])
    before = rep["fidelity_before_reconstruct"]
    assert before["samples"] == 16 and res["fidelity"]["kl"] <= before["kl"]
    assert any(p.key == "onnxslice.passes" and "reconstruct" in p.value for p in osl.load(out).proto.metadata_props)
    assert main(["prune", str(path), "--ratio", "0.3", "--data", str(data), "--samples", "40", "--reconstruct", "bn",
                 "--out", str(tmp_path / "q.onnx")]) == 2
    assert "--reconstruct needs more samples" in capsys.readouterr().err and not (tmp_path / "q.onnx").exists()
    assert main(["prune", str(path), "--ratio", "0.3", "--reconstruct", "lsq", "--out", str(tmp_path / "q.onnx")]) == 2
    assert not (tmp_path / "q.onnx").exists()


def test_prune_recover_distils_and_reports_before_and_after(tmp_path, capsys):
    path, data = _files(tmp_path)
    out = tmp_path / "p.onnx"
    rc = main(["prune", str(path), "--ratio", "0.3", "--data", str(data), "--samples", "16", "--recover", "3",
               "--recover-batch", "8", "--out", str(out), "--repeats", "2", "--json"])
    assert rc == 0
    rec = json.loads(capsys.readouterr().out)["recovery"]
    assert rec["steps"] == 3 and rec["samples"] == 24
    assert rec["fidelity_before_recovery"]["samples"] == 16
    assert main(["prune", str(path), "--ratio", "0.3", "--data", str(data), "--samples", "40", "--recover", "3",
                 "--out", str(tmp_path / "q.onnx")]) == 2
    assert not (tmp_path / "q.onnx").exists()


def _fake_latency(monkeypatch, ratios_of):
    """Replace the round-robin timing: session i of call c measures ratios_of(c, i) of the input's time."""
    import onnxslice.latency as lat

    calls = {"n": 0}

    def fake(sessions, feed, repeats=15, warmup=2):
        c = calls["n"]
        calls["n"] += 1
        rs = [1.0] + [ratios_of(c, i) for i in range(1, len(sessions))]
        return [r * 0.1 for r in rs], rs

    monkeypatch.setattr(lat, "median_ratios", fake)
    return calls


def _fixed_timings(monkeypatch, cut, measured):
    """Deterministic timings: every cut subgraph of the latency table times ``cut`` of its uncut twin, and
    every pruned model ``measured`` of the input."""
    import onnxslice.latency as lat

    monkeypatch.setattr(lat, "quantile_ms",
                        lambda sessions, feed, repeats=15, **kw: [1.0] + [cut] * (len(sessions) - 1))
    _fake_latency(monkeypatch, lambda c, i: measured)


@pytest.mark.speed_gate
def test_default_plan_measured_slower_falls_back_to_full_rounding(tmp_path, capsys, monkeypatch):
    path, _ = _files(tmp_path)
    out = tmp_path / "p.onnx"
    calls = _fake_latency(monkeypatch, lambda c, i: 1.4 if i == 1 else 0.9)  # the rounded alternative is faster
    assert main(["prune", str(path), "--ratio", "0.3", "--out", str(out), "--repeats", "2", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert calls["n"] == 2 and res["fallback"]["used"].startswith("every group rounded")
    assert res["ratio"]["latency"] == 0.9 and "slower_than_input" not in res
    kept = osl.load(out)
    assert all(d % 16 == 0 or d == full for d, full in [(kept.initializer("f1.weight").shape[0], 32)])


@pytest.mark.speed_gate
def test_default_plan_slower_every_way_writes_nothing(tmp_path, capsys, monkeypatch):
    path, _ = _files(tmp_path)
    out = tmp_path / "p.onnx"
    _fake_latency(monkeypatch, lambda c, i: 1.3)
    assert main(["prune", str(path), "--ratio", "0.3", "--out", str(out), "--repeats", "2"]) == 2
    err = capsys.readouterr().err
    assert "nothing written" in err and len(err.strip().splitlines()) == 1 and not out.exists()
    # an explicit --round-to is the user's choice: written, with a warning
    assert main(["prune", str(path), "--ratio", "0.3", "--round-to", "1", "--out", str(out), "--repeats", "2"]) == 0
    assert "SLOWER" in capsys.readouterr().err and out.exists()


def test_prune_latency_greedy_search_plans_one_cut_at_a_time(tmp_path, capsys, monkeypatch):
    path, data = _files(tmp_path)
    out = tmp_path / "p.onnx"
    _fixed_timings(monkeypatch, cut=0.7, measured=0.8)
    rc = main(["prune", str(path), "--latency", "0.8", "--search", "greedy", "--data", str(data), "--samples", "16",
               "--cache", str(tmp_path / "c"), "--out", str(out), "--repeats", "2", "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    meta = res["plan"]["meta"]
    assert meta["importance"] == "greedy, re-measured damage" and meta["steps"]
    assert meta["predicted_latency"] <= 0.8 + 1e-9 and meta["removed_params"] > 0
    assert all(s["damage"] >= 0 for s in meta["steps"]) and out.exists()
    assert np.isfinite(res["fidelity"]["kl"])


def test_prune_latency_greedy_search_needs_data_and_no_ratio(tmp_path, capsys):
    path, data = _files(tmp_path)
    out = tmp_path / "p.onnx"
    assert main(["prune", str(path), "--latency", "0.8", "--search", "greedy", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--search greedy" in err and len(err.strip().splitlines()) == 1 and not out.exists()
    assert main(["prune", str(path), "--latency", "0.8", "--ratio", "0.2", "--search", "greedy", "--data", str(data),
                 "--out", str(out)]) == 2
    assert "drop --ratio" in capsys.readouterr().err and not out.exists()
