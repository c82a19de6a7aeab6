"""Products of activations: MatMul of two activations (attention) and Einsum, split between the operands.

Output neuron ``y_n = sum_c prod_i x_i[n, c]`` (``c`` runs over the contracted letters). Its first-order
expansion around the sample, ``dy_n ≈ sum_c sum_i (prod_{j != i} x_j) dx_i``, gives each contracted
combination one term per operand that holds neurons: for ``A @ B``, ``t_A = b_kj * da_ik`` and
``t_B = a_ik * db_kj`` (the ``dA B + A dB`` decomposition; the second-order ``dA dB`` is dropped, as the
``Mul`` rule does for two activations). All ``2K`` terms of a neuron go through theta together (denominator
``|y_n|``, or ``|dy_n|``), so the operand whose change explains the output keeps the CONTRIB: a query, a
key and a value position are each credited with what they contribute to that attention output. A kept
term adds its sign to its input neuron; an operand that is an initializer is a synapse holder and gets the
signs of the other operands' terms (``x @ W`` reduces to the weighted-sum rule of ``Gemm``).

``MatMul`` with a constant right operand keeps the dense rule (:mod:`.weighted`). Refused: channel
granularity (the contracted axes mix channels), repeated letters inside one operand (diagonals).
Temporaries hold at most ``ctx.chunk`` elements (chunks along the first output letter, the samples).
"""

from __future__ import annotations

import numpy as np

from onnxslice.errors import UnsupportedOpError

from ..broadcast import unbroadcast
from ..coverage import computed, refuses
from ..einsum import broadcast_operands, explicit, has_diagonal, matmul_equation
from ..registry import REGISTRY
from .base import ContribContext, ContribResult, sign_terms
from .weighted import dense_contributions

__all__ = ["einsum_contributions", "matmul_contributions", "product_contributions"]


def product_contributions(ctx: ContribContext, subs: list[str], out: str) -> ContribResult:
    """The rule for an explicit equation ``subs -> out`` over the node's operands (see the module docstring)."""
    node = ctx.node
    n = len(subs)
    if ctx.channel:
        raise UnsupportedOpError.for_node(
            node,
            "contributions",
            f"granularity='channel' is undefined for a {node.op_type} of activations; use 'element'",
        )
    if any(len(set(s)) != len(s) for s in [*subs, out]):
        raise UnsupportedOpError.for_node(
            node, "contributions", "an Einsum with a repeated subscript inside one operand (a diagonal)"
        )
    xs = [ctx.x[i] for i in range(n)]
    if any(x is None for x in xs):
        return ContribResult()
    data = [i for i in range(n) if ctx.dx[i] is not None]
    if not data:
        return ContribResult()
    vals = broadcast_operands(subs, [np.asarray(x, np.float32) for x in xs])
    dels = [np.broadcast_to(np.asarray(ctx.dx[i], np.float32), vals[i].shape) for i in data]
    contracted = "".join(dict.fromkeys(c for s in subs for c in s if c not in out))
    full = out + contracted
    size = {c: d for s, v in zip(subs, vals, strict=True) for c, d in zip(s, v.shape, strict=True)}
    osign = ctx.out_sign().reshape(ctx.y[0].shape)
    denom = ctx.denominator().reshape(ctx.y[0].shape)
    n_out_rest = int(np.prod([size[c] for c in out[1:]])) if out else 1
    k = int(np.prod([size[c] for c in contracted])) if contracted else 1
    inc = {i: np.zeros(vals[i].shape, np.int64) for i in data}
    syn = {i: np.zeros(vals[i].shape, np.int64) for i in range(n) if i not in data and ctx.is_weight[i]}
    lead = out[0] if out else None
    total = size[lead] if lead else 1
    step = max(1, ctx.chunk // max(1, n_out_rest * k * len(data)))
    for start in range(0, total, step):
        sl = slice(start, min(total, start + step))

        def cut(sub: str, arr: np.ndarray, sl: slice = sl) -> np.ndarray:
            if lead is None or lead not in sub:
                return arr
            idx = [slice(None)] * arr.ndim
            idx[sub.index(lead)] = sl
            return arr[tuple(idx)]

        osg = osign[sl] if lead else osign
        if not osg.any():
            continue
        terms = []
        for pos, i in enumerate(data):
            others = [j for j in range(n) if j != i]
            eq = ",".join([subs[i], *[subs[j] for j in others]]) + "->" + full
            terms.append(np.einsum(eq, cut(subs[i], dels[pos]), *[cut(subs[j], vals[j]) for j in others]))
        shape = terms[0].shape
        rows = int(np.prod(shape[: len(out)]))
        t = np.stack([x.reshape(rows, k) for x in terms], axis=1).reshape(rows, len(data) * k)
        flat_sign = np.asarray(osg).reshape(rows)
        s = np.zeros(t.shape, np.int8)
        live = flat_sign != 0
        s[live] = sign_terms(
            t[live], flat_sign[live], np.asarray(denom[sl] if lead else denom).reshape(rows)[live], ctx
        )
        s3 = s.reshape(rows, len(data), k)
        for pos, i in enumerate(data):
            si = s3[:, pos].reshape(shape).astype(np.int64)
            part = np.einsum(f"{full}->{subs[i]}", si)
            target = cut(subs[i], inc[i])
            target += part
            for w in syn:
                tw = cut(subs[w], syn[w])
                tw += np.einsum(f"{full}->{subs[w]}", si)
    res = ContribResult()
    for i in data:
        dx = ctx.dx[i]
        assert dx is not None
        res.inputs[i] = unbroadcast(inc[i], dx.shape).reshape(dx.shape).astype(np.int32)
    for w, v in syn.items():
        x = xs[w]
        assert x is not None
        res.synapses[w] = unbroadcast(v, x.shape).reshape(x.shape)
    return res


def einsum_contributions(ctx: ContribContext) -> ContribResult:
    """Einsum (any number of operands, ellipses, implicit output)."""
    xs = ctx.x
    if any(x is None for x in xs):
        return ContribResult()
    subs, out = explicit(str(ctx.node.attr("equation")), [x.ndim for x in xs])  # type: ignore[union-attr]
    return product_contributions(ctx, subs, out)


def matmul_contributions(ctx: ContribContext) -> ContribResult:
    """MatMul: the dense rule for ``x @ W``; the product rule when the right operand holds neurons too."""
    if ctx.dx[1] is None and ctx.dx[0] is not None:
        return dense_contributions(ctx)
    a, b = ctx.x[0], ctx.x[1]
    if a is None or b is None:
        return ContribResult()
    sa, sb, out = matmul_equation(a.ndim, b.ndim)
    return product_contributions(ctx, [sa, sb], out)


REGISTRY.register("contributions", "Einsum", since=12)(einsum_contributions)
REGISTRY.register("contributions", "MatMul")(matmul_contributions)
refuses(
    "contributions",
    "Einsum",
    "a repeated subscript inside one operand",
    lambda n, m: has_diagonal(str(n.attr("equation"))),
)
refuses("contributions", "Einsum", "granularity='channel'")
refuses("contributions", "MatMul", "granularity='channel' for a product of two activations", computed(1))
