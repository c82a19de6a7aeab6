"""VJPs of broadcasting elementwise ops (Add, Sub, Mul, Div, Pow, Max, Min, Sum, Mean, Where).

One template, :func:`broadcasting`: a per-op function gives each operand's cotangent at the
broadcast shape, and :func:`~.base.unbroadcast` reduces it to the operand's shape (keeping the sample
axis for per-sample weight gradients, e.g. a bias added after a MatMul).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .base import Grads, VjpContext, VjpRule, unbroadcast
from .prims import Prims, register_prim

# (ctx, operand index, operands, output, cotangent) -> that operand's cotangent at the broadcast shape
Partial = Callable[[VjpContext, int, list[np.ndarray], np.ndarray, np.ndarray], np.ndarray]


def broadcasting(partial: Partial, name: str, *, skip: tuple[int, ...] = ()) -> VjpRule:
    """Template for n-ary broadcasting ops; ``skip`` lists non-differentiable operands (Where's condition)."""

    def fn(ctx: VjpContext) -> Grads:
        xs = [np.asarray(v) if v is not None else np.zeros(()) for v in ctx.ins]
        y, g = ctx.y(0), ctx.g(0)
        out: Grads = []
        for i, x in enumerate(xs):
            if i in skip or not ctx.need(i):
                out.append(None)
                continue
            full = np.broadcast_to(partial(ctx, i, xs, y, g), g.shape)
            out.append(unbroadcast(full, x.shape, ctx.keep(i)).astype(x.dtype, copy=False))
        return out

    fn.__name__ = fn.__qualname__ = name
    return VjpRule(fn, True, name)












# -- written against the primitives (eager and ONNX-emittable) ---------------------------------------

PrimPartial = Callable[[Prims, int, list[Any], Any, Any], Any]


def prim_broadcasting(
    partial: PrimPartial, name: str, *, skip: tuple[int, ...] = ()
) -> Callable[[Prims, VjpContext], Grads]:
    """Primitive form of :func:`broadcasting`: ``partial(P, i, operands, y, dy)`` at the broadcast shape."""

    def rule(P: Prims, ctx: VjpContext) -> Grads:
        g = ctx.g(0)
        gs = P.shape(g)
        y = ctx.outs[0] if ctx.outs else None
        out: Grads = []
        for i, x in enumerate(ctx.ins):
            if x is None or i in skip or not ctx.need(i):
                out.append(None)
                continue
            part = partial(P, i, list(ctx.ins), y, g)
            full = part if P.shape(part) == gs else P.broadcast_to(part, gs)
            out.append(P.cast(P.unbroadcast(full, P.shape(x), ctx.keep(i)), P.dtype(x)))
        return out

    rule.__name__ = rule.__qualname__ = name
    return rule


def _p_add(P: Prims, i: int, xs: list[Any], y: Any, g: Any) -> Any:
    return g


def _p_sub(P: Prims, i: int, xs: list[Any], y: Any, g: Any) -> Any:
    return g if i == 0 else P.neg(g)


def _p_mul(P: Prims, i: int, xs: list[Any], y: Any, g: Any) -> Any:
    return P.mul(g, xs[1 - i])


def _p_div(P: Prims, i: int, xs: list[Any], y: Any, g: Any) -> Any:
    a, b = xs
    return P.div(g, b) if i == 0 else P.div(P.mul(P.neg(g), a), P.mul(b, b))


def _p_mean(P: Prims, i: int, xs: list[Any], y: Any, g: Any) -> Any:
    return P.div(g, float(len(xs)))


def _p_pow(P: Prims, i: int, xs: list[Any], y: Any, g: Any) -> Any:
    a, b = xs
    if i == 0:
        return P.mul(P.mul(g, b), P.power(a, P.sub(b, 1.0)))
    pos = P.compare(">", a, 0.0)
    logs = P.where(pos, P.func("log", P.where(pos, a, 1.0)), 0.0)
    return P.mul(P.mul(g, y), logs)


def _p_select(P: Prims, i: int, xs: list[Any], y: Any, g: Any) -> Any:
    # Max/Min: the gradient goes to the first operand that equals the result
    hit = P.compare("==", xs[i], y)
    for j in range(i):
        hit = P.logical("and", hit, P.logical("not", P.compare("==", xs[j], y)))
    return P.where(hit, g, 0.0)


def _p_where(P: Prims, i: int, xs: list[Any], y: Any, g: Any) -> Any:
    cond = P.cast(xs[0], np.bool_)
    return P.where(cond, g, 0.0) if i == 1 else P.where(cond, 0.0, g)


register_prim(["Add"], prim_broadcasting(_p_add, "add"), "add", per_sample=True)
register_prim(["Sum"], prim_broadcasting(_p_add, "sum"), "sum", per_sample=True)
register_prim(["Sub"], prim_broadcasting(_p_sub, "sub"), "sub", per_sample=True)
register_prim(["Mul"], prim_broadcasting(_p_mul, "mul"), "mul", per_sample=True)
register_prim(["Div"], prim_broadcasting(_p_div, "div"), "div", per_sample=True)
register_prim(["Mean"], prim_broadcasting(_p_mean, "mean"), "mean", per_sample=True)
register_prim(["Max", "Min"], prim_broadcasting(_p_select, "select"), "select", per_sample=True)
register_prim(["Where"], prim_broadcasting(_p_where, "where", skip=(0,)), "where", since=9, per_sample=True)
register_prim(["Pow"], prim_broadcasting(_p_pow, "pow"), "pow", per_sample=True)
