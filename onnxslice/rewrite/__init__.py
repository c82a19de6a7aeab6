"""Graph rewrites (prune, quantize, guard, slice masks): each is a pass on one graph IR (onnx-ir), run by
:class:`~onnxslice.rewrite.passes.PassManager`, which checks the emitted model once
(:func:`~onnxslice.rewrite.emit.finalize`). See :mod:`onnxslice.rewrite.passes`.

The rewrites never modify their input model and return a new checked :class:`onnxslice.Model`. They import
only the core (model, plugins, record); the plans that decide what to cut from analyses' scores
(:func:`onnxslice.plans.plan_pruning`, :func:`onnxslice.plans.quantization_scores`) live in
:mod:`onnxslice.plans`, above the analyses.
"""

from __future__ import annotations

from onnxslice.rewrite.bits_plan import plan_bits
from onnxslice.rewrite.emit import finalize
from onnxslice.rewrite.passes import Pass, PassManager, PassResult
from onnxslice.rewrite.plan import Plan
from onnxslice.rewrite.prune import prune
from onnxslice.rewrite.quantize import quantize
from onnxslice.rewrite.slice_mask import slice_to_model

__all__ = ["Pass", "PassManager", "PassResult", "Plan", "finalize", "plan_bits", "prune", "quantize", "slice_to_model"]
