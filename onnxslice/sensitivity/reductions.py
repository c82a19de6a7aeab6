"""psi: reductions of a per-weight relevance array to one layer score (SAfER section 2.2).

Every reduction works on the absolute values of the relevance, so a sign convention of a criterion
never flips a layer's rank. Reductions are plain functions applied to any relevance array; they know
nothing about criteria (composition, not subclassing).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from onnxslice.errors import OnnxSliceError

__all__ = ["REDUCTIONS", "UnknownNameError", "check_name", "reduce"]


class UnknownNameError(OnnxSliceError, ValueError):
    """An unknown criterion, reduction, noise or target name; the message lists the valid ones."""


def check_name(kind: str, name: str, valid: tuple[str, ...] | list[str], plural: str = "") -> str:
    """Return ``name`` when it is one of ``valid``.

    Raises:
        UnknownNameError: naming the valid choices.
    """
    if name not in valid:
        raise UnknownNameError(f"unknown {kind} '{name}'; valid {plural or kind + 's'} are: {', '.join(valid)}")
    return name


def _mean(a: np.ndarray, p: float) -> float:
    return float(np.mean(a))


def _percentile(a: np.ndarray, p: float) -> float:
    return float(np.percentile(a, p))


def _l1(a: np.ndarray, p: float) -> float:
    return float(np.sum(a))


def _l2(a: np.ndarray, p: float) -> float:
    return float(np.sqrt(np.sum(a * a)))


def _linf(a: np.ndarray, p: float) -> float:
    return float(np.max(a))


#: name -> f(|relevance| flattened, percentile) -> score.
REDUCTIONS: dict[str, Callable[[np.ndarray, float], float]] = {
    "mean": _mean,
    "percentile": _percentile,
    "l1": _l1,
    "l2": _l2,
    "linf": _linf,
}


def reduce(relevance: np.ndarray, name: str = "linf", percentile: float = 90.0) -> float:
    """One score from a relevance array: ``mean``/``percentile``/``l1``/``l2``/``linf`` of ``|relevance|``.

    Args:
        relevance: any-shaped array (one layer's per-weight or per-channel relevance).
        name: the reduction.
        percentile: the percentile for ``percentile`` (0..100, default 90).

    Returns:
        The score as a float (NaN entries are treated as 0).

    Raises:
        UnknownNameError: an unknown reduction name (the message lists the valid ones).
        ValueError: an empty array or a percentile outside [0, 100].
    """
    fn = REDUCTIONS[check_name("reduction", name, list(REDUCTIONS))]
    a = np.abs(np.nan_to_num(np.asarray(relevance, dtype=np.float64), nan=0.0, posinf=np.inf, neginf=np.inf))
    if a.size == 0:
        raise ValueError("cannot reduce an empty relevance array")
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    return fn(a.ravel(), percentile)
