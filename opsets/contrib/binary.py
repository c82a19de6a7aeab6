"""Broadcasting n-ary ops: Add, Sub, Sum, Mean, Mul, Div (weighted sums with theta), Max, Min, Pow.

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
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from onnxslice.errors import UnsupportedOpError

from ..registry import REGISTRY
from .base import ContribContext, ContribResult, sign_terms, unbroadcast

__all__ = ["binary_rule"]

Weights = Callable[[ContribContext, int], np.ndarray | float]


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


def binary_rule(weight: Weights, synapse_ops: bool = False) -> Callable[[ContribContext], ContribResult]:
    """A weighted-sum rule over broadcasting operands with local weights ``weight(ctx, i)``.

    Args:
        weight: the local weight of operand ``i`` (broadcastable to the output).
        synapse_ops: constant initializer operands are synapses (Mul): they get the CONTRIB of the
            terms they scaled.
    """

    def rule(ctx: ContribContext) -> ContribResult:
        data = ctx.data_inputs()
        if not data:
            return ContribResult()
        y = ctx.y[0]
        out_view = ctx.view(y).shape
        terms = []
        for i in data:
            dx = ctx.dx[i]
            assert dx is not None
            t = np.broadcast_to(np.asarray(weight(ctx, i)) * dx, y.shape)
            terms.append(ctx.view(np.ascontiguousarray(t, dtype=np.float32)).reshape(-1))
        stacked = np.stack(terms, axis=1)
        s = sign_terms(stacked, ctx.out_sign().reshape(-1), ctx.denominator().reshape(-1), ctx)
        res = ContribResult()
        for j, i in enumerate(data):
            x = ctx.x[i]
            assert x is not None
            res.inputs[i] = unbroadcast(s[:, j].reshape(out_view).astype(np.int32), ctx.view(x).shape).astype(np.int32)
        if synapse_ops and len(data) == 1 and not ctx.channel:
            full = s[:, 0].reshape(y.shape).astype(np.int64)
            for i, x in enumerate(ctx.x):
                if x is not None and ctx.is_weight[i] and ctx.dx[i] is None and np.issubdtype(x.dtype, np.floating):
                    res.synapses[i] = unbroadcast(ctx.synapse_signs(full), x.shape)
        return res

    rule.__name__ = rule.__qualname__ = f"binary_{weight.__name__.lstrip('_')}"
    rule.__doc__ = f"Broadcasting weighted sum with local weights {weight.__name__}."
    return rule


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
