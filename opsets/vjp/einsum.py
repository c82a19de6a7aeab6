"""VJP of Einsum: each operand's cotangent is an einsum of the output cotangent with the other operands.

``dX_i = einsum(out, others -> subs_i)(dY, X_j...)``. Ellipses and implicit outputs are made explicit
first (:mod:`onnxslice.opsets.einsum`); operands broadcast inside an ellipsis get their cotangent summed
back; letters of ``X_i`` that appear nowhere else (summed out by the forward) get the cotangent broadcast
along them. Repeated letters inside one operand (diagonals such as ``ii->i``) are refused.
"""

from __future__ import annotations

import numpy as np

from ..broadcast import unbroadcast
from ..coverage import refuses
from ..einsum import broadcast_operands, explicit, has_diagonal
from .base import Grads, VjpContext, vjp


@vjp("Einsum", since=12)
def einsum(ctx: VjpContext) -> Grads:
    """Einsum with any number of operands (see the module docstring)."""
    n = len(ctx.ins)
    out: Grads = [None] * n
    if not any(ctx.need(i) for i in range(n)):
        return out
    xs = [ctx.x(i) for i in range(n)]
    subs, osub = explicit(str(ctx.attr("equation")), [x.ndim for x in xs])
    if any(len(set(s)) != len(s) for s in [*subs, osub]):
        raise ctx.unsupported("Einsum with a repeated subscript inside one operand (a diagonal)")
    bx = broadcast_operands(subs, xs)
    g = np.asarray(ctx.g(0))
    for i in range(n):
        if not ctx.need(i):
            continue
        others = [j for j in range(n) if j != i]
        elsewhere = set(osub).union(*[set(subs[j]) for j in others])
        core = "".join(c for c in subs[i] if c in elsewhere)
        eq = ",".join([osub, *[subs[j] for j in others]]) + "->" + core
        d = np.einsum(eq, g, *[bx[j] for j in others])
        for pos, c in enumerate(subs[i]):
            if c not in elsewhere:
                d = np.expand_dims(d, pos)
        d = np.broadcast_to(d, bx[i].shape)
        out[i] = np.ascontiguousarray(unbroadcast(d, xs[i].shape)).astype(xs[i].dtype, copy=False)
    return out


refuses("vjp", "Einsum", "a repeated subscript inside one operand", lambda n, m: has_diagonal(str(n.attr("equation"))))
