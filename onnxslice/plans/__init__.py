"""Plans: decide what a rewrite pass cuts, from the analyses' scores (slices, sensitivities, gradients).

This layer sits above the analyses (:mod:`onnxslice.slicing`, :mod:`onnxslice.sensitivity`,
:mod:`onnxslice.grad`) and below the commands; the passes that apply a plan are in
:mod:`onnxslice.rewrite`, which never imports this package.
"""

from __future__ import annotations

from onnxslice.plans.bits_scores import quantization_scores
from onnxslice.plans.prune_plan import PrunePlan, plan_pruning

__all__ = ["PrunePlan", "plan_pruning", "quantization_scores"]
