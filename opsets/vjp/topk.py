"""VJPs of TopK (the values' cotangent goes back to the selected elements) and ScatterND (the data keeps the
cotangent where it was not overwritten; the updates take it from where they were written)."""

from __future__ import annotations

import numpy as np

from .base import Grads, VjpContext, vjp


@vjp("TopK", since=10)
def topk(ctx: VjpContext) -> Grads:
    """TopK: ``dx[indices] += dvalues`` along ``axis`` (the indices output carries no gradient)."""
    out: Grads = [None] * len(ctx.ins)
    if not ctx.need(0):
        return out
    x = ctx.x(0)
    idx = np.asarray(ctx.y(1)).astype(np.int64)
    axis = int(ctx.attr("axis", -1))
    axis = axis + x.ndim if axis < 0 else axis
    dx = np.zeros_like(x)
    grid: list[np.ndarray] = list(np.indices(idx.shape, sparse=True))
    grid[axis] = idx
    np.add.at(dx, tuple(grid), ctx.g(0))
    out[0] = dx
    return out


@vjp("ScatterND", since=11)
def scatter_nd(ctx: VjpContext) -> Grads:
    """ScatterND with ``reduction='none'`` (later writes win, as onnxruntime applies them in order)."""
    if str(ctx.attr("reduction", "none")) not in ("none", "add"):
        raise ctx.unsupported(f"ScatterND with reduction='{ctx.attr('reduction')}'")
    data = ctx.x(0)
    idx = np.asarray(ctx.x(1)).astype(np.int64)
    g = ctx.g(0)
    k = idx.shape[-1]
    flat = idx.reshape(-1, k)
    cols = tuple(np.where(flat[:, t] < 0, flat[:, t] + data.shape[t], flat[:, t]) for t in range(k))
    out: Grads = [None] * len(ctx.ins)
    add = str(ctx.attr("reduction", "none")) == "add"
    if ctx.need(0):
        d = g.copy()
        if not add:
            d[cols] = 0
        out[0] = d
    if ctx.has(2) and ctx.need(2):
        upd = ctx.x(2)
        out[2] = g[cols].reshape(upd.shape).astype(upd.dtype, copy=False)
    return out
