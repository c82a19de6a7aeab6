"""Normalisations: BatchNormalization, InstanceNormalization, LayerNormalization, GroupNormalization,
LpNormalization, LRN and MeanVarianceNormalization.

- ``vjp``: BatchNormalization in inference mode (``training_mode=1`` and ``spatial=0`` are refused: their
  statistics depend on the batch), LayerNormalization; InstanceNormalization and GroupNormalization (opsets
  18 and 21) normalise ``C / num_groups`` channels with their spatial extent, then scale and shift per
  channel: the input gets the normalisation's VJP, scale and bias ``sum dy * xhat`` and ``sum dy`` (per
  sample in per-sample mode); LpNormalization (p = 1 or 2): ``dx = (dy - y * sum(dy * y)) / ||x||`` or
  ``(dy - sign(x) * sum(dy * y)) / ||x||_1``; LRN (``y = x d^-beta``, ``d = bias + alpha / size *
  S``, ``S`` the sum of ``x^2`` over a window of channels): ``dx = dy d^-beta - 2 beta alpha / size * x
  * S^T(dy y / d)`` with ``S^T`` the transposed window sum; MeanVarianceNormalization, its function body
  differentiated (population standard deviation plus 1e-9), in float64.
- ``contributions``: one-to-one ops (:mod:`onnxslice.opsets.templates.gates`) with a per-channel local
  weight: BatchNormalization ``g = gamma / sqrt(var + eps)`` (the paper's "scale" has ``g > 0``; a negative
  learned ``gamma`` flips the sign as it flips the dependence); InstanceNormalization, LayerNormalization
  and GroupNormalization the sign of their scale (per group at opset 18): their statistics are per sample
  and the cross terms through them are left out. LpNormalization: the diagonal of its Jacobian (weight 1).
- ``prune``: BatchNormalization and InstanceNormalization slice their per-channel parameters with the
  channels; LayerNormalization is safe only away from its normalised axes; GroupNormalization is left
  alone (removing a channel changes its group's statistics).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..capabilities.contrib import ContribContext
from ..capabilities.info import OpInfo, register_info
from ..capabilities.prune import left_alone
from ..capabilities.vjp import Grads, VjpContext, vjp
from ..coverage import refuses
from ..registry import REGISTRY
from ..templates.axis import axis_op, per_channel_params
from ..templates.gates import elementwise, one
from ..vjp.eager import prim_vjp
from ..vjp.prims import Prims

# -- info: static metadata ---------------------------------------------------------------------------


register_info("BatchNormalization", OpInfo("norm", param_inputs=(1, 2), constant_inputs=(3, 4)))
register_info("InstanceNormalization", OpInfo("norm", param_inputs=(1, 2)))
register_info("LayerNormalization", OpInfo("norm", param_inputs=(1, 2)))
register_info("GroupNormalization", OpInfo("norm", param_inputs=(1, 2)))
register_info("LRN", OpInfo("norm"))
register_info("MeanVarianceNormalization", OpInfo("norm"), since=9)
register_info("LpNormalization", OpInfo("norm"))

# -- vjp: gradients ----------------------------------------------------------------------------------


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
    # Two reductions serve every parameter: S_g = sum g and S_gxc = sum g * (x - mean) per channel (per
    # sample in per-sample mode), with sum g * xhat = S_gxc * inv. Centring x first (one float32 pass,
    # exact to half an ulp of the difference) leaves no cancellation between two large sums, so both
    # reductions run in float32 (as torch's CPU kernel accumulates); the per-channel results are
    # combined in float64.
    want = [ctx.need(i) for i in range(1, 5)]
    if any(want):
        keep = any(ctx.keep(i) for i in range(1, 5))
        n, c = xs[:2]
        acc = np.promote_types(P.dtype(x), np.float32)  # float16 inputs still sum in float32
        g3 = P.reshape(g, (n, c, -1))
        s_g = P.cast(P.reduce_sum(g3, (2,), acc=acc), f64)  # [N, C]
        s_gx = None
        if want[0] or want[3]:
            xc = P.sub(P.reshape(x, (n, c, -1)), P.reshape(P.cast(mean, P.dtype(x)), (1, c, 1)))
            s_gx = P.cast(P.dot_sum(g3, xc, (2,), acc), f64)

        def per(v: Any, i: int) -> Any:
            return P.cast(v if ctx.keep(i) else P.reduce_sum(v, (0,)), P.dtype(ctx.x(i)))

        if not keep:
            s_g = P.reduce_sum(s_g, (0,), keepdims=True)
            s_gx = None if s_gx is None else P.reduce_sum(s_gx, (0,), keepdims=True)
        s_gxhat = None if s_gx is None else P.mul(s_gx, inv)
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


def _channel_window_sum(P: Prims, v: Any, lo: int, hi: int) -> Any:
    """``out[:, c] = sum(v[:, c - lo : c + hi + 1])`` over the channels of ``v`` [N, C, S], zeros outside.

    The channels are moved last so that :meth:`Prims.place` pads them; then ``lo + hi + 1`` shifted slices
    are added (LRN's windows have a handful of channels)."""
    c = P.shape(v)[1]
    padded = P.place(P.transpose(v, (0, 2, 1)), [lo], [c + lo + hi])  # [N, S, lo + C + hi]
    total = P.slice(padded, 2, 0, c)
    for j in range(1, lo + hi + 1):
        total = P.add(total, P.slice(padded, 2, j, j + c))
    return P.transpose(total, (0, 2, 1))


@prim_vjp("LRN", since=1, per_sample=True)
def lrn(P: Prims, ctx: VjpContext) -> Grads:
    """LRN across channels: ``y = x / (bias + alpha / size * sum_window x^2) ^ beta``."""
    size = int(ctx.attr("size", 0))
    if size < 1:
        raise ctx.unsupported("LRN without a positive 'size'")
    alpha, beta, bias = (float(ctx.attr(k, d)) for k, d in (("alpha", 1e-4), ("beta", 0.75), ("bias", 1.0)))
    lo, hi = (size - 1) // 2, size // 2  # floor((size-1)/2) channels before, ceil((size-1)/2) after
    x, y, g = ctx.x(0), ctx.y(0), ctx.g(0)
    shape = P.shape(x)
    n, c = shape[:2]
    x3, y3, g3 = (P.reshape(v, (n, c, -1)) for v in (x, y, g))
    d = P.add(P.mul(_channel_window_sum(P, P.mul(x3, x3), lo, hi), alpha / size), bias)
    t = P.mul(P.div(P.mul(g3, y3), d), -2.0 * beta * alpha / size)
    dx = P.add(P.mul(g3, P.power(d, -beta)), P.mul(x3, _channel_window_sum(P, t, hi, lo)))
    return [P.cast(P.reshape(dx, shape), P.dtype(x))]


@prim_vjp("MeanVarianceNormalization", since=9, per_sample=True)
def mean_variance_normalization(P: Prims, ctx: VjpContext) -> Grads:
    """``y = (x - mean) / (std + 1e-9)`` over ``axes`` (default 0, 2, 3), ``std`` the population standard
    deviation (the op's function body): ``dx = (dy - mean(dy)) / s - (x - mean) mean(dy (x - mean)) / (s^2 std)``
    with ``s = std + 1e-9``."""
    x, g = ctx.x(0), ctx.g(0)
    nd = P.ndim(x)
    axes = tuple(sorted(int(a) % nd for a in ctx.attr("axes", [0, 2, 3])))
    n = float(np.prod([P.shape(x)[a] for a in axes]))
    f64 = np.dtype(np.float64)
    xf, gf = P.cast(x, f64), P.cast(g, f64)
    xc = P.sub(xf, P.mul(P.reduce_sum(xf, axes, keepdims=True), 1.0 / n))
    std = P.sqrt(P.mul(P.reduce_sum(P.mul(xc, xc), axes, keepdims=True), 1.0 / n))
    s = P.add(std, 1e-9)
    g_mean = P.mul(P.reduce_sum(gf, axes, keepdims=True), 1.0 / n)
    gx_mean = P.mul(P.reduce_sum(P.mul(gf, xc), axes, keepdims=True), 1.0 / n)
    coef = P.div(gx_mean, P.mul(P.mul(s, s), P.add(std, 1e-300)))  # std = 0: x - mean is 0 there, and so is the term
    dx = P.sub(P.div(P.sub(gf, g_mean), s), P.mul(xc, coef))
    return [P.cast(dx, P.dtype(x))]


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


refuses(
    "vjp",
    "BatchNormalization",
    "training_mode=1 (batch statistics)",
    lambda n, m: n.opset >= 14 and bool(int(n.attr("training_mode", 0))),
)
refuses("vjp", "BatchNormalization", "spatial=0", lambda n, m: n.opset < 9 and not int(n.attr("spatial", 1)))


# -- contributions: NNSlicer -------------------------------------------------------------------------


def _group_scale(ctx: ContribContext, x: np.ndarray) -> np.ndarray:
    scale = ctx.x[1]
    assert scale is not None
    c = x.shape[1]
    s = np.sign(scale.astype(np.float64))
    if s.size != c:  # opset 18: one scale per group
        s = np.repeat(s, c // s.size)
    return s.reshape(1, c, *([1] * (x.ndim - 2)))


REGISTRY.register("contributions", "GroupNormalization", since=18)(elementwise(_group_scale))


REGISTRY.register("contributions", "LpNormalization")(elementwise(one))


def _channel_param(ctx: ContribContext, p: np.ndarray, x: np.ndarray) -> np.ndarray:
    """A per-channel parameter ``(C,)`` shaped to broadcast against ``x`` ``(B, C, ...)``."""
    return p.reshape(1, -1, *([1] * (x.ndim - 2))) if x.ndim >= 2 else p


def _batchnorm(ctx: ContribContext, x: np.ndarray) -> np.ndarray:
    scale, var = ctx.x[1], ctx.x[4]
    assert scale is not None and var is not None
    eps = float(ctx.node.attr("epsilon", 1e-5))
    g = scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
    return _channel_param(ctx, g, x)


def _instancenorm(ctx: ContribContext, x: np.ndarray) -> np.ndarray:
    scale = ctx.x[1]
    assert scale is not None
    return _channel_param(ctx, np.sign(scale.astype(np.float64)), x)


def _layernorm(ctx: ContribContext, x: np.ndarray) -> np.ndarray:
    scale = ctx.x[1]
    assert scale is not None
    return np.sign(scale.astype(np.float64))


REGISTRY.register("contributions", "BatchNormalization")(elementwise(_batchnorm))
REGISTRY.register("contributions", "InstanceNormalization")(elementwise(_instancenorm))
REGISTRY.register("contributions", "LayerNormalization")(elementwise(_layernorm))

# -- prune: channel groups ---------------------------------------------------------------------------


REGISTRY.register("prune", "BatchNormalization")(per_channel_params((1, 2, 3, 4)))


REGISTRY.register("prune", "InstanceNormalization")(per_channel_params((1, 2)))


REGISTRY.register("prune", "LayerNormalization")(axis_op(-1))


_GROUPS = "it normalises over groups of channels (removing one changes its group's statistics)"
REGISTRY.register("prune", "GroupNormalization")(left_alone(_GROUPS))
refuses("prune", "GroupNormalization", _GROUPS, lambda n, m: True)
