"""SAfER layer sensitivity: criteria (phi), reductions (psi), perturbation ground truth."""

from __future__ import annotations

from onnxslice.sensitivity.scores import LayerScores

__all__ = ["LayerScores"]
