"""Pools and reductions: AveragePool, MaxPool, GlobalAverage/MaxPool, ReduceMean/Sum/Max/Min.

ALGORITHMS.md: average pooling, GlobalAveragePool and ReduceMean give every input of the window
``CONTRIB_n * dy_n * dx_i``; max pooling (and ReduceMax/Min, GlobalMaxPool) only to the inputs equal
to the output. No theta (no weights). ReduceSum is a sum with weights 1 and is treated like a mean
(no theta either: a reduction has no weights to select among).

At channel granularity a pooled channel comes from the same input channel: ``CONTRIB_c * dy_c *
dx_c`` on channel means (max pooling too). Reductions over the channel axis have no channel form.
"""

from __future__ import annotations

import numpy as np

from onnxslice.errors import UnsupportedOpError

from ..axes import reduce_axes
from ..registry import REGISTRY
from .base import ContribContext, ContribResult
from .windows import gather_windows, node_windows, scatter_windows

__all__ = ["pool_contributions", "reduce_contributions"]

_MAX_OPS = {"MaxPool", "GlobalMaxPool", "ReduceMax", "ReduceMin"}


def _channel_identity(ctx: ContribContext) -> ContribResult:
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
        return _channel_identity(ctx)
    node = ctx.node
    osign = ctx.out_sign()
    is_max = node.op_type in _MAX_OPS
    if node.op_type.startswith("Global"):
        s = osign * np.sign(dx).astype(np.int8)
        if is_max:
            s = s * (x == y)
        return ContribResult(inputs={0: s.astype(np.int32)})
    idx = node_windows(node, x.shape[2:], y.shape[2:], tuple(node.attr("kernel_shape")))
    b, c = x.shape[:2]
    cols = np.sign(gather_windows(dx, idx)).astype(np.int8)  # (B, C, P, K); padding -> 0
    if is_max:
        win = gather_windows(x, idx, fill=-np.inf) == y.reshape(b, c, -1, 1)
        cols = cols * win
    cols = cols * osign.reshape(b, c, -1, 1)
    return ContribResult(inputs={0: scatter_windows(cols, idx, x.shape[2:])})


def _axes(ctx: ContribContext, rank: int) -> tuple[int, ...]:
    node = ctx.node
    input_axes = ctx.x[1] if len(ctx.x) > 1 else None
    axes = reduce_axes(node.attr("axes"), input_axes, node.attr("noop_with_empty_axes", 0), rank)
    return () if axes is None else tuple(axes)


def reduce_contributions(ctx: ContribContext) -> ContribResult:
    """ReduceMean, ReduceSum, ReduceMax, ReduceMin over any axes but the batch axis.

    Raises:
        UnsupportedOpError: the reduction spans the batch axis (or the channel axis at channel level).
    """
    x, dx, y = ctx.x[0], ctx.dx[0], ctx.y[0]
    if x is None or dx is None:
        return ContribResult()
    node = ctx.node
    axes = _axes(ctx, x.ndim)
    if 0 in axes or (ctx.channel and 1 in axes):
        raise UnsupportedOpError.for_node(
            node,
            "contributions",
            f"a reduction over axes {list(axes)} mixes samples or channels; it has no contributions rule",
        )
    if ctx.channel:
        return _channel_identity(ctx)
    keep_shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
    osign = ctx.out_sign().reshape(keep_shape)
    s = osign * np.sign(dx).astype(np.int8)
    if node.op_type in _MAX_OPS:
        s = s * (x == y.reshape(keep_shape))
    return ContribResult(inputs={0: s.astype(np.int32)})


REGISTRY.register("contributions", ["AveragePool", "MaxPool", "GlobalAveragePool", "GlobalMaxPool"])(pool_contributions)
REGISTRY.register("contributions", ["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin"])(reduce_contributions)
