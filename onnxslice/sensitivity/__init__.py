"""SAfER layer sensitivity: criteria (phi), reductions (psi), perturbation ground truth, agreement.

``sensitivity(model, data, criterion, reduction)`` scores every layer; ``relevance(...)`` gives the
per-weight (or per-channel) arrays behind the scores; ``perturbation_importance(...)`` measures the
ground truth; ``agreement(scores, truth)`` compares them (exact ranking, Spearman, Kendall).
"""

from __future__ import annotations

from onnxslice.scores import LayerScores
from onnxslice.sensitivity.agreement import agreement, exact_ranking, kendall, spearman
from onnxslice.sensitivity.api import relevance, sensitivity
from onnxslice.sensitivity.criteria import CRITERIA, Criterion, get_criterion, load_gradient_criteria
from onnxslice.sensitivity.groundtruth import NOISES, perturbation_importance
from onnxslice.sensitivity.reductions import REDUCTIONS, UnknownNameError, reduce

__all__ = [
    "CRITERIA",
    "NOISES",
    "REDUCTIONS",
    "Criterion",
    "LayerScores",
    "UnknownNameError",
    "agreement",
    "criteria_names",
    "exact_ranking",
    "get_criterion",
    "kendall",
    "perturbation_importance",
    "reduce",
    "relevance",
    "sensitivity",
    "spearman",
]


def criteria_names() -> list[str]:
    """Names of the criteria available in this build (gradient ones need ``onnxslice.grad``)."""
    load_gradient_criteria()
    return list(CRITERIA)
