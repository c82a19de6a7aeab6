"""Emission-time rule variants: fewer, cheaper nodes for ops whose general rule the graph pays for.

The gradient graph (:mod:`.emit`) runs each node's registered primitive rule on
:class:`~onnxslice.grad.lowering.OnnxPrims`. For a few ops the general rule handles cases the graph
rarely meets (bounds that are data, ``lo > hi``), and every node it emits is a full pass over an
activation in onnxruntime. :data:`EMIT_VARIANTS` maps such an op to a variant written against the same
primitives that covers the common case with fewer passes and returns ``None`` elsewhere (the general
rule then runs). A variant computes the same cotangents as the general rule in exact arithmetic;
``tests/grad/test_grad_fuse.py`` checks each one against it on the eager backend, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from onnxslice.opsets.capabilities.vjp import VjpContext
from onnxslice.opsets.vjp.prims import Prims

__all__ = ["EMIT_VARIANTS", "clip_gate"]


def _bound(P: Prims, ctx: VjpContext, i: int) -> float | None:
    """The value of Clip's scalar bound ``i`` when it is a constant of the graph, else None."""
    if not ctx.has(i):
        return None
    try:
        v = np.asarray(P.value(ctx.ins[i]))
    except Exception:  # NotEmittable (data), or a backend without constants
        return None
    return float(v.reshape(())) if v.size == 1 else None


def clip_gate(P: Prims, ctx: VjpContext) -> list[Any] | None:
    """Clip (opset 11+) with two constant bounds ``lo <= hi``: one mask per side, no ``max(x, lo)``.

    With ``lo <= hi`` the general rule's ``max(x, lo) > hi`` is ``x > hi`` and its ``lo`` mask
    ``x < lo and not over`` is ``x < lo``. When the bounds need no cotangent the input's passes where
    the forward output equals its input (``lo <= x <= hi`` exactly: Clip returns ``x`` unchanged
    there), one comparison instead of four. Per-sample mode and other cases: None.
    """
    if ctx.node.opset < 11 or not (ctx.has(1) and ctx.has(2)):
        return None
    lo, hi = _bound(P, ctx, 1), _bound(P, ctx, 2)
    if lo is None or hi is None or not lo <= hi or any(ctx.keep(i) for i in range(3)):
        return None
    x, g = ctx.x(0), ctx.g(0)
    out: list[Any] = [None] * len(ctx.ins)
    bounds = [i for i in (1, 2) if ctx.need(i)]
    if not bounds:
        if ctx.need(0):
            out[0] = P.cast(P.where(P.compare("==", ctx.y(0), x), g, 0.0), P.dtype(x))
        return out
    lo_v, hi_v = P.reshape(ctx.ins[1], ()), P.reshape(ctx.ins[2], ())
    under, over = P.compare("<", x, lo_v), P.compare(">", x, hi_v)
    if ctx.need(0):
        out[0] = P.cast(P.where(P.logical("or", under, over), 0.0, g), P.dtype(x))
    for i, mask in ((1, under), (2, over)):
        if i in bounds:
            part = P.where(mask, g, 0.0)
            total = P.reduce_sum(part, tuple(range(P.ndim(part))))
            out[i] = P.cast(P.reshape(total, P.shape(ctx.ins[i])), P.dtype(ctx.ins[i]))
    return out


#: op type -> variant ``(P, ctx) -> cotangents | None`` tried before the registered rule when emitting.
EMIT_VARIANTS: dict[str, Callable[[Prims, VjpContext], list[Any] | None]] = {"Clip": clip_gate}
