"""CumSum.

- ``vjp``: the reverse cumulative sum of the cotangent (honouring ``exclusive`` and ``reverse``).
- ``contributions``: ``y_t = sum_{s <= t} x_s`` is a sum like ReduceSum: every summed element gets
  ``sign(CONTRIB_t * dy_t * dx_s)``, no theta.
"""

from __future__ import annotations

import numpy as np

from ..capabilities.contrib import ContribContext, ContribResult
from ..capabilities.info import OpInfo, register_info
from ..capabilities.vjp import VjpContext, register
from ..registry import REGISTRY
from ..templates.routing import routing

# -- info: static metadata ---------------------------------------------------------------------------


register_info("CumSum", OpInfo("other", non_differentiable=(1,)), since=11)

# -- vjp: gradients ----------------------------------------------------------------------------------


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


register(["CumSum"], routing(_cumsum_back, "cumsum_back"), since=11)

# -- contributions: NNSlicer -------------------------------------------------------------------------


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


REGISTRY.register("contributions", "CumSum", since=11)(cumsum_contributions)
