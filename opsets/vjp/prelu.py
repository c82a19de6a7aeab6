"""VJP of PRelu: ``y = x`` where ``x > 0``, else ``slope * x`` (slope broadcast to ``x``).

``dx = dy`` where ``x > 0`` else ``dy * slope`` (PyTorch's convention at 0); ``dslope = dy * x`` where
``x <= 0``, summed back to the slope's shape (per sample in per-sample mode).
"""

from __future__ import annotations

import numpy as np

from .base import Grads, VjpContext, unbroadcast, vjp


@vjp("PRelu", per_sample=True)
def prelu(ctx: VjpContext) -> Grads:
    """PRelu with a broadcast slope."""
    x, slope = ctx.x(0), ctx.x(1)
    g = ctx.g(0)
    pos = x > 0
    out: Grads = [None, None]
    if ctx.need(0):
        out[0] = np.where(pos, g, g * slope).astype(x.dtype, copy=False)
    if ctx.need(1):
        out[1] = unbroadcast(np.where(pos, 0, g * x), slope.shape, ctx.keep(1)).astype(slope.dtype, copy=False)
    return out
