"""Gemm and MatMul (and MatMulNBits' metadata): dense layers, every capability in one place.

Facts: which weight axis holds the neurons, :func:`gemm_out_axis` (``Y = alpha * A' B' + beta * C``: the
columns of ``B'`` for a weight B, the rows of ``A'`` for a weight A) and :func:`matmul_out_axis` (the last
axis of W in ``x @ W``, the second-to-last in ``W @ x``); ``Model.layers``, the slice records and the
rules below all read them.

- ``vjp``: batched, broadcasting and 1-D operands; per-sample cotangents of a batch-independent operand keep
  the sample axis of the other operand's product: ``dB[n] = A[n]^T dY[n]`` as one batched matmul.
- ``contributions``: with a constant operand, a weighted sum (terms ``alpha * W[k, n] * dx[k]`` through
  theta, as for Conv; the same at element and channel level on ``(B, features)``). MatMul of two
  activations (attention) is the product rule of :mod:`.einsum`.
- ``prune``: a Gemm or MatMul with a constant weight is a *source* on its output neurons (weight columns
  and bias go with them) and a *sink* on its input features (the matching weight rows go). A transformer
  MLP (MatMul -> activation -> MatMul) is one group.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..capabilities.contrib import ContribContext, ContribResult, blocks, rows_sign, unsupported
from ..capabilities.info import OpInfo, register_info
from ..capabilities.prune import Context, Effect, Port, Ref, bias_cut, blocked
from ..capabilities.vjp import Grads, PerSampleUnsupported, VjpContext
from ..coverage import computed, rank_over, refuses
from ..geometry import Attr
from ..ops.einsum import matmul_equation, product_contributions
from ..registry import REGISTRY
from ..vjp.eager import prim_vjp
from ..vjp.prims import Prims

if TYPE_CHECKING:
    from onnxslice.model import Node


# -- info: static metadata ---------------------------------------------------------------------------


def gemm_out_axis(attr: Attr, rank: int, weight_input: int) -> int:
    """Gemm ``A' B'``: the neurons are the columns of ``B'`` (a weight B) or the rows of ``A'`` (a weight A)."""
    if weight_input == 1:
        return 0 if attr("transB", 0) else 1
    return 1 if attr("transA", 0) else 0


def matmul_out_axis(attr: Attr, rank: int, weight_input: int) -> int:
    """MatMul ``x @ W``: the neurons are W's last axis; ``W @ x``: W's second-to-last axis."""
    return rank - 1 if weight_input == 1 else rank - 2


register_info("Gemm", OpInfo("weighted", layer_weights=(1, 0), bias_input=2, out_axis=gemm_out_axis, fault_inputs=(1,)))
# a MatMul's dequantized weight may be either operand (``W @ x`` or ``x @ W``)
register_info("MatMul", OpInfo("weighted", layer_weights=(1, 0), out_axis=matmul_out_axis, fault_inputs=(0, 1)))
REGISTRY.add("info", "MatMulNBits", OpInfo("weighted"), domain="com.microsoft", since=1, origin=__name__)

# -- vjp: gradients ----------------------------------------------------------------------------------


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


# -- contributions: NNSlicer -------------------------------------------------------------------------


def matmul_contributions(ctx: ContribContext) -> ContribResult:
    """MatMul: the dense rule for ``x @ W``; the product rule when the right operand holds neurons too."""
    if ctx.dx[1] is None and ctx.dx[0] is not None:
        return dense_contributions(ctx)
    a, b = ctx.x[0], ctx.x[1]
    if a is None or b is None:
        return ContribResult()
    sa, sb, out = matmul_equation(a.ndim, b.ndim)
    return product_contributions(ctx, [sa, sb], out)


REGISTRY.register("contributions", "MatMul")(matmul_contributions)


refuses(
    "contributions",
    "Gemm",
    "transA=1, or a second operand computed from the input",
    lambda n, m: True if int(n.attr("transA", 0)) else computed(1)(n, m),
)
refuses(
    "contributions",
    "MatMul",
    "a constant right operand of rank > 2",
    lambda n, m: m.is_initializer(n.input(1)) and m.initializer(n.input(1)).ndim > 2,
)
refuses("contributions", "MatMul", "granularity='channel' on rank > 2 values", lambda n, m: rank_over(m, n.input(0), 2))
refuses("contributions", "MatMul", "granularity='channel' for a product of two activations", computed(1))


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
        raise unsupported(
            ctx,
            f"{node.op_type} whose second operand depends on the input (a product of two activations) "
            "has no contributions rule",
        )
    dx, w = ctx.dx[0], ctx.x[1]
    if dx is None or w is None:
        return ContribResult()
    if node.op_type == "Gemm":
        if node.attr("transA", 0):
            raise unsupported(ctx, "Gemm with transA=1 on a batched data operand is not supported")
        wt = w if gemm_out_axis(node.attr, 2, 1) == 1 else w.T  # (K, N)
        alpha = float(node.attr("alpha", 1.0))
    else:
        if w.ndim != 2:
            raise unsupported(ctx, "MatMul with a batched constant operand (rank > 2) is not supported")
        wt, alpha = w, 1.0
    if ctx.channel and dx.ndim > 2:
        raise unsupported(ctx, "granularity='channel' is undefined for MatMul on rank > 2 values; use 'element'")
    k, n = wt.shape
    lead = dx.shape[:-1]
    rows_x = dx.reshape(-1, k).astype(np.float32)
    osign = ctx.out_sign().reshape(-1, n)
    denom = ctx.denominator().reshape(-1, n)
    wn = (alpha * wt.T).astype(np.float32)  # (N, K)
    in_inc = np.zeros(rows_x.shape, np.int32)
    syn_t = np.zeros((n, k), np.int64)
    per = max(1, ctx.chunk // max(1, n * k))
    for rb in blocks(rows_x.shape[0], per):
        osg = osign[rb]
        if not osg.any():
            continue
        terms = rows_x[rb, None, :] * wn[None, :, :]  # (r, N, K)
        full, _ = rows_sign(terms, osg, denom[rb], ctx)
        syn_t += ctx.synapse_signs(full).sum(axis=0, dtype=np.int64)
        in_inc[rb] += full.sum(axis=1, dtype=np.int32)
    out_axis = gemm_out_axis(node.attr, 2, 1) if node.op_type == "Gemm" else matmul_out_axis(node.attr, 2, 1)
    syn = syn_t if out_axis == 0 else syn_t.T  # the weight's own layout
    return ContribResult(inputs={0: in_inc.reshape(*lead, k)}, synapses={1: np.ascontiguousarray(syn)})


REGISTRY.register("contributions", "Gemm")(dense_contributions)

# -- prune: channel groups ---------------------------------------------------------------------------


class GemmRule:
    """Gemm ``alpha * A' B' + beta * C`` with a constant B: neurons are columns of B'."""

    def source_ref(self, node: Node, ctx: Context) -> Ref | str:
        """Output neurons on axis 1."""
        b = node.input(1)
        if not ctx.is_const(b):
            return f"its operand B '{b}' is not a constant weight"
        return Ref(1, 0, 1, int(ctx.const(b).shape[gemm_out_axis(node.attr, 2, 1)]))

    def __call__(self, node: Node, ctx: Context, port: Port, ref: Ref) -> Effect:
        why = self.source_ref(node, ctx)
        if isinstance(why, str):
            return blocked(why)
        b = node.input(1)
        out_axis = gemm_out_axis(node.attr, 2, 1)
        side, i = port
        if (side, i) == ("in", 0):
            k_axis = 0 if node.attr("transA", 0) else 1
            if ref.axis != k_axis:
                return blocked(f"the group is on the rows of A (axis {ref.axis}), not its features")
            return Effect(cuts=((b, ref.moved(1 - out_axis, ref.offset, 1)),))
        if (side, i) != ("out", 0):
            return blocked(f"channels arrive on {side}put {i} (a weight or bias computed at run time)")
        if ref.axis != 1:
            return blocked("the group is on the batch axis of the output")
        bias = bias_cut(node, ctx, 2, ref)
        if isinstance(bias, str):
            return blocked(bias)
        return Effect(cuts=((b, ref.moved(out_axis, ref.offset, 1)), *bias), source=True)


