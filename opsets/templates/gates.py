"""The one-to-one (gate) template in every capability: ``y = f(x)`` elementwise.

- ``vjp``: :func:`unary` (eager) and :func:`prim_unary` (on the primitives): ``dx = dy * f'(x, y)``, where
  the family gives the local derivative; gates return a mask that selects the cotangent in one pass.
- ``contributions``: :func:`elementwise`, output neuron ``n`` depends on input neuron ``n`` alone through a
  local weight ``g(x_n)``, and ``contrib = CONTRIB_n * dy_n * g(x_n) * dx_n``; no theta (one input). At
  channel granularity the term of a channel is the channel mean of ``g(x) * dx``. :func:`one` is the local
  weight 1 (the diagonal of a Jacobian: Softmax, LpNormalization).
- ``prune``: :func:`passthrough`, the channels of input 0 are those of the data outputs, on the same axis.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..capabilities.contrib import ContribContext, ContribResult
from ..capabilities.prune import Context, Effect, Port, Ref, Rule, blocked
from ..capabilities.vjp import Grads, VjpRule
from ..vjp.prims import PrimFn, Prims

if TYPE_CHECKING:
    from onnxslice.model import Node

    from ..capabilities.vjp import VjpContext


# -- contributions -------------------------------------------------------------------------------------


LocalWeight = Callable[[ContribContext, np.ndarray], np.ndarray | float]


def elementwise(weight: LocalWeight) -> Callable[[ContribContext], ContribResult]:
    """A rule for a one-to-one op whose local weight at input value ``x`` is ``weight(ctx, x)``."""

    def rule(ctx: ContribContext) -> ContribResult:
        x, dx = ctx.x[0], ctx.dx[0]
        if dx is None or x is None:
            return ContribResult()
        g = np.asarray(weight(ctx, x), dtype=np.float64)
        s = ctx.out_sign() * np.sign(ctx.view(g * dx)).astype(np.int8)
        return ContribResult(inputs={0: s.astype(np.int32)})

    rule.__doc__ = f"Elementwise contributions with local weight {weight.__name__}."
    rule.__name__ = rule.__qualname__ = f"elementwise_{weight.__name__.lstrip('_')}"
    return rule


# -- prune ---------------------------------------------------------------------------------------------


def one(ctx: ContribContext, x: np.ndarray) -> float:
    """The local weight 1: the output moves with its own input (the diagonal of a Jacobian)."""
    return 1.0


def passthrough(*, channel_axis_only: bool = False, data_outputs: int = 1) -> Rule:
    """The channels of input 0 are those of the first ``data_outputs`` outputs, on the same axis.

    Args:
        channel_axis_only: the op acts on the spatial axes (pools), so the channels must be on axis 1.
        data_outputs: how many outputs carry the data; any further output in use (MaxPool indices,
            Dropout mask excepted) stops the group.
    """

    def rule(node: Node, ctx: Context, port: Port, ref: Ref) -> Effect:
        side, i = port
        if (side == "in" and i != 0) or (side == "out" and i >= data_outputs):
            return blocked(f"channels arrive on {side}put {i}, which is not the data tensor")
        if channel_axis_only and ref.axis != 1:
            return blocked(f"acts across axis {ref.axis} of its input, where the channels are")
        extra = [o for o in node.outputs[data_outputs:] if o]
        if extra and node.op_type != "Dropout":
            return blocked(f"its extra output '{extra[0]}' depends on the channel layout")
        data = [node.inputs[0], *[o for o in node.outputs[:data_outputs] if o]]
        if node.op_type == "Dropout" and len(node.outputs) > 1 and node.outputs[1]:
            data.append(node.outputs[1])
        arriving = node.inputs[i] if side == "in" else node.outputs[i]
        return Effect(refs=tuple((v, ref) for v in data if v != arriving))

    return rule


# -- vjp (eager) ---------------------------------------------------------------------------------------


def unary(deriv: Callable[[VjpContext, np.ndarray, np.ndarray], np.ndarray | float], name: str) -> VjpRule:
    """Template for elementwise ``y = f(x)`` (input 0): ``dx = dy * f'(x, y)``.

    ``deriv(ctx, x, y)`` returns the local derivative (an array of x's shape or a scalar); gates
    (Relu, LeakyRelu, Clip, HardSigmoid) return masks or slopes, smooth functions their derivative.
    A boolean mask selects the cotangent in one pass (no float mask, no multiply).
    """

    def fn(ctx: VjpContext) -> Grads:
        if not ctx.need(0):
            return [None] * len(ctx.ins)
        x, y = ctx.x(0), ctx.y(0)
        d = deriv(ctx, x, y)
        g = ctx.g(0)
        if isinstance(d, np.ndarray) and d.dtype == np.bool_:
            dx = np.where(d, g, np.zeros((), dtype=x.dtype)).astype(x.dtype, copy=False)
        else:
            dx = np.asarray(g * d, dtype=x.dtype)
        return [dx] + [None] * (len(ctx.ins) - 1)

    fn.__name__ = fn.__qualname__ = name
    return VjpRule(fn, False, name)


# -- vjp (on the primitives) -----------------------------------------------------------------------------


#: ``deriv(P, ctx, x, y)`` -> the local derivative: a mask (``gate=True``), a value or a number
PrimDeriv = Callable[["Prims", "VjpContext", Any, Any], Any]


def prim_unary(deriv: PrimDeriv, name: str, *, gate: bool = False) -> PrimFn:
    """Primitive form of :func:`unary`: ``dx = where(mask, dy, 0)`` for gates, else ``dy * f'(x, y)``."""

    def rule(P: Prims, ctx: VjpContext) -> list[Any]:
        rest: list[Any] = [None] * (len(ctx.ins) - 1)
        if not ctx.need(0):
            return [None, *rest]
        x, y = ctx.x(0), ctx.y(0)
        d = deriv(P, ctx, x, y)
        g = ctx.g(0)
        dx = P.where(d, g, 0.0) if gate else P.mul(g, d)
        return [P.cast(dx, P.dtype(x)), *rest]

    rule.__name__ = rule.__qualname__ = name
    return rule
