"""Resize and Upsample: nearest routes CONTRIB like any layout op; linear and cubic are weighted averages.

Nearest (every ``nearest_mode`` and coordinate mode) copies one input element per output element: the
routing rule moves the output's CONTRIB to it. Linear and cubic output element ``n`` is a fixed weighted
average ``y_n = sum_i w_ni x_i`` of its neighbours (the separable interpolation weights of
:mod:`onnxslice.opsets.resize`); like an average pool it applies no theta: every neighbour with a non-zero
weight gets ``sign(CONTRIB_n * dy_n * w_ni * dx_i)``. Vectorised through the separability:
``sign(w_ni) = prod_a sign(M_a[o_a, i_a])``, so the increments are ``sign(dx) * (osign ×_a sign(M_a)^T)``.
At channel granularity the term of a channel is the channel mean of the interpolated deltas.
"""

from __future__ import annotations

import numpy as np

from ..registry import REGISTRY
from ..resize import apply, axis_matrices, check, declare_refusals
from ..resize import coord_dtype as _coord_dtype
from .base import ContribContext, ContribResult
from .routing import routing_contributions

__all__ = ["resize_contributions"]


def resize_contributions(ctx: ContribContext) -> ContribResult:
    """Resize / Upsample (see the module docstring)."""
    node = ctx.node
    x, dx = ctx.x[0], ctx.dx[0]
    if x is None or dx is None:
        return ContribResult()
    if str(node.attr("mode", "nearest")) == "nearest":
        return routing_contributions(ctx)
    y = ctx.y[0]
    mats = axis_matrices(node, ctx.x, tuple(x.shape), tuple(y.shape), "contributions", _coord_dtype(x))
    check(node, x, y, mats, "contributions")
    osign = ctx.out_sign().astype(np.float64)
    if ctx.channel:
        term = ctx.view(apply(dx, mats))
        inc = osign * np.sign(term)
        return ContribResult(inputs={0: inc.astype(np.int32)})
    signs = [None if m is None else np.sign(m) for m in mats]
    back = apply(osign, signs, transpose=True)
    inc = np.sign(dx).astype(np.int64) * np.rint(back).astype(np.int64)
    return ContribResult(inputs={0: inc.astype(np.int32)})


REGISTRY.register("contributions", "Resize", since=10)(resize_contributions)
REGISTRY.register("contributions", "Upsample", since=7)(resize_contributions)
declare_refusals("contributions")
