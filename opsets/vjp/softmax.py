"""VJPs of Softmax and LogSoftmax, in both of their ONNX forms.

Before opset 13 the input is coerced to 2-D ``[prod(shape[:axis]), prod(shape[axis:])]`` (default
axis 1) and normalized over the second dimension; from opset 13 one axis is normalized (default -1).
One template serves the four rules.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .base import Grads, VjpContext, VjpRule, register
from .prims import Prims, register_prim

Back = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


def _softmax_back(y: np.ndarray, g: np.ndarray, axis: int) -> np.ndarray:
    return y * (g - (g * y).sum(axis=axis, keepdims=True))


def _log_softmax_back(y: np.ndarray, g: np.ndarray, axis: int) -> np.ndarray:
    return g - np.exp(y) * g.sum(axis=axis, keepdims=True)


def normalized(back: Back, name: str, coerce_2d: bool) -> VjpRule:
    """Template: ``back(y, dy, axis)`` over one axis, after the pre-13 2-D coercion when asked."""

    def fn(ctx: VjpContext) -> Grads:
        y, g = ctx.y(0), ctx.g(0)
        if coerce_2d:
            axis = int(ctx.attr("axis", 1))
            axis = axis + y.ndim if axis < 0 else axis
            rows = int(np.prod(y.shape[:axis]))
            dx = back(y.reshape(rows, -1), g.reshape(rows, -1), 1).reshape(y.shape)
        else:
            axis = int(ctx.attr("axis", -1))
            dx = back(y, g, axis)
        return [dx.astype(ctx.x(0).dtype, copy=False)]

    fn.__name__ = fn.__qualname__ = name
    return VjpRule(fn, False, name)


register(["LogSoftmax"], normalized(_log_softmax_back, "log_softmax_2d", True), until=12)
register(["LogSoftmax"], normalized(_log_softmax_back, "log_softmax", False), since=13)


# -- written against the primitives (eager and ONNX-emittable) ---------------------------------------


def prim_softmax(coerce_2d: bool) -> Callable[[Prims, VjpContext], Grads]:
    """Softmax's VJP ``y * (dy - sum(dy * y))`` over its axis (after the pre-13 2-D coercion when asked)."""

    def rule(P: Prims, ctx: VjpContext) -> Grads:
        y, g = ctx.y(0), ctx.g(0)
        ys = P.shape(y)
        nd = len(ys)
        if coerce_2d:
            axis = int(ctx.attr("axis", 1))
            axis = axis + nd if axis < 0 else axis
            rows = int(np.prod(ys[:axis]))
            y2, g2 = P.reshape(y, (rows, -1)), P.reshape(g, (rows, -1))
            dx = P.reshape(P.mul(y2, P.sub(g2, P.reduce_sum(P.mul(g2, y2), (1,), keepdims=True))), ys)
        else:
            axis = int(ctx.attr("axis", -1))
            axis = axis + nd if axis < 0 else axis
            dx = P.mul(y, P.sub(g, P.reduce_sum(P.mul(g, y), (axis,), keepdims=True)))
        return [P.cast(dx, P.dtype(ctx.x(0)))]

    rule.__name__ = rule.__qualname__ = "softmax_2d" if coerce_2d else "softmax"
    return rule


register_prim(["Softmax"], prim_softmax(True), "softmax_2d", until=12)
register_prim(["Softmax"], prim_softmax(False), "softmax", since=13)
