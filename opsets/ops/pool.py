"""Pooling: MaxPool, AveragePool, LpPool and their global forms, every capability in one place.

Geometry: a pooling window reads the padded input through the Conv window geometry of
:mod:`onnxslice.opsets.geometry` (``pads`` or ``auto_pad``, strides, dilations, ``ceil_mode`` windows that
run past the end pad).

Ties (one decision, ``docs/maxpool_ties.md``): a max-pooling window whose maximum is held by several inputs
(every all-zero window after a Relu) credits only the *first* of them in row-major window order
(:func:`onnxslice.opsets.geometry.first_max`), in the VJP as in the contributions, as PyTorch's and
onnxruntime's MaxPool gradients do.

- ``vjp``: MaxPool sends each window's cotangent to its first arg-max; AveragePool divides by the number of
  elements each window counts (``count_include_pad``, with ``ceil_mode`` windows that run past the end pad
  counting only what lies inside it); the global forms likewise over the whole spatial extent.
- ``contributions`` (ALGORITHMS.md): average pooling gives every input of the window
  ``CONTRIB_n * dy_n * dx_i``; max pooling only to the first input holding the maximum. No theta (no
  weights). At channel granularity a pooled channel comes from the same input channel:
  ``CONTRIB_c * dy_c * dx_c`` on channel means.
- ``prune``: pools act on the spatial axes, so a channel group passes through when it is on axis 1.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from ..capabilities.contrib import ContribContext, ContribResult
from ..capabilities.info import OpInfo, register_info
from ..capabilities.vjp import Grads, VjpContext, int_list, vjp
from ..geometry import first_max, gather_windows, node_windows, scatter_windows, window, window_pads
from ..registry import REGISTRY
from ..templates.gates import passthrough
from ..vjp.eager import prim_vjp
from ..vjp.prims import ConvGeometry, Prims

# -- info: static metadata ---------------------------------------------------------------------------


register_info("MaxPool AveragePool GlobalAveragePool GlobalMaxPool LpPool GlobalLpPool", OpInfo("pool"))

# -- vjp: gradients ----------------------------------------------------------------------------------


def _geometry(ctx: VjpContext, xs: Sequence[int], ys: Sequence[int]) -> ConvGeometry:
    """The window geometry of a pooling node with input shape ``xs`` and output shape ``ys``."""
    r = len(xs) - 2
    kernel = int_list(ctx.attr("kernel_shape"))
    strides = int_list(ctx.attr("strides", [1] * r))
    dil = int_list(ctx.attr("dilations", [1] * r))
    in_sp, out_sp = list(xs[2:]), list(ys[2:])
    begin, end = window_pads(ctx.attr, in_sp, out_sp, kernel)
    length = [
        max(b + i + e, (o - 1) * s + (k - 1) * d + 1)
        for b, i, e, o, s, k, d in zip(begin, in_sp, end, out_sp, strides, kernel, dil, strict=True)
    ]
    return ConvGeometry(tuple(kernel), tuple(strides), tuple(dil), tuple(begin), tuple(end), tuple(length))


@prim_vjp("MaxPool")
def max_pool(P: Prims, ctx: VjpContext) -> Grads:
    """MaxPool: the cotangent goes to the first arg-max of each window (the ``max_pool_grad`` primitive)."""
    x, y, g = ctx.x(0), ctx.y(0), ctx.g(0)
    geom = _geometry(ctx, P.shape(x), P.shape(y))
    return [P.max_pool_grad(x, y, g, geom)] + [None] * (len(ctx.ins) - 1)


@prim_vjp("AveragePool")
def average_pool(P: Prims, ctx: VjpContext) -> Grads:
    """AveragePool: each window's cotangent is spread evenly over the elements it counts.

    The count of each window is a constant of the shapes (computed here in numpy); the spreading is
    the ``window_sum_grad`` primitive.
    """
    x, y, g = ctx.x(0), ctx.y(0), ctx.g(0)
    xs, ys = P.shape(x), P.shape(y)
    geom = _geometry(ctx, xs, ys)
    begin, end, length, in_sp = list(geom.begin), list(geom.end), list(geom.length), list(xs[2:])
    include = bool(ctx.attr("count_include_pad", 0))
    counted = np.zeros(length, dtype=P.dtype(x))
    if include:
        counted[tuple(slice(0, b + i + e) for b, i, e in zip(begin, in_sp, end, strict=True))] = 1
    else:
        counted[tuple(slice(b, b + i) for b, i in zip(begin, in_sp, strict=True))] = 1
    offsets = itertools.product(*(range(kk) for kk in geom.kernel))
    wins = [window(k, geom.dilations, geom.strides, list(ys[2:])) for k in offsets]
    count = sum(counted[w] for w in wins)
    gc = P.div(g, np.maximum(count, 1))
    return [P.window_sum_grad(gc, xs, geom)] + [None] * (len(ctx.ins) - 1)


@prim_vjp("GlobalAveragePool")
def global_average_pool(P: Prims, ctx: VjpContext) -> Grads:
    """GlobalAveragePool: ``dx = dy / (number of spatial positions)``, broadcast."""
    x, g = ctx.x(0), ctx.g(0)
    xs = P.shape(x)
    size = int(np.prod(xs[2:]))
    return [P.cast(P.broadcast_to(P.div(g, float(size)), xs), P.dtype(x))]


@vjp("GlobalMaxPool")
def global_max_pool(ctx: VjpContext) -> Grads:
    """GlobalMaxPool: the cotangent goes to the first arg-max of each channel."""
    x, g = ctx.x(0), ctx.g(0)
    flat = x.reshape(*x.shape[:2], -1)
    first = first_max(flat, flat.max(axis=-1))
    dx = np.where(first, g.reshape(*x.shape[:2], 1), np.zeros((), flat.dtype)).astype(x.dtype, copy=False)
    return [dx.reshape(x.shape)]


# -- contributions: NNSlicer -------------------------------------------------------------------------


MAX_OPS = {"MaxPool", "GlobalMaxPool", "ReduceMax", "ReduceMin"}


def channel_identity(ctx: ContribContext) -> ContribResult:
    """Channel level: a pooled (or reduced) channel comes from the same input channel, ``CONTRIB_c * dy_c * dx_c``."""
    dx = ctx.dx[0]
    assert dx is not None
    s = ctx.out_sign().reshape(dx.shape[:2]) * np.sign(ctx.view(dx)).astype(np.int8)
    return ContribResult(inputs={0: s.astype(np.int32)})


def pool_contributions(ctx: ContribContext) -> ContribResult:
    """AveragePool, MaxPool (windows) and GlobalAveragePool, GlobalMaxPool (whole spatial extent)."""
    x, dx, y = ctx.x[0], ctx.dx[0], ctx.y[0]
    if x is None or dx is None:
        return ContribResult()
    if ctx.channel:
        return channel_identity(ctx)
    node = ctx.node
    osign = ctx.out_sign()
    is_max = node.op_type in MAX_OPS
    if node.op_type.startswith("Global"):
        s = osign * np.sign(dx).astype(np.int8)
        if is_max:
            b, c = x.shape[:2]
            s = s * first_max(x.reshape(b, c, -1), y.reshape(b, c)).reshape(x.shape)
        return ContribResult(inputs={0: s.astype(np.int32)})
    idx = node_windows(node, x.shape[2:], y.shape[2:], tuple(node.attr("kernel_shape")))
    b, c = x.shape[:2]
    cols = np.sign(gather_windows(dx, idx)).astype(np.int8)  # (B, C, P, K); padding -> 0
    if is_max:
        cols = cols * first_max(gather_windows(x, idx, fill=-np.inf), y.reshape(b, c, -1))
    cols = cols * osign.reshape(b, c, -1, 1)
    return ContribResult(inputs={0: scatter_windows(cols, idx, x.shape[2:])})


REGISTRY.register("contributions", ["AveragePool", "MaxPool", "GlobalAveragePool", "GlobalMaxPool"])(pool_contributions)

# -- prune: channel groups ---------------------------------------------------------------------------


REGISTRY.register("prune", ["MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"])(
    passthrough(channel_axis_only=True)
)
