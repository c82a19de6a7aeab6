"""Graph rewriting passes (prune, quantize): each collects its edits and applies them in one place.

Passes never modify their input model and return a new checked :class:`onnxslice.Model`.
"""

from __future__ import annotations

from onnxslice.rewrite.bits_plan import plan_bits
from onnxslice.rewrite.emit import finalize
from onnxslice.rewrite.plan import Plan
from onnxslice.rewrite.prune import prune
from onnxslice.rewrite.prune_plan import PrunePlan, plan_pruning
from onnxslice.rewrite.quantize import quantize

__all__ = ["Plan", "PrunePlan", "finalize", "plan_bits", "plan_pruning", "prune", "quantize"]
