"""TopK.

- ``vjp``: ``dx[indices] += dvalues`` along ``axis`` (the indices output carries no gradient).
- ``contributions``: each selected value is a copy of one input element (the recorded ``indices`` say
  which), so its CONTRIB is routed there, like a max pool's winner; the indices output holds no neurons.
"""

from __future__ import annotations

import numpy as np

from ..axes import add_along_axis, normalize_axis
from ..capabilities.contrib import ContribContext, ContribResult
from ..capabilities.info import OpInfo, register_info
from ..capabilities.vjp import Grads, VjpContext, vjp
from ..registry import REGISTRY

# -- info: static metadata ---------------------------------------------------------------------------


register_info("TopK", OpInfo("reduce", non_differentiable=(1,)))

# -- vjp: gradients ----------------------------------------------------------------------------------


@vjp("TopK", since=10)
def topk(ctx: VjpContext) -> Grads:
    """TopK: ``dx[indices] += dvalues`` along ``axis`` (the indices output carries no gradient)."""
    out: Grads = [None] * len(ctx.ins)
    if not ctx.need(0):
        return out
    x = ctx.x(0)
    idx = np.asarray(ctx.y(1)).astype(np.int64)
    axis = normalize_axis(int(ctx.attr("axis", -1)), x.ndim)
    dx = np.zeros_like(x)
    add_along_axis(dx, idx, axis, ctx.g(0))
    out[0] = dx
    return out


# -- contributions: NNSlicer -------------------------------------------------------------------------


def topk_contributions(ctx: ContribContext) -> ContribResult:
    """TopK along ``axis`` (element level; at channel level the selection stays inside each channel)."""
    x, dx, c = ctx.x[0], ctx.dx[0], ctx.out_contrib[0]
    if x is None or dx is None or c is None:
        return ContribResult()
    idx = np.asarray(ctx.y[1]).astype(np.int64)
    axis = normalize_axis(int(ctx.node.attr("axis", -1)), x.ndim)
    if ctx.channel and x.ndim > 2 and axis != 1:
        return ContribResult(inputs={0: np.asarray(c).astype(np.int32, copy=True)})
    if ctx.channel and x.ndim > 2:
        return ContribResult(inputs={0: np.zeros(ctx.view(x).shape, np.int32)})  # channels are compared, not kept
    inc = np.zeros(x.shape, np.int64)
    add_along_axis(inc, idx, axis, np.asarray(c, np.int64))
    return ContribResult(inputs={0: inc.astype(np.int32)})


REGISTRY.register("contributions", "TopK", since=10)(topk_contributions)
