"""Contributions of GroupNormalization, LpNormalization, CumSum and Trilu.

- GroupNormalization: one-to-one with the local weight ``sign(scale)`` of the element's channel (per group
  at opset 18), like InstanceNormalization and LayerNormalization (:mod:`.unary`): the statistics are per
  sample, and the cross terms through them are left out.
- LpNormalization: the diagonal of its Jacobian (local weight 1), as for Softmax.
- CumSum: ``y_t = sum_{s <= t} x_s`` is a sum like ReduceSum: every summed element gets
  ``sign(CONTRIB_t * dy_t * dx_s)``, no theta (``exclusive`` and ``reverse`` honoured).
- Trilu: routing (an element is kept or zeroed).
"""

from __future__ import annotations

import numpy as np

from ..registry import REGISTRY
from .base import ContribContext, ContribResult
from .routing import routing_contributions
from .unary import elementwise


def _group_scale(ctx: ContribContext, x: np.ndarray) -> np.ndarray:
    scale = ctx.x[1]
    assert scale is not None
    c = x.shape[1]
    s = np.sign(scale.astype(np.float64))
    if s.size != c:  # opset 18: one scale per group
        s = np.repeat(s, c // s.size)
    return s.reshape(1, c, *([1] * (x.ndim - 2)))


def _one(ctx: ContribContext, x: np.ndarray) -> float:
    return 1.0


def cumsum_contributions(ctx: ContribContext) -> ContribResult:
    """CumSum: each input element gets the signs of the outputs that sum it (see the module docstring)."""
    x, dx = ctx.x[0], ctx.dx[0]
    if x is None or dx is None:
        return ContribResult()
    axis = int(np.asarray(ctx.x[1]).reshape(()))
    axis = axis + x.ndim if axis < 0 else axis
    exclusive, reverse = bool(ctx.node.attr("exclusive", 0)), bool(ctx.node.attr("reverse", 0))
    osign = ctx.out_sign().astype(np.int64)
    if ctx.channel:
        return ContribResult(inputs={0: (osign * np.sign(ctx.view(dx))).astype(np.int32)})
    gg = osign if reverse else np.flip(osign, axis)
    acc = np.cumsum(gg, axis=axis)
    if exclusive:
        acc = acc - gg
    back = acc if reverse else np.flip(acc, axis)
    return ContribResult(inputs={0: (back * np.sign(dx).astype(np.int64)).astype(np.int32)})


REGISTRY.register("contributions", "GroupNormalization", since=18)(elementwise(_group_scale))
REGISTRY.register("contributions", "LpNormalization")(elementwise(_one))
REGISTRY.register("contributions", "CumSum", since=11)(cumsum_contributions)
REGISTRY.register("contributions", "Trilu", since=14)(routing_contributions)
