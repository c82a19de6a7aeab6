"""The broadcasting n-ary template in every capability: operands aligned from the right.

- ``vjp``: :func:`prim_broadcasting`, a per-op function gives each operand's cotangent at the broadcast
  shape and :func:`onnxslice.opsets.broadcast.unbroadcast` reduces it to the operand's shape (keeping the
  sample axis for per-sample weight gradients, e.g. a bias added after a MatMul).
- ``contributions``: :func:`binary_rule`, each operand that holds neurons gives output element ``n`` one
  term (its local weight times its delta, broadcast to the output); the terms of ``n`` go through theta
  like any weighted sum, then each operand's increments are summed back over the axes broadcasting
  stretched. A constant operand is a bias (part of ``y_n``, hence of theta's denominator, but no term);
  with ``synapse_ops`` a constant initializer operand is a synapse (Mul). At channel granularity each term
  is the channel mean of its element-level term.
- ``prune``: :func:`broadcasting`, a constant operand with a channel dim is sliced with the channels, a
  variable one is coupled to the group.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..broadcast import unbroadcast
from ..capabilities.contrib import ContribContext, ContribResult, sign_terms
from ..capabilities.prune import Context, Effect, Port, Ref, blocked, rank_of
from ..capabilities.vjp import Grads, VjpContext
from ..vjp.prims import Prims

if TYPE_CHECKING:
    from onnxslice.model import Node


# -- contributions -------------------------------------------------------------------------------------


Weights = Callable[[ContribContext, int], np.ndarray | float]


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


# -- prune ---------------------------------------------------------------------------------------------


def broadcasting(node: Node, ctx: Context, port: Port, ref: Ref) -> Effect:
    """Multidirectional broadcasting ops (Add, Mul, Where, PRelu, Sum, ...).

    Operands are aligned from the right. An operand whose dim on the channel axis is 1 (or that has
    no such axis) is broadcast and stays; a constant operand with the channel dim is sliced; a variable
    operand with it is coupled: its channels are the same channels (a residual Add prunes both sides
    with one selection).
    """
    out = node.outputs[0]
    r_out = rank_of(ctx, out)
    if r_out is None:
        return blocked(f"the rank of '{out}' is unknown (run shape inference)")
    side, i = port
    if side == "out":
        a_out = ref.axis
    else:
        r_in = rank_of(ctx, node.inputs[i])
        if r_in is None:
            return blocked(f"the rank of '{node.inputs[i]}' is unknown")
        a_out = ref.axis + (r_out - r_in)
    refs: list[tuple[str, Ref]] = []
    cuts: list[tuple[str, Ref]] = []
    for j, v in enumerate(node.inputs):
        if not v or (side == "in" and j == i):
            continue
        shape = ctx.shape(v)
        if shape is None:
            return blocked(f"the shape of operand '{v}' is unknown")
        a = a_out - (r_out - len(shape))
        if a < 0 or shape[a] == 1:
            continue  # broadcast along the channels: unaffected
        if not isinstance(shape[a], int):
            return blocked(f"operand '{v}' has an unknown dim {shape[a]!r} on the channel axis")
        if ctx.is_const(v):
            cuts.append((v, ref.moved(a, ref.offset, 1)))
        else:
            refs.append((v, ref.moved(a, ref.offset, 1)))
    if side == "in":
        refs.append((out, ref.moved(a_out, ref.offset, 1)))
    return Effect(refs=tuple(refs), cuts=tuple(cuts))


# -- vjp (on the primitives) -----------------------------------------------------------------------------


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
