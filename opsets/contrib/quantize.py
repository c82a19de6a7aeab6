"""Quantize and dequantize ops pass CONTRIB straight through (the counterpart of the STE in ``vjp/quantize.py``).

``QuantizeLinear``, ``DequantizeLinear`` and ``DynamicQuantizeLinear`` change the precision of a value, not
which input element an output element comes from: output element ``n`` is input element ``n``, so its
CONTRIB moves to it unchanged, like ``Identity`` or ``Cast``. The integer value between a Q and a DQ holds no
neurons (it is not profiled) and is not reported; the backward walk lets CONTRIB cross it because the ops'
``info`` says ``straight_through``.
"""

from __future__ import annotations

import numpy as np

from ..registry import REGISTRY
from .base import ContribContext, ContribResult


def straight_through(ctx: ContribContext) -> ContribResult:
    """Output 0's CONTRIB to input 0, element for element."""
    c = ctx.out_contrib[0]
    if c is None or ctx.x[0] is None or ctx.is_weight[0]:
        return ContribResult()
    return ContribResult(inputs={0: np.asarray(c).astype(np.int32, copy=True)})


REGISTRY.register("contributions", ["QuantizeLinear", "DequantizeLinear"], since=10)(straight_through)
REGISTRY.register("contributions", "DynamicQuantizeLinear", since=11)(straight_through)
