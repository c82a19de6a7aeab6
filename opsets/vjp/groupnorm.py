"""VJPs of InstanceNormalization and GroupNormalization (opsets 18 and 21).

Both normalise ``x [N, C, *spatial]`` over groups of elements per sample: one channel (instance) or
``C / num_groups`` channels (group) with their spatial extent, then scale and shift per channel
(GroupNormalization-18 has one scale and bias per *group*, opset 21 per channel). Within a group of ``m``
elements, ``dx = inv * (gs - mean(gs) - xhat * mean(gs * xhat))`` with ``gs = dy * scale``; the scale gets
``sum dy * xhat`` and the bias ``sum dy`` over the elements they multiply (per sample in per-sample mode).
"""

from __future__ import annotations

import numpy as np

from .base import Grads, VjpContext, vjp


def _normalised(x: np.ndarray, groups: int, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """``xhat`` and ``1/sigma`` of ``x`` viewed as ``[N, groups, m]``."""
    xg = x.reshape(x.shape[0], groups, -1).astype(np.float64)
    mu = xg.mean(axis=2, keepdims=True)
    xc = xg - mu
    inv = 1.0 / np.sqrt((xc * xc).mean(axis=2, keepdims=True) + eps)
    return xc * inv, inv


def _grads(ctx: VjpContext, groups: int, per_group_params: bool) -> Grads:
    x, scale = ctx.x(0), ctx.x(1)
    g = ctx.g(0).astype(np.float64)
    n, c = x.shape[:2]
    eps = float(ctx.attr("epsilon", 1e-5))
    xhat, inv = _normalised(x, groups, eps)
    shape = (1, c) + (1,) * (x.ndim - 2)
    s = scale.astype(np.float64)
    s_chan = np.repeat(s, c // groups) if per_group_params else s
    out: Grads = [None] * len(ctx.ins)
    if ctx.need(0):
        gs = (g * s_chan.reshape(shape)).reshape(n, groups, -1)
        dx = inv * (gs - gs.mean(axis=2, keepdims=True) - xhat * (gs * xhat).mean(axis=2, keepdims=True))
        out[0] = dx.reshape(x.shape).astype(x.dtype, copy=False)

    def param(v: np.ndarray, i: int) -> np.ndarray:
        per_chan = v.reshape(n, c, -1).sum(axis=2)  # [N, C]
        if per_group_params:
            per_chan = per_chan.reshape(n, groups, -1).sum(axis=2)
        r = per_chan if ctx.keep(i) else per_chan.sum(axis=0)
        return r.astype(ctx.x(i).dtype, copy=False)

    if ctx.need(1):
        out[1] = param(g * xhat.reshape(x.shape), 1)
    if ctx.has(2) and ctx.need(2):
        out[2] = param(g, 2)
    return out


@vjp("InstanceNormalization", since=6, per_sample=True)
def instance_norm(ctx: VjpContext) -> Grads:
    """InstanceNormalization: one group per channel."""
    return _grads(ctx, ctx.x(0).shape[1], False)


@vjp("GroupNormalization", since=18, until=20, per_sample=True)
def group_norm_18(ctx: VjpContext) -> Grads:
    """GroupNormalization-18: scale and bias per group."""
    return _grads(ctx, int(ctx.attr("num_groups")), True)


@vjp("GroupNormalization", since=21, per_sample=True)
def group_norm(ctx: VjpContext) -> Grads:
    """GroupNormalization-21: scale and bias per channel."""
    return _grads(ctx, int(ctx.attr("num_groups")), False)
