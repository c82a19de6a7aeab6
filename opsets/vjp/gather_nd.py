"""VJPs of GatherElements and GatherND: the cotangent is added back where each element was read from."""

from __future__ import annotations

import numpy as np

from .base import VjpContext, register, routing


def _gather_elements_back(ctx: VjpContext, g: np.ndarray) -> list[np.ndarray | None]:
    x = ctx.x(0)
    idx = np.asarray(ctx.x(1)).astype(np.int64)
    axis = int(ctx.attr("axis", 0))
    axis = axis + x.ndim if axis < 0 else axis
    idx = np.where(idx < 0, idx + x.shape[axis], idx)
    dx = np.zeros_like(x)
    grid: list[np.ndarray] = list(np.indices(idx.shape, sparse=True))
    grid[axis] = idx
    np.add.at(dx, tuple(grid), g)
    return [dx]


def _gather_nd_back(ctx: VjpContext, g: np.ndarray) -> list[np.ndarray | None]:
    x = ctx.x(0)
    idx = np.asarray(ctx.x(1)).astype(np.int64)
    b = int(ctx.attr("batch_dims", 0))
    k = idx.shape[-1]
    dx = np.zeros_like(x)
    lead = int(np.prod(x.shape[:b], dtype=np.int64))
    xb = dx.reshape(lead, *x.shape[b:])
    ib = idx.reshape(lead, -1, k)
    gb = g.reshape(lead, ib.shape[1], *x.shape[b + k :])
    for j in range(lead):
        cols = tuple(np.where(ib[j, :, t] < 0, ib[j, :, t] + x.shape[b + t], ib[j, :, t]) for t in range(k))
        np.add.at(xb[j], cols, gb[j])
    return [dx]


register(["GatherElements"], routing(_gather_elements_back, "gather_elements_back"), since=11)
register(["GatherND"], routing(_gather_nd_back, "gather_nd_back"), since=11)
