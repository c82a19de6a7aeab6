"""Agreement metrics against scipy."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from onnxslice.errors import DataError
from onnxslice.sensitivity import LayerScores, agreement, exact_ranking, kendall, spearman
from onnxslice.sensitivity.agreement import rankdata


def _scores(values, names=None):
    names = names or [f"l{i}" for i in range(len(values))]
    return LayerScores(dict(zip(names, map(float, values), strict=True)), "test")


@pytest.mark.parametrize("seed", range(6))
def test_spearman_kendall_match_scipy(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 4, 9).astype(float) if seed % 2 else rng.normal(size=9)  # odd seeds: ties
    b = rng.normal(size=9) + 0.5 * a
    assert spearman(_scores(a), _scores(b)) == pytest.approx(scipy.stats.spearmanr(a, b).statistic)
    assert kendall(_scores(a), _scores(b)) == pytest.approx(scipy.stats.kendalltau(a, b).statistic)
    np.testing.assert_allclose(rankdata(a), scipy.stats.rankdata(a))


def test_exact_ranking_needs_whole_order():
    truth = _scores([3, 2, 1])
    assert exact_ranking(_scores([30, 5, 0.1]), truth)
    assert not exact_ranking(_scores([30, 0.1, 5]), truth)
    res = agreement(_scores([30, 0.1, 5]), truth)
    assert res["top1"] and not res["exact"] and res["spearman"] == pytest.approx(0.5)


def test_constant_side_gives_nan():
    assert np.isnan(spearman(_scores([1, 1, 1]), _scores([1, 2, 3])))
    assert np.isnan(kendall(_scores([1, 1, 1]), _scores([1, 2, 3])))


def test_agreement_refuses_different_layers():
    with pytest.raises(DataError, match="different layers"):
        spearman(_scores([1, 2]), _scores([1, 2], ["a", "b"]))
