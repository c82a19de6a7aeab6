"""VJPs of CumSum (the reverse cumulative sum of the cotangent, honouring ``exclusive``/``reverse``) and Trilu
(the same triangle of the cotangent)."""

from __future__ import annotations

import numpy as np

from .base import VjpContext, register, routing


def _cumsum_back(ctx: VjpContext, g: np.ndarray) -> list[np.ndarray | None]:
    x = ctx.x(0)
    axis = int(np.asarray(ctx.x(1)).reshape(()))
    axis = axis + x.ndim if axis < 0 else axis
    exclusive, reverse = bool(ctx.attr("exclusive", 0)), bool(ctx.attr("reverse", 0))
    # forward sums in one direction, so the cotangent sums in the other
    gg = g if reverse else np.flip(g, axis)
    acc = np.cumsum(gg, axis=axis)
    if exclusive:
        acc = acc - gg
    return [(acc if reverse else np.flip(acc, axis)).astype(x.dtype, copy=False)]


def _trilu_back(ctx: VjpContext, g: np.ndarray) -> list[np.ndarray | None]:
    x = ctx.x(0)
    k = int(np.asarray(ctx.x(1)).reshape(())) if ctx.has(1) else 0
    upper = bool(ctx.attr("upper", 1))
    rows, cols = x.shape[-2], x.shape[-1]
    keep = np.triu(np.ones((rows, cols), bool), k) if upper else np.tril(np.ones((rows, cols), bool), k)
    return [np.where(keep, g, 0).astype(x.dtype, copy=False)]


register(["CumSum"], routing(_cumsum_back, "cumsum_back"), since=11)
register(["Trilu"], routing(_trilu_back, "trilu_back"), since=14)
