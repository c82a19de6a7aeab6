"""VJPs of normalization layers: BatchNormalization (inference) and LayerNormalization.

BatchNormalization in inference mode is an affine map per channel (axis 1) whose statistics are
parameters, so every one of its five inputs gets a cotangent. Training mode (batch statistics,
``training_mode=1`` from opset 14) is refused: its statistics depend on the batch.
"""

from __future__ import annotations

import numpy as np

from .base import Grads, VjpContext, unbroadcast, vjp


def _chan(v: np.ndarray, ndim: int) -> np.ndarray:
    return v.reshape((1, -1) + (1,) * (ndim - 2))


@vjp("BatchNormalization", since=7, per_sample=True)
def batch_norm(ctx: VjpContext) -> Grads:
    """BatchNormalization (inference): ``y = scale * (x - mean) / sqrt(var + eps) + B`` per channel."""
    if ctx.node.opset >= 14 and int(ctx.attr("training_mode", 0)):
        raise ctx.unsupported("BatchNormalization with training_mode=1 uses batch statistics")
    if ctx.node.opset < 9 and not int(ctx.attr("spatial", 1)):
        raise ctx.unsupported("BatchNormalization with spatial=0")
    x, scale, _, mean, var = (ctx.x(i) for i in range(5))
    g = ctx.g(0)
    eps = float(ctx.attr("epsilon", 1e-5))
    nd = x.ndim
    inv = 1.0 / np.sqrt(var.astype(np.float64) + eps)
    out: Grads = [None] * len(ctx.ins)
    # Two reductions serve every parameter: S_g = sum g and S_gx = sum g * x per channel (per sample
    # in per-sample mode), with sum g * xhat = (S_gx - mean * S_g) * inv. Accumulated in float64 so
    # that the cancellation in S_gx - mean * S_g does not cost float32 digits.
    want = [ctx.need(i) for i in range(1, 5)]
    if any(want):
        keep = any(ctx.keep(i) for i in range(1, 5))
        n, c = x.shape[:2]
        g3, x3 = g.reshape(n, c, -1), x.reshape(n, c, -1)
        s_g = g3.sum(axis=2, dtype=np.float64)  # [N, C]
        s_gx = np.einsum("ncp,ncp->nc", g3, x3, dtype=np.float64) if want[0] or want[3] else None
        mu = mean.astype(np.float64)

        def per(v: np.ndarray, i: int) -> np.ndarray:
            return (v if ctx.keep(i) else v.sum(axis=0)).astype(ctx.x(i).dtype, copy=False)

        if not keep:
            s_g = s_g.sum(axis=0, keepdims=True)
            s_gx = None if s_gx is None else s_gx.sum(axis=0, keepdims=True)
        s_gxhat = None if s_gx is None else (s_gx - mu * s_g) * inv
        if want[0]:
            out[1] = per(s_gxhat, 1)  # type: ignore[arg-type]
        if want[1]:
            out[2] = per(s_g, 2)
        if want[2]:
            out[3] = per(s_g * (-scale * inv), 3)
        if want[3]:
            out[4] = per(s_gxhat * (-0.5 * scale * inv * inv), 4)  # type: ignore[operator]
    if ctx.need(0):
        out[0] = g * _chan((scale * inv).astype(x.dtype), nd)
    return out


@vjp("LayerNormalization", since=17, per_sample=True)
def layer_norm(ctx: VjpContext) -> Grads:
    """LayerNormalization: normalize over axes ``axis..rank-1``, then ``* Scale + B`` (broadcast)."""
    x, scale = ctx.x(0), ctx.x(1)
    g = ctx.g(0)
    axis = int(ctx.attr("axis", -1))
    axis = axis + x.ndim if axis < 0 else axis
    eps = float(ctx.attr("epsilon", 1e-5))
    axes = tuple(range(axis, x.ndim))
    mu = x.mean(axis=axes, keepdims=True)
    xc = x - mu
    inv = 1.0 / np.sqrt((xc * xc).mean(axis=axes, keepdims=True) + eps)
    xhat = xc * inv
    out: Grads = [None] * len(ctx.ins)

    if ctx.need(0):
        gx = g * scale
        m = int(np.prod([x.shape[a] for a in axes]))
        dx = inv * (gx - gx.sum(axis=axes, keepdims=True) / m - xhat * (gx * xhat).sum(axis=axes, keepdims=True) / m)
        # the optional outputs Mean and InvStdDev (kept-dims shapes) carry cotangents too
        g_mean = ctx.out_grads[1] if len(ctx.out_grads) > 1 else None
        g_inv = ctx.out_grads[2] if len(ctx.out_grads) > 2 else None
        if g_mean is not None:
            dx = dx + g_mean.reshape(mu.shape) / m
        if g_inv is not None:
            dx = dx - g_inv.reshape(inv.shape) * inv**3 * xc / m
        out[0] = dx.astype(x.dtype, copy=False)
    if ctx.need(1):
        out[1] = unbroadcast(g * xhat, scale.shape, ctx.keep(1)).astype(scale.dtype, copy=False)
    if ctx.has(2) and ctx.need(2):
        out[2] = unbroadcast(g, ctx.x(2).shape, ctx.keep(2)).astype(scale.dtype, copy=False)
    return out