class MatMulRule:
    """MatMul ``x @ W`` with a constant 2-D W: neurons are the columns of W, features its rows.

    A transformer MLP (MatMul -> activation -> MatMul) is one group: hidden units leave W1's columns,
    the bias Add, the activation and W2's rows together.
    """

    def source_ref(self, node: Node, ctx: Context) -> Ref | str:
        """Output neurons on the last axis."""
        w, out = node.input(1), node.outputs[0]
        if not ctx.is_const(w):
            return "it multiplies two activations (attention) or a constant first operand"
        if ctx.const(w).ndim != 2:
            return f"its weight '{w}' is not 2-D"
        s = ctx.shape(out)
        if s is None:
            return f"the rank of '{out}' is unknown"
        return Ref(len(s) - 1, 0, 1, int(ctx.const(w).shape[matmul_out_axis(node.attr, 2, 1)]))

    def __call__(self, node: Node, ctx: Context, port: Port, ref: Ref) -> Effect:
        got = self.source_ref(node, ctx)
        if isinstance(got, str):
            return blocked(got)
        w = node.input(1)
        side, i = port
        if (side, i) == ("in", 0):
            s = ctx.shape(node.inputs[0])
            if s is None or ref.axis != len(s) - 1:
                return blocked("the group is not on the feature (last) axis of the first operand")
            return Effect(cuts=((w, ref.moved(1 - matmul_out_axis(node.attr, 2, 1), ref.offset, 1)),))
        if (side, i) != ("out", 0) or ref.axis != got.axis:
            return blocked(f"channels arrive on {side}put {i} axis {ref.axis}")
        return Effect(cuts=((w, ref.moved(matmul_out_axis(node.attr, 2, 1), ref.offset, 1)),), source=True)


REGISTRY.register("prune", "Gemm")(GemmRule())


REGISTRY.register("prune", "MatMul")(MatMulRule())
