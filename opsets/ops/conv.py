"""Conv and ConvTranspose: the convolution family, every capability in one place.

Facts: a Conv weight is ``[C_out, C_in / group, k...]`` (output channels on axis 0, :func:`conv_out_axis`), a
ConvTranspose weight ``[C_in, C_out / group, k...]`` (axis 1, :func:`conv_transpose_out_axis`); both read
their padding through :func:`onnxslice.opsets.geometry.window_pads` and pair an element ``p`` of the small
side with ``p * stride + k * dilation`` of the padded large side (the output for Conv, the input for
ConvTranspose): :func:`conv_geometry`.

- ``vjp`` (any spatial rank; strides, pads, auto_pad, dilations, groups): the rules are written against the
  primitives; their eager kernels (:mod:`onnxslice.opsets.vjp.conv_kernels`) loop over kernel offsets only
  and do one batched matmul per offset over the groups, so no im2col matrix is built; a depthwise
  convolution becomes elementwise products. Per-sample weight gradients keep the sample axis in the same
  matmuls.
- ``contributions``: a weighted sum. Output neuron ``n`` has terms ``t_i = w_i * dx_i`` over its fan-in;
  theta selects the significant ones; ``CONTRIB_{x_i} += sign(contrib_i)`` and ``CONTRIB_{w_i} +=
  sign(contrib_i)`` with ``contrib_i = CONTRIB_n * dy_n * t_i``. A weight is shared across positions, so
  its CONTRIB sums over every position (and sample) where it was used. ConvTranspose is the same rule on
  the adjoint: ``Yfull[o, p * s + k * d] += X[c, p] * W[c, o, k]`` (per group), cropped by the pads. At
  channel level a filter is a neuron (its activation the spatial mean): the terms of output channel ``c``
  are its input channels, ``t_cin = sum_k W[c, cin, k] * mean_p dx[cin, window_p(k)]``, and every kernel
  weight of a kept pair gets the pair's sign. Work is vectorised over chunks of at most ``ctx.chunk``
  temporary elements; output neurons with CONTRIB 0 are skipped.
- ``prune``: asked on its output, a Conv with a constant weight is a *source* (its filters and bias
  entries are the group's); asked on its input, a *sink* (the matching in-channels of its weight go). A
  depthwise Conv passes the channels through (its filters and ``group`` shrink with them); a grouped Conv
  can be a source (the same number of filters leaves each group) but not a sink. ConvTranspose (group 1)
  likewise on its axis-1 output channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxslice.errors import UnsupportedOpError

from ..capabilities.contrib import ContribContext, ContribResult, blocks, rows_sign, sign_terms, unsupported
from ..capabilities.info import OpInfo, register_info
from ..capabilities.prune import Context, CountEdit, Effect, Port, Ref, bias_cut, blocked
from ..capabilities.vjp import Grads, VjpContext, int_list
from ..coverage import computed, refuses
from ..geometry import Attr, gather_windows, node_windows, same_pads, scatter_windows, window_pads
from ..registry import REGISTRY
from ..vjp.eager import prim_vjp
from ..vjp.prims import ConvGeometry, Prims

if TYPE_CHECKING:
    from onnxslice.model import Node


# -- info: static metadata ---------------------------------------------------------------------------


def conv_out_axis(attr: Attr, rank: int, weight_input: int) -> int:
    """Conv weights are ``[C_out, C_in / group, k...]``: output channels on axis 0."""
    return 0


def conv_transpose_out_axis(attr: Attr, rank: int, weight_input: int) -> int:
    """ConvTranspose weights are ``[C_in, C_out / group, k...]``: output channels on axis 1."""
    return 1


def conv_transpose_begin(attr: Attr, in_sp: Sequence[int], out_sp: Sequence[int], kernel: Sequence[int]) -> list[int]:
    """Begin crop of a ConvTranspose output inside its uncropped full result, per spatial axis.

    From ``pads`` (begins), or from ``auto_pad`` / ``output_shape`` and the output size (``output_padding``
    counted), as onnxruntime resolves them; the VJP and the contributions rule both crop by it.
    """
    r = len(in_sp)
    strides = [int(v) for v in attr("strides", [1] * r)]
    dil = [int(v) for v in attr("dilations", [1] * r)]
    opad = [int(v) for v in attr("output_padding", [0] * r)]
    mode = attr("auto_pad", "NOTSET")
    if mode == "NOTSET" and attr("output_shape", None) is None:
        return [int(v) for v in attr("pads", [0] * (2 * r))][:r]
    if mode == "VALID":
        return [0] * r
    begins = []
    for i, o, k, s, d, op in zip(in_sp, out_sp, kernel, strides, dil, opad, strict=True):
        total = s * (i - 1) + op + (k - 1) * d + 1 - o
        begins.append(same_pads(max(total, 0), "SAME_UPPER" if mode == "SAME_UPPER" else "SAME_LOWER")[0])
    return begins


register_info("Conv", OpInfo("weighted", layer_weights=(1,), bias_input=2, out_axis=conv_out_axis, fault_inputs=(1,)))
register_info("ConvTranspose", OpInfo("weighted", layer_weights=(1,), bias_input=2, out_axis=conv_transpose_out_axis))

# -- vjp: gradients ----------------------------------------------------------------------------------


def _bias_grad(P: Prims, ctx: VjpContext, g: Any) -> Any:
    """The bias cotangent of a convolution: ``g`` summed over the samples (kept with ``keep``) and positions."""
    nd = len(P.shape(g))
    axes = tuple(range(2, nd)) if ctx.keep(2) else (0, *range(2, nd))
    return P.cast(P.reduce_sum(g, axes), P.dtype(ctx.x(2)))


def conv_geometry(
    ctx: VjpContext, x_shape: Sequence[int], w_shape: Sequence[int], g_shape: Sequence[int]
) -> ConvGeometry:
    """The static window geometry of a Conv node at these shapes."""
    r = len(x_shape) - 2
    kernel = list(w_shape[2:])
    strides = int_list(ctx.attr("strides", [1] * r))
    dil = int_list(ctx.attr("dilations", [1] * r))
    in_sp, out_sp = list(x_shape[2:]), list(g_shape[2:])
    begin, end = window_pads(ctx.attr, in_sp, out_sp, kernel)
    length = [
        max(b + i, (o - 1) * s + (k - 1) * d + 1)
        for b, i, o, s, k, d in zip(begin, in_sp, out_sp, strides, kernel, dil, strict=True)
    ]
    return ConvGeometry(
        tuple(kernel), tuple(strides), tuple(dil), tuple(begin), tuple(end), tuple(length), int(ctx.attr("group", 1))
    )


@prim_vjp("Conv", per_sample=True)
def conv(P: Prims, ctx: VjpContext) -> Grads:
    """Conv: ``Y[n, o, p] = sum_{c,k} W[o, c, k] Xpad[n, g(o) c, p*s + k*d] + B[o]``.

    Written against the primitives: the input cotangent is ``conv_input_grad`` (a transposed
    convolution), the weight cotangent ``conv_weight_grad``, the bias cotangent a sum. Their eager
    kernels are :func:`conv_input_grad` and :func:`conv_weight_grad` below.
    """
    x, w = ctx.x(0), ctx.x(1)
    g = ctx.g(0)
    xs, ws = P.shape(x), P.shape(w)
    geom = conv_geometry(ctx, xs, ws, P.shape(g))
    out: Grads = [None] * len(ctx.ins)
    if ctx.need(0):
        out[0] = P.conv_input_grad(g, w, xs, geom)
    if ctx.need(1):
        out[1] = P.conv_weight_grad(x, g, ws, geom, ctx.keep(1))
    if ctx.has(2) and ctx.need(2):
        out[2] = _bias_grad(P, ctx, g)
    return out


@prim_vjp("ConvTranspose", per_sample=True)
def conv_transpose(P: Prims, ctx: VjpContext) -> Grads:
    """ConvTranspose: ``Yfull[n, o, p*s + k*d] += X[n, c, p] W[c, o, k]``, Y = Yfull cropped by the pads.

    With ``Gfull`` the output cotangent placed back in the uncropped output, the input cotangent is
    a plain convolution of ``Gfull`` by ``W`` (same strides, dilations and groups) and the weight
    cotangent is the ``conv_weight_grad`` of that convolution with the roles of input and output
    swapped.
    """
    x, w = ctx.x(0), ctx.x(1)
    g = ctx.g(0)
    xs, ws, gs = P.shape(x), P.shape(w), P.shape(g)
    groups = int(ctx.attr("group", 1))
    r = len(xs) - 2
    kernel = list(ws[2:])
    strides = int_list(ctx.attr("strides", [1] * r))
    dil = int_list(ctx.attr("dilations", [1] * r))
    in_sp, out_sp = list(xs[2:]), list(gs[2:])
    begin = conv_transpose_begin(ctx.attr, in_sp, out_sp, kernel)
    full = [
        max((i - 1) * s + (k - 1) * d + 1, b + o)
        for i, s, k, d, b, o in zip(in_sp, strides, kernel, dil, begin, out_sp, strict=True)
    ]
    geom = ConvGeometry(tuple(kernel), tuple(strides), tuple(dil), (0,) * r, (0,) * r, tuple(full), groups)
    gp = P.place(g, begin, full)  # cotangent of the uncropped output
    out: Grads = [None] * len(ctx.ins)
    if ctx.need(0):
        out[0] = P.conv(gp, w, xs, geom)
    if ctx.need(1):
        out[1] = P.conv_weight_grad(gp, x, ws, geom, ctx.keep(1))
    if ctx.has(2) and ctx.need(2):
        out[2] = _bias_grad(P, ctx, g)
    return out


# -- contributions: NNSlicer -------------------------------------------------------------------------


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
    begin = tuple(conv_transpose_begin(node.attr, in_sp, out_sp, kernel))
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
        for pb in blocks(npos, per):
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


def conv_contributions(ctx: ContribContext) -> ContribResult:
    """Conv: ``y[c, p] = sum_{cin, k} W[c, cin, k] * x[cin, window_p(k)] + b[c]`` (any groups, N-d).

    Raises:
        UnsupportedOpError: the weight has neurons (a weight computed from the input).
    """
    node = ctx.node
    dx, w, y = ctx.dx[0], ctx.x[1], ctx.y[0]
    if ctx.dx[1] is not None or w is None:
        raise unsupported(ctx, "a Conv whose weight depends on the input is not supported")
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
            for pb in blocks(npos, per_p):
                for cb in blocks(cout_g, per_p // max(1, pb.stop - pb.start)):
                    osg = osign[b, co][cb, pb]
                    if not osg.any():
                        continue
                    terms = w2[cb, None, :] * cols[b, pb][None, :, :]
                    full, _ = rows_sign(terms, osg, denom[b, co][cb, pb], ctx)
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
    full, _ = rows_sign(terms, osign, denom, ctx)
    in_inc[:, ci] += full.sum(axis=1, dtype=np.int32)
    pair = ctx.synapse_signs(full).sum(axis=0, dtype=np.int64)  # (cout_g, cin_g)
    syn[co] += np.broadcast_to(pair.reshape(cout_g, cin_g, *([1] * (syn.ndim - 2))), syn[co].shape)


REGISTRY.register("contributions", "Conv")(conv_contributions)

refuses("contributions", "Conv", "a weight computed from the input", computed(1))


# -- prune: channel groups ---------------------------------------------------------------------------


class ConvRule:
    """Conv: output channels on axis 1; weight ``[C_out, C_in/group, k...]``."""

    def _weight(self, node: Node, ctx: Context) -> tuple[int, int, int] | str:
        w = node.input(1)
        if not ctx.is_const(w):
            return f"its weight '{w}' is computed at run time"
        shape = ctx.const(w).shape
        g = int(node.attr("group", 1))
        return int(shape[0]), int(shape[1]) * g, g

    def source_ref(self, node: Node, ctx: Context) -> Ref | str:
        """Output channels of a plain or grouped Conv; depthwise Convs follow their input instead."""
        got = self._weight(node, ctx)
        if isinstance(got, str):
            return got
        c_out, c_in, g = got
        if g > 1 and g == c_in:
            return "a depthwise Conv keeps the channels of its input (pruned with the layer before it)"
        return Ref(1, 0, 1, c_out)

    def __call__(self, node: Node, ctx: Context, port: Port, ref: Ref) -> Effect:
        got = self._weight(node, ctx)
        if isinstance(got, str):
            return blocked(got)
        c_out, c_in, g = got
        side, i = port
        if (side, i) not in (("in", 0), ("out", 0)):
            return blocked(f"channels arrive on {side}put {i} (its weight or bias is computed at run time)")
        if ref.axis != 1:
            return blocked(f"the group is on axis {ref.axis}, not the channel axis")
        w = node.input(1)
        depthwise = g > 1 and g == c_in
        if depthwise:
            m = c_out // c_in  # filters per input channel (depth multiplier)
            if side == "out":
                if ref.offset % m or ref.block % m:
                    return blocked("the channels do not align with whole depthwise filters")
                out_ref, in_ref = ref, Ref(1, ref.offset // m, ref.block // m, ref.size)
            else:
                in_ref, out_ref = ref, ref.moved(1, ref.offset * m, m)
            bias = bias_cut(node, ctx, 2, out_ref)
            if isinstance(bias, str):
                return blocked(bias)
            other = (node.outputs[0], out_ref) if side == "in" else (node.inputs[0], in_ref)
            return Effect(
                refs=(other,),
                cuts=((w, out_ref.moved(0, out_ref.offset, 1)), *bias),
                counts=(CountEdit("attr", in_ref.block, name="group"),),
            )
        if side == "in":
            if g > 1:
                return blocked(f"a grouped Conv (group={g}) ties its input channels together by group")
            return Effect(cuts=((w, ref),))
        if g > 1 and (ref.offset, ref.block, ref.size) != (0, 1, c_out):
            return blocked("a grouped Conv's filters are reached through a Concat or Flatten")
        bias = bias_cut(node, ctx, 2, ref)
        if isinstance(bias, str):
            return blocked(bias)
        out_axis = conv_out_axis(node.attr, 2, 1)
        return Effect(cuts=((w, ref.moved(out_axis, ref.offset, 1)), *bias), source=True, segments=g)


class ConvTransposeRule:
    """ConvTranspose (group 1): weight ``[C_in, C_out, k...]``."""

    def source_ref(self, node: Node, ctx: Context) -> Ref | str:
        """Output channels on axis 1."""
        w = node.input(1)
        if not ctx.is_const(w):
            return f"its weight '{w}' is computed at run time"
        if int(node.attr("group", 1)) != 1:
            return "a grouped ConvTranspose is left alone"
        return Ref(1, 0, 1, int(ctx.const(w).shape[conv_transpose_out_axis(node.attr, 2, 1)]))

    def __call__(self, node: Node, ctx: Context, port: Port, ref: Ref) -> Effect:
        why = self.source_ref(node, ctx)
        if isinstance(why, str):
            return blocked(why)
        side, i = port
        if (side, i) not in (("in", 0), ("out", 0)) or ref.axis != 1:
            return blocked(f"channels arrive on {side}put {i} axis {ref.axis}")
        w = node.input(1)
        out_axis = conv_transpose_out_axis(node.attr, 2, 1)
        if side == "in":
            return Effect(cuts=((w, ref.moved(1 - out_axis, ref.offset, 1)),))
        bias = bias_cut(node, ctx, 2, ref)
        if isinstance(bias, str):
            return blocked(bias)
        return Effect(cuts=((w, ref.moved(out_axis, ref.offset, 1)), *bias), source=True)


REGISTRY.register("prune", "Conv")(ConvRule())


REGISTRY.register("prune", "ConvTranspose")(ConvTransposeRule())
