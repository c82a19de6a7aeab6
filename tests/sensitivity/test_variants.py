"""The SAfER benchmark variants (issue 18): per-sample gradients against finite differences, the signed
reduction, the block-layer subset, the variant cases and the McNemar test."""

from __future__ import annotations

import numpy as np
import pytest
from _sens_helpers import fd_grads, forward

from onnxslice.sensitivity.context import Context
from onnxslice.sensitivity.reductions import UnknownNameError
from onnxslice.sensitivity.variants import (
    VARIANTS,
    block_layers,
    mcnemar,
    per_sample_relevance,
    reduce_signed,
    variant_cases,
    variant_tables,
)

pytest.importorskip("onnxslice.grad")


@pytest.mark.parametrize("times_weight", [False, True])
def test_per_sample_relevance_matches_finite_differences(mlp, times_weight):
    model, w, x = mlp
    ctx = Context.build(model, {"x": x})
    rel = per_sample_relevance(ctx, times_weight, chunk=7)  # chunks that do not divide the 40 samples
    g = fd_grads(w, x, forward(w, x).argmax(1))
    for i in range(3):
        wi = np.abs(w[f"W{i}"].astype(np.float64)) if times_weight else 1.0
        ref = (np.abs(g[f"W{i}"]) * wi).mean(0)
        np.testing.assert_allclose(rel[f"L{i}"], ref, rtol=2e-3, atol=2e-5 * max(1.0, float(ref.max())))
        assert np.all(rel[f"L{i}"] >= np.abs(g[f"W{i}"].mean(0) * wi) - 1e-6)  # E|g| >= |E g|


def test_reduce_signed():
    a = np.array([[-3.0, 1.0], [2.0, np.nan]])
    flat = np.array([-3.0, 1.0, 2.0, 0.0])
    assert reduce_signed(a, "linf") == 2.0 and reduce_signed(a, "mean") == pytest.approx(0.0)
    assert reduce_signed(a, "l1") == pytest.approx(0.0) and reduce_signed(a, "l2") == pytest.approx(np.sqrt(14.0))
    assert reduce_signed(a, "percentile") == pytest.approx(np.percentile(flat, 90))
    with pytest.raises(UnknownNameError):
        reduce_signed(a, "max")
    with pytest.raises(ValueError):
        reduce_signed(np.array([]))


def test_block_layers():
    names = ["/stem/Gemm", "/blocks.0/Gemm", "/blocks.1/q/MatMul", "/hidden.0/Gemm", "/head/Gemm", "/embed/Gemm"]
    assert block_layers(names) == ["/blocks.0/Gemm", "/blocks.1/q/MatMul", "/hidden.0/Gemm"]


def _result():
    layers = ["/stem/Gemm", "/blocks.0/Gemm", "/blocks.1/Gemm", "/head/Gemm"]
    good = dict(zip(layers, [1.0, 4.0, 3.0, 2.0], strict=True))
    crit = {"abs": {r: good for r in ("mean", "percentile", "l1", "l2", "linf")},
            "signed": {r: dict(zip(layers, [4.0, 1.0, 2.0, 3.0], strict=True))
                       for r in ("mean", "percentile", "l1", "l2", "linf")}}
    # the head is wrong in the truth: only the blocks' order matches
    truth = [{"noise": "U", "on": "weights", "magnitude": m,
              "scores": dict(zip(layers, [1.0, 4.0, 3.0, 5.0], strict=True))} for m in (0.1, 0.2, 0.3)]
    return {"model": "skip-1.onnx", "family": "skip", "layers": layers, "truth": truth,
            "criteria": {"grad": crit, "grad|ps": crit, "weight": crit}}


def test_variant_cases():
    r = _result()
    base = variant_cases(r, VARIANTS["baseline"])
    assert {c["magnitude"] for c in base} == {0.1, 0.3}  # 0.2 only in the full range
    assert {c["criterion"] for c in base} == {"grad", "weight"} and not any(c["exact"] for c in base)
    blocks = variant_cases(r, VARIANTS["layers=blocks"])
    assert all(c["exact"] for c in blocks) and len(blocks) == len(base)
    assert len(variant_cases(r, VARIANTS["magnitudes=full"])) == 3 * len(base) // 2
    assert not any(c["exact"] for c in variant_cases(r, VARIANTS["sign=signed"]))
    tabs = variant_tables([r], ["grad", "weight"])
    assert tabs["layers=blocks"]["exact % (linf, all criteria)"] == 100.0
    assert tabs["baseline"]["exact % (linf, all criteria)"] == 0.0
    assert tabs["layers=blocks"]["vs baseline (paired, linf)"]["a_only"] == 4
    assert tabs["layers=blocks"]["chance % (random order)"] == 50.0  # 2 blocks
    assert tabs["baseline"]["chance % (random order)"] == pytest.approx(100 / 24)


def test_mcnemar_against_binomial():
    from scipy.stats import binomtest

    a = [True] * 9 + [False] * 2 + [True] * 5
    b = [False] * 9 + [True] * 2 + [True] * 5
    res = mcnemar(a, b)
    assert (res["a_only"], res["b_only"]) == (9, 2)
    assert res["p"] == pytest.approx(binomtest(9, 11, 0.5).pvalue)
    assert mcnemar([True], [True])["p"] == 1.0


def test_evaluate_model_blocks_only_ranks_the_sampled_blocks():
    from pathlib import Path

    from onnxslice.sensitivity.benchmark import evaluate_model

    path = Path(__file__).resolve().parents[2] / "models" / "moons" / "skip-2000.onnx"
    res = evaluate_model(str(path), ["weight"], magnitudes=(0.3,), draws=2, samples=32, layers="blocks")
    assert res["layers"] == 3  # blocks.0-2 of stem, 3 blocks, head
    assert len(res["cases"]) == 3 * 5  # 3 skip settings x 1 magnitude x 5 reductions
    full = evaluate_model(str(path), ["weight"], magnitudes=(0.3,), draws=2, samples=32)
    assert full["layers"] == 5
    with pytest.raises(UnknownNameError):
        evaluate_model(str(path), ["weight"], magnitudes=(0.3,), draws=2, samples=32, layers="heads")
