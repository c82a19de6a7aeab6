"""VJPs of broadcasting elementwise ops (Add, Sub, Mul, Div, Pow, Max, Min, Sum, Mean, Where).

One template, :func:`broadcasting`: a per-op function gives each operand's cotangent at the
broadcast shape, and :func:`~.base.unbroadcast` reduces it to the operand's shape (keeping the sample
axis for per-sample weight gradients, e.g. a bias added after a MatMul).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .base import Grads, VjpContext, VjpRule, register, unbroadcast

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


def _add(ctx: VjpContext, i: int, xs: list[np.ndarray], y: np.ndarray, g: np.ndarray) -> np.ndarray:
    return g


def _sub(ctx: VjpContext, i: int, xs: list[np.ndarray], y: np.ndarray, g: np.ndarray) -> np.ndarray:
    return g if i == 0 else -g


def _mul(ctx: VjpContext, i: int, xs: list[np.ndarray], y: np.ndarray, g: np.ndarray) -> np.ndarray:
    return g * xs[1 - i]


def _div(ctx: VjpContext, i: int, xs: list[np.ndarray], y: np.ndarray, g: np.ndarray) -> np.ndarray:
    a, b = xs
    return g / b if i == 0 else -g * a / (b * b)


def _pow(ctx: VjpContext, i: int, xs: list[np.ndarray], y: np.ndarray, g: np.ndarray) -> np.ndarray:
    a, b = xs
    if i == 0:
        return g * b * np.power(a, b - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(a > 0, np.log(np.where(a > 0, a, 1)), 0)
    return g * y * logs


def _mean(ctx: VjpContext, i: int, xs: list[np.ndarray], y: np.ndarray, g: np.ndarray) -> np.ndarray:
    return g / len(xs)


def _select(ctx: VjpContext, i: int, xs: list[np.ndarray], y: np.ndarray, g: np.ndarray) -> np.ndarray:
    # Max/Min: the gradient goes to the first operand that equals the result (PyTorch splits ties
    # between two operands; ties are measure-zero for real data).
    hit = np.broadcast_to(xs[i] == y, g.shape)
    taken = np.zeros(g.shape, dtype=bool)
    for j in range(i):
        taken |= np.broadcast_to(xs[j] == y, g.shape)
    return np.where(hit & ~taken, g, 0)


def _where(ctx: VjpContext, i: int, xs: list[np.ndarray], y: np.ndarray, g: np.ndarray) -> np.ndarray:
    cond = xs[0].astype(bool)
    return np.where(cond, g, 0) if i == 1 else np.where(cond, 0, g)


register(["Add"], broadcasting(_add, "add"))
register(["Sum"], broadcasting(_add, "sum"))
register(["Sub"], broadcasting(_sub, "sub"))
register(["Mul"], broadcasting(_mul, "mul"))
register(["Div"], broadcasting(_div, "div"))
register(["Pow"], broadcasting(_pow, "pow"))
register(["Mean"], broadcasting(_mean, "mean"))
register(["Max", "Min"], broadcasting(_select, "select"))
register(["Where"], broadcasting(_where, "where", skip=(0,)), since=9)
