"""Broadcasting n-ary ops: Add, Sub, Mul, Div, Pow, Max, Min, Mean, Sum, Mod, Where and comparisons.

``contributions``: Broadcasting n-ary ops: Add, Sub, Sum, Mean, Mul, Div (weighted sums with theta), Max, Min, Pow.

One template: each operand that holds neurons gives output element ``n`` one term ``t_i`` (its local
weight times its delta, broadcast to the output); the terms of ``n`` go through theta like any weighted
sum, then each operand's increments are summed back over the axes broadcasting stretched.

- Add, Sum: weight 1 (the residual Add of ALGORITHMS.md); Sub: +1 and -1; Mean: ``1/k``.
- Mul by a constant ``c``: weight ``c``, and ``c`` is a synapse when it is an initializer (its CONTRIB
  summed over the positions it scaled). Mul of two activations: the product rule, weights ``b`` for
  ``a`` and ``a`` for ``b`` (the first-order expansion of ``a * b`` around the sample).
- Div: ``1/b`` for ``a`` and ``-a/b^2`` for ``b``.
- Max, Min: no weights: the output copies its winner, which alone gets ``CONTRIB_n * dy_n * dx_i``
  (like max pooling); no theta.
- Pow with a constant exponent ``p``: one-to-one with local weight ``p * x^(p-1)``; no theta.

A constant operand is a bias (it is part of ``y_n``, hence of theta's denominator, but has no term).
At channel granularity each term is the channel mean of its element-level term.

``contributions``: Mod contributions: ``y = x - q * d`` with a piecewise-constant ``q``, a weighted sum with weights
1 and ``-q``.

Integer Mod (shape arithmetic in exports) holds no neurons and is never dispatched; float Mod follows the
broadcasting weighted-sum template of :mod:`onnxslice.opsets.templates.binary`.

``vjp``: VJPs of broadcasting elementwise ops (Add, Sub, Mul, Div, Pow, Max, Min, Sum, Mean, Where).

One template, :func:`onnxslice.opsets.templates.binary.prim_broadcasting`: a per-op function gives each
operand's cotangent at the broadcast shape, and the one ``unbroadcast`` reduces it to the operand's shape
(keeping the sample axis for per-sample weight gradients, e.g. a bias added after a MatMul).

``vjp``: VJP of Mod on floats: ``y = x - q * d`` with ``q = trunc(x / d)`` (``fmod=1``) or ``floor(x / d)``
(``fmod=0``).

``q`` is piecewise constant, so ``dx = dy`` and ``dd = -dy * q`` (summed back over broadcast axes). Exports
mostly use Mod on integer shapes, where no gradient flows and the engine never calls this rule.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from onnxslice.errors import UnsupportedOpError

from ..broadcast import unbroadcast
from ..capabilities.contrib import ContribContext, ContribResult
from ..capabilities.info import OpInfo, register_info
from ..capabilities.vjp import Grads, VjpContext, vjp
from ..coverage import computed, refuses
from ..registry import REGISTRY
from ..templates.binary import binary_rule, broadcasting, prim_broadcasting
from ..templates.routing import no_neurons, routing_contributions
from ..vjp.eager import register_prim
from ..vjp.prims import Prims

# -- info: static metadata ---------------------------------------------------------------------------


register_info("Add Sub Mul Div Pow Max Min Mean Sum", OpInfo("binary"))
register_info("Mod", OpInfo("binary"), since=10)
register_info("Equal Greater Less GreaterOrEqual LessOrEqual And Or Xor", OpInfo("binary"))
register_info("Where", OpInfo("binary", non_differentiable=(0,)))

# -- vjp: gradients ----------------------------------------------------------------------------------


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


@vjp("Mod", since=10, per_sample=True)
def mod(ctx: VjpContext) -> Grads:
    """Mod (float operands)."""
    x, d = ctx.x(0), ctx.x(1)
    g = ctx.g(0)
    q = np.trunc(x / d) if int(ctx.attr("fmod", 0)) else np.floor(x / d)
    out: Grads = [None, None]
    if ctx.need(0):
        out[0] = unbroadcast(g, x.shape, ctx.keep(0)).astype(x.dtype, copy=False)
    if ctx.need(1):
        out[1] = unbroadcast(-g * q, d.shape, ctx.keep(1)).astype(d.dtype, copy=False)
    return out


# -- contributions: NNSlicer -------------------------------------------------------------------------


def _others_product(ctx: ContribContext, i: int) -> np.ndarray | float:
    w: np.ndarray | float = 1.0
    for j, x in enumerate(ctx.x):
        if j != i and x is not None:
            w = w * x.astype(np.float64)
    return w


def _add(ctx: ContribContext, i: int) -> float:
    return 1.0


def _sub(ctx: ContribContext, i: int) -> float:
    return 1.0 if i == 0 else -1.0


def _mean(ctx: ContribContext, i: int) -> float:
    return 1.0 / len([x for x in ctx.x if x is not None])


def _div(ctx: ContribContext, i: int) -> np.ndarray:
    a, b = ctx.x[0], ctx.x[1]
    assert a is not None and b is not None
    bf = b.astype(np.float64)
    return 1.0 / bf if i == 0 else -a.astype(np.float64) / (bf * bf)


def select_rule(ctx: ContribContext) -> ContribResult:
    """Max, Min: the winning operand(s) of each output element get ``CONTRIB_n * dy_n * dx_i``."""
    y = ctx.y[0]
    osign = ctx.out_sign()
    res = ContribResult()
    for i in ctx.data_inputs():
        x, dx = ctx.x[i], ctx.dx[i]
        assert x is not None and dx is not None
        won = np.broadcast_to(x, y.shape) == y
        term = np.where(won, np.broadcast_to(dx, y.shape), 0.0)
        s = osign * np.sign(ctx.view(term)).astype(np.int8)
        res.inputs[i] = unbroadcast(s.astype(np.int32), ctx.view(x).shape).astype(np.int32)
    return res


def pow_rule(ctx: ContribContext) -> ContribResult:
    """Pow with a constant exponent: one-to-one with local weight ``p * x^(p-1)``.

    Raises:
        UnsupportedOpError: the exponent holds neurons.
    """
    if ctx.dx[1] is not None:
        n = ctx.node
        raise UnsupportedOpError.for_node(n, "contributions", "Pow with a data-dependent exponent")
    x, dx, p = ctx.x[0], ctx.dx[0], ctx.x[1]
    if x is None or dx is None or p is None:
        return ContribResult()
    pf = p.astype(np.float64)
    with np.errstate(all="ignore"):
        g = np.nan_to_num(pf * np.power(x.astype(np.float64), pf - 1.0))
    s = ctx.out_sign() * np.sign(ctx.view(g * dx)).astype(np.int8)
    return ContribResult(inputs={0: s.astype(np.int32)})


REGISTRY.register("contributions", ["Add", "Sum"])(binary_rule(_add))


REGISTRY.register("contributions", "Sub")(binary_rule(_sub))


REGISTRY.register("contributions", "Mean")(binary_rule(_mean))


REGISTRY.register("contributions", "Mul")(binary_rule(_others_product, synapse_ops=True))


REGISTRY.register("contributions", "Div")(binary_rule(_div))


REGISTRY.register("contributions", ["Max", "Min"])(select_rule)


REGISTRY.register("contributions", "Pow")(pow_rule)


def _mod(ctx: ContribContext, i: int) -> np.ndarray | float:
    if i == 0:
        return 1.0
    x, d = ctx.x[0], ctx.x[1]
    assert x is not None and d is not None
    q = np.trunc(x / d) if int(ctx.node.attr("fmod", 0)) else np.floor(x / d)
    return -q.astype(np.float64)


REGISTRY.register("contributions", "Mod", since=10)(binary_rule(_mod))


REGISTRY.register("contributions", "Where")(routing_contributions)


REGISTRY.register("contributions", ["Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor"])(
    no_neurons
)

refuses("contributions", "Pow", "a data-dependent exponent", computed(1))


# -- prune: channel groups ---------------------------------------------------------------------------


REGISTRY.register("prune", ["Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where"])(broadcasting)


REGISTRY.register("prune", "Mod", since=10)(broadcasting)
