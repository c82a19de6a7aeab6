"""ConvTranspose contributions: the weighted-sum rule on the adjoint of a convolution.

``Yfull[o, p * s + k * d] += X[c, p] * W[c, o, k]`` (per group), and ``Y`` is ``Yfull`` cropped by the pads
(``pads``, ``auto_pad``, ``output_padding`` and ``output_shape`` resolved as the VJP rule does). Output
neuron ``(o, q)`` is a weighted sum whose terms are ``W[c, o, k] * dx[c, p]`` over every input channel
``c`` of its group and every ``(p, k)`` with ``p * s + k * d - begin = q``; theta selects the significant
ones exactly as for Conv, and a kept term adds its sign to the input neuron ``(c, p)`` and to the synapse
``W[c, o, k]``.

Channel level (a filter is a neuron, its activation the spatial mean): the terms of output channel ``o`` are
its input channels, ``t_c = sum_k W[c, o, k] * mean_q (dx[c, p(q, k)])``, the channel mean of the linear
part; every kernel weight of a kept (c, o) pair gets the pair's sign.

Work is vectorised over output positions in chunks of at most ``ctx.chunk`` temporary elements.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from onnxslice.errors import UnsupportedOpError

from ..coverage import computed, refuses
from ..geometry import same_pads
from ..registry import REGISTRY
from .base import ContribContext, ContribResult, sign_terms

__all__ = ["conv_transpose_contributions", "transpose_index"]


def _begin(node: object, in_sp: Sequence[int], out_sp: Sequence[int], kernel: Sequence[int]) -> list[int]:
    """Begin crop of the output inside the uncropped full result (the VJP rule's geometry)."""
    attr = node.attr  # type: ignore[attr-defined]
    r = len(in_sp)
    strides = [int(v) for v in attr("strides", [1] * r)]
    dil = [int(v) for v in attr("dilations", [1] * r)]
    opad = [int(v) for v in attr("output_padding", [0] * r)]
    mode = attr("auto_pad", "NOTSET")
    if mode == "NOTSET" and attr("output_shape") is None:
        return [int(v) for v in attr("pads", [0] * (2 * r))][:r]
    if mode == "VALID":
        return [0] * r
    begins = []
    for i, o, k, s, d, op in zip(in_sp, out_sp, kernel, strides, dil, opad, strict=True):
        total = s * (i - 1) + op + (k - 1) * d + 1 - o
        begins.append(same_pads(max(total, 0), "SAME_UPPER" if mode == "SAME_UPPER" else "SAME_LOWER")[0])
    return begins


@lru_cache(maxsize=128)
def transpose_index(
    in_sp: tuple[int, ...],
    out_sp: tuple[int, ...],
    kernel: tuple[int, ...],
    strides: tuple[int, ...],
    dilations: tuple[int, ...],
    begin: tuple[int, ...],
) -> tuple[np.ndarray, np.ndarray]:
    """``(P_out, F)`` flat input position and flat kernel offset of each term of each output position.

    Padding entries have input position ``prod(in_sp)`` (a sentinel) and kernel offset 0.
    """
    p_all = np.zeros((1, 1), np.int64)
    k_all = np.zeros((1, 1), np.int64)
    ok_all = np.ones((1, 1), bool)
    for n_in, n_out, kk, s, d, b in zip(in_sp, out_sp, kernel, strides, dilations, begin, strict=True):
        q = np.arange(n_out)[:, None, None]
        p = np.arange(n_in)[None, :, None]
        k = np.arange(kk)[None, None, :]
        hit = p * s + k * d - b == q  # (out, in, k)
        count = int(hit.sum(axis=(1, 2)).max(initial=0))
        pd = np.zeros((n_out, max(count, 1)), np.int64)
        kd = np.zeros_like(pd)
        okd = np.zeros(pd.shape, bool)
        for qi in range(n_out):
            pp, kq = np.nonzero(hit[qi])
            pd[qi, : pp.size], kd[qi, : pp.size], okd[qi, : pp.size] = pp, kq, True
        p_all = (p_all[:, None, :, None] * n_in + pd[None, :, None, :]).reshape(p_all.shape[0] * n_out, -1)
        k_all = (k_all[:, None, :, None] * kk + kd[None, :, None, :]).reshape(p_all.shape)
        ok_all = (ok_all[:, None, :, None] & okd[None, :, None, :]).reshape(p_all.shape)
    sentinel = int(np.prod(in_sp))
    p_idx = np.where(ok_all, p_all, sentinel)
    k_idx = np.where(ok_all, k_all, 0)
    p_idx.setflags(write=False)
    k_idx.setflags(write=False)
    return p_idx, k_idx


def _blocks(total: int, size: int) -> list[slice]:
    size = max(1, size)
    return [slice(s, min(total, s + size)) for s in range(0, total, size)]


def conv_transpose_contributions(ctx: ContribContext) -> ContribResult:
    """ConvTranspose (any groups, N-d; see the module docstring).

    Raises:
        UnsupportedOpError: the weight depends on the input.
    """
    node = ctx.node
    dx, w, y = ctx.dx[0], ctx.x[1], ctx.y[0]
    if ctx.dx[1] is not None or w is None:
        raise UnsupportedOpError.for_node(
            node, "contributions", "a ConvTranspose whose weight depends on the input is not supported"
        )
    if dx is None:
        return ContribResult()
    groups = int(node.attr("group", 1))
    bsz, cin = dx.shape[:2]
    in_sp, out_sp = tuple(dx.shape[2:]), tuple(y.shape[2:])
    cout = y.shape[1]
    cin_g, cout_g = cin // groups, cout // groups
    kernel = tuple(w.shape[2:])
    r = len(in_sp)
    strides = tuple(int(v) for v in node.attr("strides", [1] * r))
    dil = tuple(int(v) for v in node.attr("dilations", [1] * r))
    begin = tuple(_begin(node, in_sp, out_sp, kernel))
    p_idx, k_idx = transpose_index(in_sp, out_sp, kernel, strides, dil, begin)
    npos, fan = p_idx.shape
    kp = int(np.prod(kernel))
    n_in = int(np.prod(in_sp))
    osign = ctx.out_sign().reshape(bsz, cout, -1)
    denom = ctx.denominator().reshape(bsz, cout, -1)
    in_inc = np.zeros((bsz, cin, *(in_sp if not ctx.channel else ())), np.int64)
    syn = np.zeros(w.shape, np.int64)
    flat_dx = np.concatenate([dx.reshape(bsz, cin, n_in), np.zeros((bsz, cin, 1), dx.dtype)], axis=2)
    for g in range(groups):
        ci, co = slice(g * cin_g, (g + 1) * cin_g), slice(g * cout_g, (g + 1) * cout_g)
        wg = w[ci].reshape(cin_g, cout_g, kp).astype(np.float32)  # [c, o, k]
        if ctx.channel:
            _channel(ctx, flat_dx[:, ci], wg, p_idx, k_idx, osign[:, co, 0], denom[:, co, 0], in_inc, syn, ci, co)
            continue
        per = max(1, ctx.chunk // max(1, cout_g * cin_g * fan))
        for pb in _blocks(npos, per):
            pi, ki = p_idx[pb], k_idx[pb]  # (p, F)
            wq = wg[:, :, ki]  # (c, o, p, F)
            for b in range(bsz):
                osg = osign[b, co, pb]  # (o, p)
                if not osg.any():
                    continue
                cols = flat_dx[b, ci][:, pi].astype(np.float32)  # (c, p, F)
                terms = (wq * cols[:, None]).transpose(1, 2, 0, 3)  # (o, p, c, F)
                rows = osg != 0
                s = np.zeros(terms.shape, np.int8)
                s[rows] = sign_terms(
                    terms[rows].reshape(-1, cin_g * fan), osg[rows], denom[b, co, pb][rows], ctx
                ).reshape(-1, cin_g, fan)
                # inputs: (c, p_in) gets the sum over o of its terms
                per_in = s.sum(axis=0, dtype=np.int64)  # (p, c, F)
                target = (np.arange(cin_g)[None, :, None] * (n_in + 1) + pi[:, None, :]).ravel()
                acc = np.bincount(target, weights=per_in.ravel(), minlength=cin_g * (n_in + 1))
                in_inc[b, ci] += np.rint(acc).astype(np.int64).reshape(cin_g, n_in + 1)[:, :n_in].reshape(cin_g, *in_sp)
                # synapses: W[c, o, k]
                widx = (np.arange(cout_g)[:, None, None, None] * cin_g + np.arange(cin_g)[None, None, :, None]) * kp
                widx = widx + ki[None, :, None, :]
                got = np.bincount(widx.ravel(), weights=s.ravel().astype(np.float64), minlength=cout_g * cin_g * kp)
                syn[ci] += np.rint(got).astype(np.int64).reshape(cout_g, cin_g, *kernel).swapaxes(0, 1)
    return ContribResult(inputs={0: in_inc.astype(np.int32)}, synapses={1: syn})


def _channel(
    ctx: ContribContext,
    flat_dx: np.ndarray,
    wg: np.ndarray,
    p_idx: np.ndarray,
    k_idx: np.ndarray,
    osign: np.ndarray,
    denom: np.ndarray,
    in_inc: np.ndarray,
    syn: np.ndarray,
    ci: slice,
    co: slice,
) -> None:
    """Channel-level terms ``t[o, c] = sum_k W[c, o, k] * mean_q dx[c, p(q, k)]`` for one group."""
    bsz, cin_g = flat_dx.shape[:2]
    kp = wg.shape[2]
    npos = p_idx.shape[0]
    gathered = flat_dx[:, :, p_idx].astype(np.float64)  # (B, c, P, F); the sentinel reads 0
    mean_k = np.zeros((bsz, cin_g, kp))
    for k in range(kp):
        mean_k[:, :, k] = np.where(k_idx == k, gathered, 0.0).sum(axis=(2, 3)) / npos
    terms = np.einsum("cok,bck->boc", wg.astype(np.float64), mean_k)  # (B, o, c)
    s = np.zeros(terms.shape, np.int8)
    rows = osign != 0
    if rows.any():
        s[rows] = sign_terms(terms[rows], osign[rows], denom[rows], ctx)
    in_inc[:, ci] += s.sum(axis=1, dtype=np.int64)
    pair = s.sum(axis=0, dtype=np.int64)  # (o, c)
    syn[ci] += np.broadcast_to(pair.T.reshape(cin_g, -1, *([1] * (syn.ndim - 2))), syn[ci].shape)


REGISTRY.register("contributions", "ConvTranspose")(conv_transpose_contributions)
refuses("contributions", "ConvTranspose", "a weight computed from the input", computed(1))
