"""sensitivity()/relevance() entry points, bad input, and the rank/bench CLI verbs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from onnx import helper

from onnxslice.cli import main
from onnxslice.errors import DataError, ModelError
from onnxslice.model import load
from onnxslice.sensitivity import LayerScores, UnknownNameError, criteria_names, relevance, sensitivity
from onnxslice.testing import make_model

MOONS = str(Path(__file__).resolve().parents[2] / "models" / "moons" / "vanilla-1000.onnx")


def test_unknown_criterion_and_reduction_list_valid_ones(mlp):
    model, _, x = mlp
    with pytest.raises(UnknownNameError, match=r"valid criteria are: .*weight.*fd.*hsic"):
        sensitivity(model, {"x": x}, "gradcam")
    with pytest.raises(UnknownNameError, match=r"mean, percentile, l1, l2, linf"):
        sensitivity(model, {"x": x}, "weight", "max")
    with pytest.raises(UnknownNameError, match="pred"):
        sensitivity(model, {"x": x}, "fd", target="logit")


def test_model_without_layers_is_refused():
    m = load(make_model([helper.make_node("Relu", ["x"], ["y"], name="r")], {"x": (np.float32, ["N", 3])},
                        {"y": (np.float32, ["N", 3])}))
    with pytest.raises(ModelError, match="no layers"):
        sensitivity(m, {"x": np.zeros((2, 3), np.float32)}, "fd")


@pytest.mark.parametrize("bad", [np.zeros((4, 5), np.float32), np.zeros((4,), np.float32)])
def test_data_of_wrong_shape_is_refused(mlp, bad):
    model, _, _ = mlp
    with pytest.raises(DataError, match="input 'x'"):
        sensitivity(model, {"x": bad}, "fd")


def test_data_needed_and_loss_needs_labels(mlp):
    model, _, x = mlp
    with pytest.raises(DataError, match="needs calibration data"):
        sensitivity(model, None, "fd")
    with pytest.raises(DataError, match="labels"):
        sensitivity(model, {"x": x}, "fd", target="loss")


def test_relevance_shapes_and_scores_roundtrip(mlp, tmp_path):
    model, _, x = mlp
    rel = relevance(model, {"x": x}, "hsic", hsic_masks=8)
    assert {k: v.shape for k, v in rel.items()} == {"L0": (5,), "L1": (4,), "L2": (2,)}
    s = sensitivity(model, {"x": x}, "weight", "percentile", percentile=50)
    assert s.meta["percentile"] == 50 and s.reduction == "percentile"
    p = s.save(tmp_path / "s.json")
    assert LayerScores.load(p).scores == s.scores


def test_samples_limits_the_calibration(mlp):
    model, _, x = mlp
    assert sensitivity(model, {"x": x}, "fd", samples=7).meta["samples"] == 7


def test_every_listed_criterion_runs_on_a_moons_model():
    names = criteria_names()
    assert {"weight", "fd", "hsic"} <= set(names)
    for name in names:
        s = sensitivity(MOONS, "builtin:moons", name, "linf", samples=32, steps=2, noise_samples=2, hsic_masks=4)
        assert len(s.scores) == 4 and all(np.isfinite(v) for v in s.scores.values()), name


def test_cli_rank_prints_ranking_and_writes_scores(tmp_path, capsys):
    out = tmp_path / "scores.json"
    assert main(["rank", MOONS, "--data", "builtin:moons", "-c", "fd", "--samples", "64", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "layer scores: fd / linf" in text and "/head/Gemm" in text
    assert LayerScores.load(out).criterion == "fd"


def test_cli_rank_ground_truth_reports_every_criterion(capsys):
    rc = main(["rank", MOONS, "--data", "builtin:moons", "-c", "weight", "--samples", "32", "--steps", "2",
               "--noise-samples", "2", "--draws", "2", "-g", "N:weights,U:activations", "--json"])
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    assert [g["criterion"] for g in rep["ground_truth"]] == ["groundtruth:N:weights", "groundtruth:U:activations"]
    assert {r["criterion"] for r in rep["agreement"]} == set(criteria_names())
    assert all("N:weights spearman" in r for r in rep["agreement"])


def test_cli_rank_falls_back_to_fd_without_vjp(tmp_path, capsys):
    from onnxslice.opsets import REGISTRY

    op = next(o for o in ("Sinh", "Cosh", "Atan", "Asinh") if REGISTRY.find("vjp", o, "", 17) is None)
    rng = np.random.default_rng(0)
    inits = {"W0": rng.normal(size=(3, 4)).astype(np.float32), "W1": rng.normal(size=(4, 2)).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "W0"], ["h"], name="L0"),
             helper.make_node(op, ["h"], ["s"], name="no_vjp"),  # an op without a VJP rule
             helper.make_node("MatMul", ["s", "W1"], ["y"], name="L1")]
    path = tmp_path / "no_vjp.onnx"
    path.write_bytes(make_model(nodes, {"x": (np.float32, ["N", 3])}, {"y": (np.float32, ["N", 2])},
                                inits).SerializeToString())
    data = tmp_path / "d.npz"
    np.savez(data, x=rng.normal(size=(8, 3)).astype(np.float32))
    assert main(["rank", str(path), "--data", str(data), "-c", "wgrad"]) == 0
    out, err = capsys.readouterr()
    assert "falling back to 'fd'" in err and "layer scores: fd / linf" in out


def test_cli_rank_bad_names_exit_2(capsys, tmp_path):
    assert main(["rank", MOONS, "--data", "builtin:moons", "-c", "nope", "--out", str(tmp_path / "x.json")]) == 2
    assert "valid criteria" in capsys.readouterr().err
    assert main(["rank", MOONS, "--data", "builtin:moons", "-g", "Q:weights"]) == 2
    assert not (tmp_path / "x.json").exists()


@pytest.mark.slow
def test_cli_bench_safer_small(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", "safer", "--per-family", "1", "--families", "vanilla,skip", "--criteria", "weight,fd,grad",
               "--magnitudes", "0.3", "--draws", "2", "--samples", "64", "--workers", "1", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "Table 1" in text and "Table 2" in text and "vanilla" in text
    res = json.loads(out.read_text())
    assert len(res["results"]) == 2 and res["tables"]["table1"][-1]["family"] == "avg"
    # 6 vanilla settings + 3 skip settings, 1 magnitude, 3 criteria, 5 reductions
    assert sum(len(r["cases"]) for r in res["results"]) == (6 + 3) * 3 * 5


def test_gradient_batches_fit_the_memory_budget_and_give_the_same_scores(mlp, monkeypatch):
    """``batch_mb`` lowers the samples per gradient call (a large model's recorded values would not fit);
    the scores are sums over batches, so they do not change beyond float rounding."""
    from onnxslice.sensitivity.context import Context

    model, _, x = mlp
    base = sensitivity(model, {"x": x}, "wgrad", batch_size=64)
    tiny = sensitivity(model, {"x": x}, "wgrad", batch_size=64, batch_mb=1e-4)  # ~100 bytes: one sample a call
    assert tiny.scores.keys() == base.scores.keys()
    np.testing.assert_allclose(list(tiny.scores.values()), list(base.scores.values()), rtol=1e-5)
    monkeypatch.setattr(Context, "_bytes_per_sample", lambda self: 300.0 * 2**20)
    ctx = Context(model, None, "pred", [], batch_size=128)
    assert ctx.gradient_batch() == 3  # 1024 MB / 300 MB
    ctx.options["batch_mb"] = 4096
    assert ctx.gradient_batch() == 13
