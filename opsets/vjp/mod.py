"""VJP of Mod on floats: ``y = x - q * d`` with ``q = trunc(x / d)`` (``fmod=1``) or ``floor(x / d)`` (``fmod=0``).

``q`` is piecewise constant, so ``dx = dy`` and ``dd = -dy * q`` (summed back over broadcast axes). Exports
mostly use Mod on integer shapes, where no gradient flows and the engine never calls this rule.
"""

from __future__ import annotations

import numpy as np

from .base import Grads, VjpContext, unbroadcast, vjp


@vjp("Mod", since=10, per_sample=True)
def mod(ctx: VjpContext) -> Grads:
    """Mod (float operands)."""
    x, d = ctx.x(0), ctx.x(1)
    g = ctx.g(0)
    q = np.trunc(x / d) if int(ctx.attr("fmod", 0)) else np.floor(x / d)
    out: Grads = [None, None]
    if ctx.need(0):
        out[0] = unbroadcast(g, x.shape, ctx.keep(0)).astype(x.dtype, copy=False)
    if ctx.need(1):
        out[1] = unbroadcast(-g * q, d.shape, ctx.keep(1)).astype(d.dtype, copy=False)
    return out
