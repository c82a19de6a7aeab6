"""Weighted sums: Conv (grouped and depthwise included), Gemm and MatMul with a constant operand.

Element level: output neuron ``n`` has terms ``t_i = w_i * dx_i`` over its fan-in; theta selects the
significant ones; ``CONTRIB_{x_i} += sign(contrib_i)`` and ``CONTRIB_{w_i} += sign(contrib_i)`` where
``contrib_i = CONTRIB_n * dy_n * t_i``. A conv weight is shared across positions, so its CONTRIB sums
over every position (and sample) where it was used.

Channel level (a filter is a neuron, its activation the spatial mean): the terms of output channel
``c`` are its input channels, ``t_cin = sum_k W[c, cin, k] * mean_p dx[cin, window_p(k)]`` (exactly the
channel mean of the linear part); every kernel weight of a kept (c, cin) pair gets the pair's sign.
Gemm/MatMul on ``(B, features)`` are the same at both levels.

Work is vectorised over every target neuron of a chunk (no Python loop over neurons); temporaries
hold at most ``ctx.chunk`` elements; output neurons with CONTRIB 0 are skipped.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from onnxslice.errors import UnsupportedOpError

from ..registry import REGISTRY
from .base import ContribContext, ContribResult, sign_terms
from .windows import gather_windows, node_windows, scatter_windows

__all__ = ["conv_contributions", "dense_contributions"]


def _blocks(total: int, size: int) -> Iterator[slice]:
    size = max(1, size)
    for s in range(0, total, size):
        yield slice(s, min(total, s + size))


def _rows_sign(
    terms: np.ndarray, osign: np.ndarray, denom: np.ndarray, ctx: ContribContext
) -> tuple[np.ndarray, np.ndarray]:
    """Sign table of a ``(N, P, F)`` block of terms; only rows with ``osign != 0`` are analysed.

    Returns the ``(N, P, F)`` int8 signs and the row mask.
    """
    mask = osign != 0
    if mask.all():
        f = terms.shape[-1]
        return sign_terms(terms.reshape(-1, f), osign.ravel(), denom.ravel(), ctx).reshape(terms.shape), mask
    full = np.zeros(terms.shape, np.int8)
    if mask.any():
        full[mask] = sign_terms(terms[mask], osign[mask], denom[mask], ctx)
    return full, mask


def _unsupported(ctx: ContribContext, why: str) -> UnsupportedOpError:
    n = ctx.node
    return UnsupportedOpError.for_node(n, "contributions", why)


def conv_contributions(ctx: ContribContext) -> ContribResult:
    """Conv: ``y[c, p] = sum_{cin, k} W[c, cin, k] * x[cin, window_p(k)] + b[c]`` (any groups, N-d).

    Raises:
        UnsupportedOpError: the weight has neurons (a weight computed from the input).
    """
    node = ctx.node
    dx, w, y = ctx.dx[0], ctx.x[1], ctx.y[0]
    if ctx.dx[1] is not None or w is None:
        raise _unsupported(ctx, "a Conv whose weight depends on the input is not supported")
    if dx is None:
        return ContribResult()
    groups = int(node.attr("group", 1))
    bsz, cin = dx.shape[:2]
    cout = w.shape[0]
    cin_g, cout_g = cin // groups, cout // groups
    kernel = tuple(w.shape[2:])
    idx = node_windows(node, dx.shape[2:], y.shape[2:], kernel)
    npos, kp = idx.shape
    osign = ctx.out_sign().reshape(bsz, cout, -1)
    denom = ctx.denominator().reshape(bsz, cout, -1)
    in_inc = np.zeros((bsz, cin, *(dx.shape[2:] if not ctx.channel else ())), np.int32)
    syn = np.zeros(w.shape, np.int64)
    for g in range(groups):
        ci, co = slice(g * cin_g, (g + 1) * cin_g), slice(g * cout_g, (g + 1) * cout_g)
        cols = gather_windows(dx[:, ci], idx)  # (B, cin_g, P, K)
        w2 = w[co].reshape(cout_g, cin_g * kp).astype(np.float32)
        if ctx.channel:
            _conv_channel(ctx, cols, w2, osign[:, co, 0], denom[:, co, 0], in_inc, syn, ci, co, kp)
            continue
        cols = cols.transpose(0, 2, 1, 3).reshape(bsz, npos, cin_g * kp)
        fan = cols.shape[2]
        icols = np.zeros((bsz, npos, fan), np.int32)
        per_p = max(1, ctx.chunk // max(1, fan))
        for b in range(bsz):
            if not osign[b, co].any():
                continue
            for pb in _blocks(npos, per_p):
                for cb in _blocks(cout_g, per_p // max(1, pb.stop - pb.start)):
                    osg = osign[b, co][cb, pb]
                    if not osg.any():
                        continue
                    terms = w2[cb, None, :] * cols[b, pb][None, :, :]
                    full, _ = _rows_sign(terms, osg, denom[b, co][cb, pb], ctx)
                    syn[co][cb] += ctx.synapse_signs(full).sum(axis=1, dtype=np.int32).reshape(-1, *syn.shape[1:])
                    icols[b, pb] += full.sum(axis=0, dtype=np.int32)
        back = icols.reshape(bsz, npos, cin_g, kp).transpose(0, 2, 1, 3)
        in_inc[:, ci] += scatter_windows(back, idx, dx.shape[2:])
    return ContribResult(inputs={0: in_inc}, synapses={1: syn})


def _conv_channel(
    ctx: ContribContext,
    cols: np.ndarray,
    w2: np.ndarray,
    osign: np.ndarray,
    denom: np.ndarray,
    in_inc: np.ndarray,
    syn: np.ndarray,
    ci: slice,
    co: slice,
    kp: int,
) -> None:
    """Channel-level Conv for one group: terms over input channels (see the module docstring)."""
    cin_g = cols.shape[1]
    cout_g = w2.shape[0]
    mean_cols = cols.mean(axis=2, dtype=np.float64)  # (B, cin_g, K): mean over positions
    wk = w2.reshape(cout_g, cin_g, kp).astype(np.float64)
    terms = np.einsum("oik,bik->boi", wk, mean_cols)  # (B, cout_g, cin_g)
    full, _ = _rows_sign(terms, osign, denom, ctx)
    in_inc[:, ci] += full.sum(axis=1, dtype=np.int32)
    pair = ctx.synapse_signs(full).sum(axis=0, dtype=np.int64)  # (cout_g, cin_g)
    syn[co] += np.broadcast_to(pair.reshape(cout_g, cin_g, *([1] * (syn.ndim - 2))), syn[co].shape)


def dense_contributions(ctx: ContribContext) -> ContribResult:
    """Gemm and MatMul whose data operand holds neurons and whose other operand is constant.

    ``Gemm``: ``y = alpha * A' @ B' + beta * C`` with A the data (B' may be transposed); ``MatMul``:
    ``x (B, ..., K) @ W (K, N)``. Each output neuron's terms are ``alpha * W[k, n] * dx[k]``.

    Raises:
        UnsupportedOpError: both operands hold neurons (attention-like products), the data operand is
            the second one, or a channel-level MatMul on values of rank > 2.
    """
    node = ctx.node
    if ctx.dx[1] is not None:
        raise _unsupported(
            ctx,
            f"{node.op_type} whose second operand depends on the input (a product of two activations) "
            "has no contributions rule",
        )
    dx, w = ctx.dx[0], ctx.x[1]
    if dx is None or w is None:
        return ContribResult()
    if node.op_type == "Gemm":
        if node.attr("transA", 0):
            raise _unsupported(ctx, "Gemm with transA=1 on a batched data operand is not supported")
        wt = w.T if node.attr("transB", 0) else w
        alpha = float(node.attr("alpha", 1.0))
    else:
        if w.ndim != 2:
            raise _unsupported(ctx, "MatMul with a batched constant operand (rank > 2) is not supported")
        wt, alpha = w, 1.0
    if ctx.channel and dx.ndim > 2:
        raise _unsupported(ctx, "granularity='channel' is undefined for MatMul on rank > 2 values; use 'element'")
    k, n = wt.shape
    lead = dx.shape[:-1]
    rows_x = dx.reshape(-1, k).astype(np.float32)
    osign = ctx.out_sign().reshape(-1, n)
    denom = ctx.denominator().reshape(-1, n)
    wn = (alpha * wt.T).astype(np.float32)  # (N, K)
    in_inc = np.zeros(rows_x.shape, np.int32)
    syn_t = np.zeros((n, k), np.int64)
    per = max(1, ctx.chunk // max(1, n * k))
    for rb in _blocks(rows_x.shape[0], per):
        osg = osign[rb]
        if not osg.any():
            continue
        terms = rows_x[rb, None, :] * wn[None, :, :]  # (r, N, K)
        full, _ = _rows_sign(terms, osg, denom[rb], ctx)
        syn_t += ctx.synapse_signs(full).sum(axis=0, dtype=np.int64)
        in_inc[rb] += full.sum(axis=1, dtype=np.int32)
    syn = syn_t if node.op_type == "Gemm" and node.attr("transB", 0) else syn_t.T
    return ContribResult(inputs={0: in_inc.reshape(*lead, k)}, synapses={1: np.ascontiguousarray(syn)})


REGISTRY.register("contributions", "Conv")(conv_contributions)
REGISTRY.register("contributions", "Gemm")(dense_contributions)
# MatMul: registered in einsum.py, which keeps this rule for x @ W and adds the product of two activations
