"""``onnxslice report``: the page, the JSON beside it, reuse of saved results, the verdict's statistics."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from onnxslice.cli import main
from onnxslice.report.analyses import agreement_section, spearman_interval, verdict
from onnxslice.sensitivity import LayerScores

REPO = Path(__file__).resolve().parents[2]
LENET = REPO / "models" / "lenet5.onnx"
QUICK = ["--samples", "48", "--gt-draws", "2", "--ratios", "0.3", "--avg-bits", "6", "--repeats", "3",
         "--slice-samples", "2", "--classes", "0,1", "--criteria", "weight,wgrad"]


@pytest.fixture(scope="module")
def lenet_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "lenet5.html"
    assert main(["report", str(LENET), "--data", "builtin:mnist?n=200", "--out", str(out), *QUICK]) == 0
    return out


def test_report_page_is_self_contained(lenet_report: Path) -> None:
    html = lenet_report.read_text("utf-8")
    # works offline: no script, style or image is fetched from anywhere
    assert re.search(r'<(script|link|img)[^>]+(src|href)=', html) is None
    assert "Plotly.newPlot" in html or "Plotly.react" in html
    for key in ("agreement", "sensitivity", "strip", "slices", "prune", "quantize"):
        assert f'id="plot-{key}"' in html
    assert "onnxslice rank " in html and "onnxslice prune " in html  # the commands behind every number


def test_report_saves_every_section_as_json(lenet_report: Path) -> None:
    from onnxslice.model import load

    data_dir = lenet_report.with_name("lenet5_data")
    names = sorted(p.name for p in data_dir.iterdir())
    assert names == sorted(f"{n}.json" for n in ("overview", "sensitivity", "agreement", "slices", "prune",
                                                 "quantize"))
    overview = json.loads((data_dir / "overview.json").read_text())
    assert overview["params"] == load(LENET).num_params
    prune = json.loads((data_dir / "prune.json").read_text())
    assert {r["plan"] for r in prune["rows"]} >= {"uniform", "random"}
    for r in prune["rows"]:
        assert 0 < r["size_ratio"] < 1 and r["latency_ms"] > 0
    sens = json.loads((data_dir / "sensitivity.json").read_text())
    assert set(sens["criteria"]) == {"weight", "wgrad"} and sens["oracle"] is not None
    slices = json.loads((data_dir / "slices.json").read_text())
    assert [c["class"] for c in slices["classes"]] == [0, 1]
    for c in slices["classes"]:
        assert all(0 <= v <= 1 for v in c["synapses_in"]) and max(c["synapses_in"]) > 0


def test_report_reuses_saved_scores_and_profile(tmp_path: Path) -> None:
    prof, scores, out = tmp_path / "p.npz", tmp_path / "w.json", tmp_path / "r.html"
    assert main(["profile", str(LENET), "--data", "builtin:mnist?n=64", "--out", str(prof)]) == 0
    assert main(["rank", str(LENET), "--data", "builtin:mnist?n=48", "--criterion", "wgrad", "--samples", "48",
                 "--out", str(scores)]) == 0
    argv = ["report", str(LENET), "--data", "builtin:mnist?n=64", "--out", str(out), "--profile", str(prof),
            "--scores", str(scores), "--skip", "prune", "--skip", "quantize", *QUICK]
    assert main(argv) == 0
    sens = json.loads((tmp_path / "r_data" / "sensitivity.json").read_text())
    assert "wgrad" not in sens["seconds"] and "weight" in sens["seconds"]  # wgrad reused, weight computed
    saved = LayerScores.load(scores)
    assert sens["criteria"]["wgrad"]["raw"] == [saved.scores[n] for n in sens["layers"]]
    assert json.loads((tmp_path / "r_data" / "prune.json").read_text()) is None


def test_report_never_overwrites_its_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(LENET.read_bytes())
    before = hashlib.sha256(model.read_bytes()).hexdigest()
    assert main(["report", str(model), "--data", "builtin:mnist?n=16", "--out", str(model), *QUICK]) == 2
    assert hashlib.sha256(model.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    assert "--out" in capsys.readouterr().err


def test_spearman_interval_matches_fisher_z() -> None:
    lo, hi = spearman_interval(0.6, 20)
    se = np.sqrt((1 + 0.18) / 17)
    assert lo == pytest.approx(np.tanh(np.arctanh(0.6) - 1.959964 * se), abs=1e-5)
    assert hi == pytest.approx(np.tanh(np.arctanh(0.6) + 1.959964 * se), abs=1e-5)
    assert spearman_interval(0.9, 3) == (-1.0, 1.0)
    assert spearman_interval(0.5, 100)[1] - spearman_interval(0.5, 100)[0] < spearman_interval(0.5, 10)[1] - \
        spearman_interval(0.5, 10)[0]


def test_agreement_section_matches_scipy_and_orders_criteria() -> None:
    rng = np.random.default_rng(0)
    layers = [f"l{i}" for i in range(12)]
    truth = rng.normal(size=12)
    good = truth + 0.1 * rng.normal(size=12)
    bad = rng.normal(size=12)
    scores = {"oracle": LayerScores(dict(zip(layers, truth, strict=True)), "groundtruth:N:weights"),
              "good": LayerScores(dict(zip(layers, good, strict=True)), "good"),
              "bad": LayerScores(dict(zip(layers, bad, strict=True)), "bad")}
    sec = agreement_section(scores)
    assert [r["criterion"] for r in sec["rows"]] == ["good", "bad"]
    for r, v in zip(sec["rows"], (good, bad), strict=True):
        assert r["spearman"] == pytest.approx(stats.spearmanr(v, truth).statistic, abs=1e-4)
        assert r["kendall"] == pytest.approx(stats.kendalltau(v, truth).statistic, abs=1e-4)
    assert sec["verdict"].startswith("trust 'good'")


def test_verdict_is_honest_about_few_layers_and_weak_agreement() -> None:
    row = {"criterion": "wgrad", "spearman": 0.3, "spearman_lo": -0.6, "spearman_hi": 0.9}
    text = verdict([row], 5)
    assert "only 5 layers" in text and "prefer the oracle" in text
    assert agreement_section({})["rows"] == []
