"""VJPs of normalization layers: BatchNormalization (inference) and LayerNormalization.

BatchNormalization in inference mode is an affine map per channel (axis 1) whose statistics are
parameters, so every one of its five inputs gets a cotangent. Training mode (batch statistics,
``training_mode=1`` from opset 14) is refused: its statistics depend on the batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Grads, VjpContext
from .prims import Prims, prim_vjp


@prim_vjp("BatchNormalization", since=7, per_sample=True)
def batch_norm(P: Prims, ctx: VjpContext) -> Grads:
    """BatchNormalization (inference): ``y = scale * (x - mean) / sqrt(var + eps) + B`` per channel."""
    if ctx.node.opset >= 14 and int(ctx.attr("training_mode", 0)):
        raise ctx.unsupported("BatchNormalization with training_mode=1 uses batch statistics")
    if ctx.node.opset < 9 and not int(ctx.attr("spatial", 1)):
        raise ctx.unsupported("BatchNormalization with spatial=0")
    x, scale, _, mean, var = (ctx.x(i) for i in range(5))
    g = ctx.g(0)
    eps = float(ctx.attr("epsilon", 1e-5))
    xs = P.shape(x)
    f64 = np.dtype(np.float64)
    inv = P.reciprocal(P.sqrt(P.add(P.cast(var, f64), eps)))
    out: Grads = [None] * len(ctx.ins)
    # Two reductions serve every parameter: S_g = sum g and S_gx = sum g * x per channel (per sample
    # in per-sample mode), with sum g * xhat = (S_gx - mean * S_g) * inv. Accumulated in float64 so
    # that the cancellation in S_gx - mean * S_g does not cost float32 digits.
    want = [ctx.need(i) for i in range(1, 5)]
    if any(want):
        keep = any(ctx.keep(i) for i in range(1, 5))
        n, c = xs[:2]
        g3, x3 = P.reshape(g, (n, c, -1)), P.reshape(x, (n, c, -1))
        s_g = P.reduce_sum(g3, (2,), acc=f64)  # [N, C]
        s_gx = P.dot_sum(g3, x3, (2,), f64) if want[0] or want[3] else None
        mu = P.cast(mean, f64)

        def per(v: Any, i: int) -> Any:
            return P.cast(v if ctx.keep(i) else P.reduce_sum(v, (0,)), P.dtype(ctx.x(i)))

        if not keep:
            s_g = P.reduce_sum(s_g, (0,), keepdims=True)
            s_gx = None if s_gx is None else P.reduce_sum(s_gx, (0,), keepdims=True)
        s_gxhat = None if s_gx is None else P.mul(P.sub(s_gx, P.mul(mu, s_g)), inv)
        if want[0]:
            out[1] = per(s_gxhat, 1)
        if want[1]:
            out[2] = per(s_g, 2)
        if want[2]:
            out[3] = per(P.mul(s_g, P.mul(P.neg(scale), inv)), 3)
        if want[3]:
            out[4] = per(P.mul(s_gxhat, P.mul(P.mul(P.mul(scale, -0.5), inv), inv)), 4)
    if ctx.need(0):
        c = xs[1]
        out[0] = P.mul(g, P.reshape(P.cast(P.mul(scale, inv), P.dtype(x)), (1, c) + (1,) * (len(xs) - 2)))
    return out


@prim_vjp("LayerNormalization", since=17, per_sample=True)
def layer_norm(P: Prims, ctx: VjpContext) -> Grads:
    """LayerNormalization: normalize over axes ``axis..rank-1``, then ``* Scale + B`` (broadcast)."""
    x, scale = ctx.x(0), ctx.x(1)
    g = ctx.g(0)
    xs = P.shape(x)
    nd = len(xs)
    axis = int(ctx.attr("axis", -1))
    axis = axis + nd if axis < 0 else axis
    eps = float(ctx.attr("epsilon", 1e-5))
    axes = tuple(range(axis, nd))
    m = int(np.prod([xs[a] for a in axes]))
    mu = P.div(P.reduce_sum(x, axes, keepdims=True), float(m))
    xc = P.sub(x, mu)
    inv = P.reciprocal(P.sqrt(P.add(P.div(P.reduce_sum(P.mul(xc, xc), axes, keepdims=True), float(m)), eps)))
    xhat = P.mul(xc, inv)
    out: Grads = [None] * len(ctx.ins)

    if ctx.need(0):
        gx = P.mul(g, scale)
        s1 = P.div(P.reduce_sum(gx, axes, keepdims=True), float(m))
        s2 = P.div(P.mul(xhat, P.reduce_sum(P.mul(gx, xhat), axes, keepdims=True)), float(m))
        dx = P.mul(inv, P.sub(P.sub(gx, s1), s2))
        # the optional outputs Mean and InvStdDev (kept-dims shapes) carry cotangents too
        g_mean = ctx.out_grads[1] if len(ctx.out_grads) > 1 else None
        g_inv = ctx.out_grads[2] if len(ctx.out_grads) > 2 else None
        if g_mean is not None:
            dx = P.add(dx, P.div(P.reshape(g_mean, P.shape(mu)), float(m)))
        if g_inv is not None:
            cube = P.mul(P.mul(inv, inv), inv)
            dx = P.sub(dx, P.div(P.mul(P.mul(P.reshape(g_inv, P.shape(inv)), cube), xc), float(m)))
        out[0] = P.cast(dx, P.dtype(x))
    if ctx.need(1):
        out[1] = P.cast(P.unbroadcast(P.mul(g, xhat), P.shape(scale), ctx.keep(1)), P.dtype(scale))
    if ctx.has(2) and ctx.need(2):
        out[2] = P.cast(P.unbroadcast(g, P.shape(ctx.x(2)), ctx.keep(2)), P.dtype(scale))
    return out
