"""The resumable SAfER moons benchmark: Wilson intervals, the ground-truth ceiling, the per-model cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from onnxslice.sensitivity import UnknownNameError, benchmark
from onnxslice.sensitivity.benchmark import SAFER_TABLE1, SAFER_TABLE1_AVG, run_sampled, tables, wilson

ROOT = Path(__file__).resolve().parents[2]


def test_wilson_interval_matches_closed_form_values():
    lo, hi = wilson(5, 10)
    assert lo == pytest.approx(23.659, abs=1e-3) and hi == pytest.approx(76.341, abs=1e-3)
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(27.753, abs=1e-3)
    assert wilson(10, 10)[1] == pytest.approx(100.0)
    assert all(v != v for v in wilson(0, 0))


def test_paper_table1_rows_average_to_its_last_row():
    for crit, avg in SAFER_TABLE1_AVG.items():
        mean = sum(row[crit] for row in SAFER_TABLE1.values()) / len(SAFER_TABLE1)
        assert abs(mean - avg) <= 1.0, crit


@pytest.mark.slow
def test_run_sampled_caches_each_model_and_resumes(tmp_path, monkeypatch):
    kw = {"builder": ROOT / "models" / "moons.py", "committed": ROOT / "models" / "moons", "cache": tmp_path,
          "workers": 1, "magnitudes": [0.3], "draws": 2, "samples": 32, "progress": False}
    first = run_sampled(["vanilla"], 1, ["weight"], **kw)
    assert [r["model"] for r in first] == ["vanilla-1000.onnx"]
    assert len(first[0]["ceiling"]) == 6  # one per vanilla setting: the second ground-truth seed
    files = list(tmp_path.glob("*/vanilla-0.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["model"] == "vanilla-1000.onnx"

    def boom(*a, **k):
        raise AssertionError("a cached model was evaluated again")

    monkeypatch.setattr(benchmark, "evaluate_model", boom)
    again = run_sampled(["vanilla"], 1, ["weight"], **kw)
    assert again == first
    tabs = tables(again, ["weight"])
    row = tabs["table1"][0]
    assert row["family"] == "vanilla" and "ceiling" in row and row["paper"] == {"weight": 25}
    assert tabs["correlations"][0]["95% CI"].startswith("[")
    with pytest.raises(AssertionError, match="evaluated again"):  # other settings: another cache entry
        run_sampled(["vanilla"], 1, ["weight"], **{**kw, "draws": 3})


def test_run_sampled_order_index_interleaves_families(tmp_path, monkeypatch):
    seen = []

    def fake(shared, unit, unit_seed):
        seen.append(unit)
        return {"family": unit[0], "index": unit[1], "cases": []}

    monkeypatch.setattr(benchmark, "_run_sampled_one", fake)
    kw = {"builder": ROOT / "models" / "moons.py", "committed": ROOT / "models" / "moons", "cache": tmp_path,
          "workers": 1, "progress": False}
    run_sampled(["vanilla", "skip"], 2, ["weight"], order="index", **kw)
    assert seen == [("vanilla", 0), ("skip", 0), ("vanilla", 1), ("skip", 1)]
    seen.clear()
    run_sampled(["vanilla", "skip"], 2, ["weight"], **kw)
    assert seen == [("vanilla", 0), ("vanilla", 1), ("skip", 0), ("skip", 1)]
    seen.clear()
    run_sampled(["vanilla", "skip"], 2, ["weight"], order="index", reverse=True, **kw)  # a second worker's order
    assert seen == [("skip", 1), ("vanilla", 1), ("skip", 0), ("vanilla", 0)]
    with pytest.raises(UnknownNameError, match="family, index"):
        run_sampled(["vanilla"], 1, ["weight"], order="random", **kw)
