"""VJP of Clip from opset 11 (bounds as inputs): cotangents of the input and of both bounds.

``y = min(max(x, lo), hi)``: the input gets the cotangent where it passes (``lo <= x`` and ``max(x, lo) <= hi``,
PyTorch's convention at the boundaries), ``lo`` the sum of it where ``x < lo`` (and ``lo <= hi``), ``hi`` where
``max(x, lo) > hi``. Per-sample mode keeps the sample axis 0 of ``x`` for batch-independent bounds.
Opsets 6-10 (bounds as attributes) keep the elementwise template of :mod:`.unary`.
"""

from __future__ import annotations

import numpy as np

from .base import Grads, VjpContext, vjp


@vjp("Clip", since=11, per_sample=True)
def clip(ctx: VjpContext) -> Grads:
    """Clip with ``min``/``max`` inputs (either may be omitted)."""
    x = ctx.x(0)
    g = ctx.g(0)
    lo = np.asarray(ctx.ins[1]).reshape(()) if ctx.has(1) else None
    hi = np.asarray(ctx.ins[2]).reshape(()) if ctx.has(2) else None
    m = np.maximum(x, lo) if lo is not None else x
    under = (x < lo) if lo is not None else np.zeros(x.shape, bool)
    over = (m > hi) if hi is not None else np.zeros(x.shape, bool)
    out: Grads = [None] * len(ctx.ins)
    if ctx.need(0):
        out[0] = np.where(under | over, 0, g).astype(x.dtype, copy=False)
    for i, mask in ((1, under & ~over), (2, over)):
        if ctx.has(i) and ctx.need(i):
            part = np.where(mask, g, 0)
            total = part.reshape(part.shape[0], -1).sum(axis=1) if ctx.keep(i) else part.sum()
            b = np.asarray(ctx.ins[i])
            out[i] = np.asarray(total).reshape((part.shape[0], *b.shape) if ctx.keep(i) else b.shape).astype(b.dtype)
    return out
