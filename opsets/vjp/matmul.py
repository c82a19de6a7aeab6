"""VJPs of Gemm and MatMul (batched, broadcasting, 1-D operands), with per-sample weight gradients.

Per-sample cotangents of a batch-independent operand keep the sample axis of the other operand's
product: ``dB[n] = A[n]^T dY[n]`` as one batched matmul (no Python loop over samples).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Grads, PerSampleUnsupported, VjpContext
from .prims import Prims, prim_vjp


@prim_vjp("Gemm", per_sample=True)
def gemm(P: Prims, ctx: VjpContext) -> Grads:
    """Gemm: ``Y = alpha * A' B' + beta * C`` with ``A' = A^T if transA``, ``B' = B^T if transB``.

    Per-sample: the sample axis is the rows of ``A'`` (and of ``Y``).
    """
    a, b = ctx.x(0), ctx.x(1)
    ta, tb = bool(ctx.attr("transA", 0)), bool(ctx.attr("transB", 0))
    alpha, beta = float(ctx.attr("alpha", 1.0)), float(ctx.attr("beta", 1.0))
    g = ctx.g(0)
    ap = P.transpose(a, (1, 0)) if ta else a
    bp = P.transpose(b, (1, 0)) if tb else b
    out: Grads = [None, None, None]
    if ctx.need(0):
        if ctx.keep(0):
            if not ctx.keep(1) and ctx.has(1):
                raise PerSampleUnsupported("Gemm with a batch-independent A and a batched B")
            raise PerSampleUnsupported("Gemm per-sample gradient of A")
        dap = P.mul(P.matmul(g, bp, trans_b=True), alpha)
        out[0] = P.cast(P.transpose(dap, (1, 0)) if ta else dap, P.dtype(a))
    if ctx.need(1):
        if ctx.keep(1):
            (n, k), m = P.shape(ap), P.shape(g)[1]
            dbp = P.mul(P.mul(P.reshape(ap, (n, k, 1)), P.reshape(g, (n, 1, m))), alpha)  # [N, K, M]
            out[1] = P.cast(P.transpose(dbp, (0, 2, 1)) if tb else dbp, P.dtype(b))
        else:
            dbp = P.mul(P.matmul(ap, g, trans_a=True), alpha)
            out[1] = P.cast(P.transpose(dbp, (1, 0)) if tb else dbp, P.dtype(b))
    if ctx.has(2) and ctx.need(2):
        c = ctx.x(2)
        out[2] = P.cast(P.unbroadcast(P.mul(g, beta), P.shape(c), ctx.keep(2)), P.dtype(c))
    return out


def _swap_axes(P: Prims, m: Any) -> Any:
    nd = P.ndim(m)
    return P.transpose(m, (*range(nd - 2), nd - 1, nd - 2))


@prim_vjp("MatMul", per_sample=True)
def matmul(P: Prims, ctx: VjpContext) -> Grads:
    """MatMul with numpy semantics: 1-D operands are promoted, batch dimensions broadcast."""
    a, b = ctx.x(0), ctx.x(1)
    g = ctx.g(0)
    sa, sb = P.shape(a), P.shape(b)
    a2 = P.reshape(a, (1, *sa)) if len(sa) == 1 else a
    b2 = P.reshape(b, (*sb, 1)) if len(sb) == 1 else b
    sa2, sb2 = P.shape(a2), P.shape(b2)
    batch = np.broadcast_shapes(sa2[:-2], sb2[:-2])
    g2 = P.reshape(g, (*batch, sa2[-2], sb2[-1]))
    out: Grads = [None, None]
    for i, (x, x2) in enumerate(((a, a2), (b, b2))):
        if not ctx.need(i):
            continue
        keep = ctx.keep(i)
        other = b2 if i == 0 else a2
        plain = keep and len(P.shape(x2)) == 2 and len(P.shape(other)) == 2
        if plain:
            # plain 2-D product: the sample axis is the rows of A (or the columns of B)
            if i == 1:
                (n, k), m = sa2, sb2[-1]
                d = P.mul(P.reshape(a2, (n, k, 1)), P.reshape(g2, (n, 1, m)))  # [N, K, M]
            else:
                raise PerSampleUnsupported("MatMul per-sample gradient of a batch-independent left operand")
        else:
            d = P.matmul(g2, _swap_axes(P, other)) if i == 0 else P.matmul(_swap_axes(P, other), g2)
        r = d if plain else P.unbroadcast(d, P.shape(x2), keep)
        xs = P.shape(x)
        out[i] = P.cast(P.reshape(r, (P.shape(r)[0], *xs) if keep else xs), P.dtype(x))
    return out
