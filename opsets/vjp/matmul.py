"""VJPs of Gemm and MatMul (batched, broadcasting, 1-D operands), with per-sample weight gradients.

Per-sample cotangents of a batch-independent operand keep the sample axis of the other operand's
product: ``dB[n] = A[n]^T dY[n]`` as one batched matmul (no Python loop over samples).
"""

from __future__ import annotations

import numpy as np

from .base import Grads, PerSampleUnsupported, VjpContext, unbroadcast, vjp
from .kernels import matmul as fast_matmul


def _gemm_operands(ctx: VjpContext) -> tuple[np.ndarray, np.ndarray, bool, bool, float, float]:
    return (
        ctx.x(0),
        ctx.x(1),
        bool(ctx.attr("transA", 0)),
        bool(ctx.attr("transB", 0)),
        float(ctx.attr("alpha", 1.0)),
        float(ctx.attr("beta", 1.0)),
    )


@vjp("Gemm", per_sample=True)
def gemm(ctx: VjpContext) -> Grads:
    """Gemm: ``Y = alpha * A' B' + beta * C`` with ``A' = A^T if transA``, ``B' = B^T if transB``.

    Per-sample: the sample axis is the rows of ``A'`` (and of ``Y``).
    """
    a, b, ta, tb, alpha, beta = _gemm_operands(ctx)
    g = ctx.g(0)
    ap = a.T if ta else a
    bp = b.T if tb else b
    out: Grads = [None, None, None]
    if ctx.need(0):
        if ctx.keep(0):
            if not ctx.keep(1) and ctx.has(1):
                raise PerSampleUnsupported("Gemm with a batch-independent A and a batched B")
            raise PerSampleUnsupported("Gemm per-sample gradient of A")
        dap = alpha * fast_matmul(g, bp, trans_b=True)
        out[0] = (dap.T if ta else dap).astype(a.dtype, copy=False)
    if ctx.need(1):
        if ctx.keep(1):
            dbp = alpha * (ap[:, :, None] * g[:, None, :])  # [N, K, M]
            out[1] = (dbp.transpose(0, 2, 1) if tb else dbp).astype(b.dtype, copy=False)
        else:
            dbp = alpha * fast_matmul(ap, g, trans_a=True)
            out[1] = (dbp.T if tb else dbp).astype(b.dtype, copy=False)
    if ctx.has(2) and ctx.need(2):
        c = ctx.x(2)
        out[2] = unbroadcast(beta * g, c.shape, ctx.keep(2)).astype(c.dtype, copy=False)
    return out


def _swap(m: np.ndarray) -> np.ndarray:
    return np.swapaxes(m, -1, -2)


@vjp("MatMul", per_sample=True)
def matmul(ctx: VjpContext) -> Grads:
    """MatMul with numpy semantics: 1-D operands are promoted, batch dimensions broadcast."""
    a, b = ctx.x(0), ctx.x(1)
    g = ctx.g(0)
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    g2 = g.reshape((*batch, a2.shape[-2], b2.shape[-1]))
    out: Grads = [None, None]
    for i, (x, x2) in enumerate(((a, a2), (b, b2))):
        if not ctx.need(i):
            continue
        keep = ctx.keep(i)
        other = b2 if i == 0 else a2
        if keep and x2.ndim == 2 and other.ndim == 2:
            # plain 2-D product: the sample axis is the rows of A (or the columns of B)
            if i == 1:
                d = a2[:, :, None] * g2[:, None, :]  # [N, K, M]
            else:
                raise PerSampleUnsupported("MatMul per-sample gradient of a batch-independent left operand")
        else:
            d = g2 @ _swap(other) if i == 0 else _swap(other) @ g2
        shape2 = x2.shape
        r = d if keep and x2.ndim == 2 and other.ndim == 2 else unbroadcast(d, shape2, keep)
        out[i] = r.reshape((r.shape[0], *x.shape) if keep else x.shape).astype(x.dtype, copy=False)
    return out
