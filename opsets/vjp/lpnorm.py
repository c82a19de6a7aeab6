"""VJP of LpNormalization (p = 1 or 2): ``y = x / ||x||_p`` along ``axis``.

``p = 2``: ``dx = (dy - y * sum(dy * y)) / ||x||``; ``p = 1``: ``dx = (dy - sign(x) * sum(dy * y)) / ||x||_1``.
"""

from __future__ import annotations

import numpy as np

from ..coverage import refuses
from .base import Grads, VjpContext, vjp


@vjp("LpNormalization")
def lp_normalization(ctx: VjpContext) -> Grads:
    """LpNormalization."""
    x = ctx.x(0).astype(np.float64)
    g = ctx.g(0).astype(np.float64)
    axis = int(ctx.attr("axis", -1))
    p = int(ctx.attr("p", 2))
    if p not in (1, 2):
        raise ctx.unsupported(f"LpNormalization with p={p}")
    if not np.all(np.abs(x).sum(axis=axis) > 0):
        raise ctx.unsupported("LpNormalization of an all-zero vector (not differentiable there)")
    if p == 2:
        norm = np.sqrt((x * x).sum(axis=axis, keepdims=True))
        y = x / norm
        dx = (g - y * (g * y).sum(axis=axis, keepdims=True)) / norm
    else:
        norm = np.abs(x).sum(axis=axis, keepdims=True)
        y = x / norm
        dx = (g - np.sign(x) * (g * y).sum(axis=axis, keepdims=True)) / norm
    return [dx.astype(ctx.x(0).dtype, copy=False)]


refuses("vjp", "LpNormalization", "an all-zero vector (not differentiable there)", lambda n, m: None)
refuses("vjp", "LpNormalization", "p other than 1 or 2", lambda n, m: int(n.attr("p", 2)) not in (1, 2))
