"""Agreement between a criterion's layer scores and a ground truth.

``exact_ranking`` is SAfER's metric (the whole order must match); because it is brittle, the rank
correlations ``spearman`` and ``kendall`` (tau-b, ties handled) are reported beside it. Implemented
with numpy; the tests compare them with scipy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from onnxslice.errors import DataError
from onnxslice.scores import LayerScores

__all__ = ["agreement", "exact_ranking", "kendall", "rankdata", "spearman"]


Scores = LayerScores | Mapping[str, float]


def _pair(a: Scores, b: Scores) -> tuple[np.ndarray, np.ndarray]:
    sa = a.scores if isinstance(a, LayerScores) else dict(a)
    sb = b.scores if isinstance(b, LayerScores) else dict(b)
    if set(sa) != set(sb):
        diff = sorted(set(sa) ^ set(sb))
        raise DataError(
            f"the two score sets cover different layers (e.g. {', '.join(diff[:3])}); compare like with like"
        )
    names = list(sa)
    return np.array([sa[n] for n in names], np.float64), np.array([sb[n] for n in names], np.float64)


def rankdata(x: np.ndarray) -> np.ndarray:
    """Average ranks (1-based; ties share the mean rank), like ``scipy.stats.rankdata``."""
    x = np.asarray(x, np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), np.float64)
    xs = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def exact_ranking(a: LayerScores | Mapping[str, float], b: LayerScores | Mapping[str, float]) -> bool:
    """Whether both give the same strict order of layers (ties count as ties on both sides)."""
    x, y = _pair(a, b)
    return bool(np.array_equal(rankdata(x), rankdata(y)))


def spearman(a: LayerScores | Mapping[str, float], b: LayerScores | Mapping[str, float]) -> float:
    """Spearman's rho (Pearson correlation of average ranks); NaN when one side is constant."""
    x, y = _pair(a, b)
    rx, ry = rankdata(x) - (len(x) + 1) / 2.0, rankdata(y) - (len(y) + 1) / 2.0
    den = float(np.sqrt((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / den) if den > 0 else float("nan")


def kendall(a: LayerScores | Mapping[str, float], b: LayerScores | Mapping[str, float]) -> float:
    """Kendall's tau-b (ties corrected, as ``scipy.stats.kendalltau``); NaN when one side is constant."""
    x, y = _pair(a, b)
    dx = np.sign(x[:, None] - x[None, :])
    dy = np.sign(y[:, None] - y[None, :])
    iu = np.triu_indices(len(x), 1)
    sx, sy = dx[iu], dy[iu]
    num = float((sx * sy).sum())
    den = float(np.sqrt(np.count_nonzero(sx) * np.count_nonzero(sy)))
    return num / den if den > 0 else float("nan")


def agreement(criterion: LayerScores | Mapping[str, float], truth: LayerScores | Mapping[str, float]) -> dict[str, Any]:
    """``{"exact": bool, "spearman": rho, "kendall": tau, "top1": same most important layer}``."""
    x, y = _pair(criterion, truth)
    names = list(criterion.scores if isinstance(criterion, LayerScores) else criterion)
    return {
        "exact": exact_ranking(criterion, truth),
        "spearman": spearman(criterion, truth),
        "kendall": kendall(criterion, truth),
        "top1": names[int(np.argmax(x))] == names[int(np.argmax(y))],
    }
