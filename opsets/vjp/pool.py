"""VJPs of pooling: MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool.

Windows are walked offset by offset over a padded copy, as in ``conv``. MaxPool sends each output's
cotangent to the first position (in window order) that holds the maximum, as PyTorch does.
AveragePool divides by the number of elements each window counts (``count_include_pad``, with
``ceil_mode`` windows that run past the end pad counting only what lies inside it).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from .base import Grads, VjpContext, int_list, vjp
from .conv import crop, pad_to, window, window_pads
from .prims import ConvGeometry, Prims, prim_vjp


def _geometry(ctx: VjpContext, xs: Sequence[int], ys: Sequence[int]) -> ConvGeometry:
    """The window geometry of a pooling node with input shape ``xs`` and output shape ``ys``."""
    r = len(xs) - 2
    kernel = int_list(ctx.attr("kernel_shape"))
    strides = int_list(ctx.attr("strides", [1] * r))
    dil = int_list(ctx.attr("dilations", [1] * r))
    in_sp, out_sp = list(xs[2:]), list(ys[2:])
    begin, end = window_pads(ctx, in_sp, out_sp, kernel)
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


def max_pool_grad(x: np.ndarray, y: np.ndarray, g: np.ndarray, geom: ConvGeometry) -> np.ndarray:
    """Eager kernel of the ``max_pool_grad`` primitive: a loop over kernel offsets on a padded copy."""
    kernel, strides, dil = geom.kernel, list(geom.strides), list(geom.dilations)
    begin, length = list(geom.begin), list(geom.length)
    out_sp = list(y.shape[2:])
    xp = pad_to(x, begin, length, fill=-np.inf)
    dxp = np.zeros_like(xp)
    taken = np.zeros(y.shape, dtype=bool)
    for k in itertools.product(*(range(kk) for kk in kernel)):
        win = (slice(None), slice(None), *window(k, dil, strides, out_sp))
        hit = (xp[win] == y) & ~taken
        taken |= hit
        dxp[win] += np.where(hit, g, 0)
    return crop(dxp, begin, list(x.shape[2:]))


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


def window_sum_grad(g: np.ndarray, x_shape: Sequence[int], geom: ConvGeometry) -> np.ndarray:
    """Eager kernel of the ``window_sum_grad`` primitive: a loop over kernel offsets on a padded buffer."""
    out_sp = list(g.shape[2:])
    offsets = itertools.product(*(range(kk) for kk in geom.kernel))
    wins = [window(k, geom.dilations, geom.strides, out_sp) for k in offsets]
    dxp = np.zeros((*x_shape[:2], *geom.length), dtype=g.dtype)
    for w in wins:
        dxp[(slice(None), slice(None), *w)] += g
    return crop(dxp, list(geom.begin), list(x_shape[2:]))


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
    idx = flat.argmax(axis=-1)
    dx = np.zeros_like(flat)
    np.put_along_axis(dx, idx[..., None], g.reshape(*x.shape[:2], 1), axis=-1)
    return [dx.reshape(x.shape)]
