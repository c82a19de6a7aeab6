"""VJP of Clip from opset 11 (bounds as inputs): cotangents of the input and of both bounds.

``y = min(max(x, lo), hi)``: the input gets the cotangent where it passes (``lo <= x`` and ``max(x, lo) <= hi``,
PyTorch's convention at the boundaries), ``lo`` the sum of it where ``x < lo`` (and ``lo <= hi``), ``hi`` where
``max(x, lo) > hi``. Per-sample mode keeps the sample axis 0 of ``x`` for batch-independent bounds.
Opsets 6-10 (bounds as attributes) keep the elementwise template of :mod:`.unary`.
"""

from __future__ import annotations

from .base import Grads, VjpContext
from .prims import Prims, prim_vjp


@prim_vjp("Clip", since=11, per_sample=True)
def clip(P: Prims, ctx: VjpContext) -> Grads:
    """Clip with ``min``/``max`` inputs (either may be omitted)."""
    x = ctx.x(0)
    g = ctx.g(0)
    lo = P.reshape(ctx.ins[1], ()) if ctx.has(1) else None
    hi = P.reshape(ctx.ins[2], ()) if ctx.has(2) else None
    m = P.maximum(x, lo) if lo is not None else x
    under = P.compare("<", x, lo) if lo is not None else None
    over = P.compare(">", m, hi) if hi is not None else None
    out: Grads = [None] * len(ctx.ins)
    if ctx.need(0):
        stop = under if over is None else over if under is None else P.logical("or", under, over)
        dx = g if stop is None else P.where(stop, 0.0, g)
        out[0] = P.cast(dx, P.dtype(x))
    masks = (under if over is None or under is None else P.logical("and", under, P.logical("not", over)), over)
    for i, mask in zip((1, 2), masks, strict=True):
        if ctx.has(i) and ctx.need(i):
            b = ctx.ins[i]
            bs = P.shape(b)
            part = P.mul(g, 0.0) if mask is None else P.where(mask, g, 0.0)  # None: the bound is never active
            nd = P.ndim(part)
            total = P.reduce_sum(part, tuple(range(1, nd)) if ctx.keep(i) else tuple(range(nd)))
            out[i] = P.cast(P.reshape(total, (P.shape(g)[0], *bs) if ctx.keep(i) else bs), P.dtype(b))
    return out
