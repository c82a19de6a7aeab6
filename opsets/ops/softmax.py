"""Softmax, LogSoftmax and Hardmax.

``vjp``: VJPs of Softmax and LogSoftmax, in both of their ONNX forms.

Before opset 13 the input is coerced to 2-D ``[prod(shape[:axis]), prod(shape[axis:])]`` (default
axis 1) and normalized over the second dimension; from opset 13 one axis is normalized (default -1).
One template serves the four rules.

``contributions``: the diagonal of the Jacobian (local weight 1, :func:`onnxslice.opsets.templates.gates.one`):
each output increases with its own logit; the cross terms, shared by every output of the row, are left
out (a documented choice). ``prune``: safe only when the channels are not on the normalised axis (before
opset 13, every axis from ``axis`` on).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..capabilities.info import OpInfo, register_info
from ..capabilities.vjp import Grads, VjpContext
from ..registry import REGISTRY
from ..templates.axis import axis_op
from ..templates.gates import elementwise, one
from ..vjp.eager import register_prim
from ..vjp.prims import Prims

# -- info: static metadata ---------------------------------------------------------------------------


register_info("Softmax LogSoftmax Hardmax", OpInfo("elementwise"))

# -- vjp: gradients ----------------------------------------------------------------------------------


def _p_softmax_back(P: Prims, y: Any, g: Any, axis: int) -> Any:
    return P.mul(y, P.sub(g, P.reduce_sum(P.mul(g, y), (axis,), keepdims=True)))


def _p_log_softmax_back(P: Prims, y: Any, g: Any, axis: int) -> Any:
    return P.sub(g, P.mul(P.func("exp", y), P.reduce_sum(g, (axis,), keepdims=True)))


def prim_softmax(coerce_2d: bool, log: bool = False) -> Callable[[Prims, VjpContext], Grads]:
    """Softmax's VJP ``y * (dy - sum(dy * y))`` (LogSoftmax's ``dy - exp(y) sum(dy)``) over its axis,
    after the pre-13 2-D coercion when asked."""
    back = _p_log_softmax_back if log else _p_softmax_back

    def rule(P: Prims, ctx: VjpContext) -> Grads:
        y, g = ctx.y(0), ctx.g(0)
        ys = P.shape(y)
        nd = len(ys)
        if coerce_2d:
            axis = int(ctx.attr("axis", 1))
            axis = axis + nd if axis < 0 else axis
            rows = int(np.prod(ys[:axis]))
            y2, g2 = P.reshape(y, (rows, -1)), P.reshape(g, (rows, -1))
            dx = P.reshape(back(P, y2, g2, 1), ys)
        else:
            axis = int(ctx.attr("axis", -1))
            axis = axis + nd if axis < 0 else axis
            dx = back(P, y, g, axis)
        return [P.cast(dx, P.dtype(ctx.x(0)))]

    rule.__name__ = rule.__qualname__ = ("log_softmax" if log else "softmax") + ("_2d" if coerce_2d else "")
    return rule


register_prim(["Softmax"], prim_softmax(True), "softmax_2d", until=12)


register_prim(["Softmax"], prim_softmax(False), "softmax", since=13)


register_prim(["LogSoftmax"], prim_softmax(True, log=True), "log_softmax_2d", until=12)


register_prim(["LogSoftmax"], prim_softmax(False, log=True), "log_softmax", since=13)

# -- contributions: NNSlicer -------------------------------------------------------------------------


REGISTRY.register("contributions", ["Softmax", "LogSoftmax"])(elementwise(one))

# -- prune: channel groups ---------------------------------------------------------------------------


REGISTRY.register("prune", ["Softmax", "LogSoftmax", "Hardmax"], until=12)(axis_op(1, coerce_2d_until=12))


REGISTRY.register("prune", ["Softmax", "LogSoftmax", "Hardmax"], since=13)(axis_op(-1))
