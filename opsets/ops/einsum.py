"""Einsum, and the product rule MatMul of two activations shares with it.

Facts: equations are parsed and made explicit (ellipses, implicit outputs) once, here.

- ``vjp``: each operand's cotangent is an einsum of the output cotangent with the other operands,
  ``dX_i = einsum(out, others -> subs_i)(dY, X_j...)``; repeated letters inside one operand (diagonals)
  are refused.
- ``contributions``: products of activations, split between the operands. Output neuron ``y_n = sum_c
  prod_i x_i[n, c]`` (``c`` runs over the contracted letters); its first-order expansion around the
  sample gives each contracted combination one term per operand that holds neurons: for ``A @ B``,
  ``t_A = b_kj * da_ik`` and ``t_B = a_ik * db_kj`` (the second-order ``dA dB`` is dropped, as the ``Mul``
  rule does for two activations). All terms of a neuron go through theta together, so the operand whose
  change explains the output keeps the CONTRIB (a query, a key and a value position are each credited); an
  operand that is an initializer is a synapse holder. Refused: channel granularity (the contracted axes mix
  channels), diagonals. Temporaries hold at most ``ctx.chunk`` elements.
"""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Sequence

import numpy as np

from onnxslice.errors import UnsupportedOpError

from ..broadcast import unbroadcast
from ..capabilities.contrib import ContribContext, ContribResult, sign_terms
from ..capabilities.vjp import Grads, VjpContext, vjp
from ..coverage import refuses
from ..registry import REGISTRY

# -- facts of the family -----------------------------------------------------------------------------


def explicit(equation: str, ranks: Sequence[int]) -> tuple[list[str], str]:
    """The operands' and the output's subscripts with ``...`` replaced by fresh letters (right-aligned).

    Raises:
        ValueError: the equation does not match the operand count or ranks.
    """
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise ValueError(f"the equation has {len(terms)} operands, the node {len(ranks)}")
    used = set(eq) - {".", ",", "-", ">"}
    free = [c for c in string.ascii_letters if c not in used]
    ell_rank = max((r - len(t.replace("...", "")) for t, r in zip(terms, ranks, strict=True) if "..." in t), default=0)
    ell = "".join(free[:ell_rank])
    out_terms = []
    for t, r in zip(terms, ranks, strict=True):
        if "..." in t:
            n = r - len(t.replace("...", ""))
            t = t.replace("...", ell[ell_rank - n :] if n else "")
        if len(t) != r:
            raise ValueError(f"subscripts '{t}' do not match an operand of rank {r}")
        out_terms.append(t)
    if arrow:
        out = rhs.replace("...", ell)
    else:
        counts = Counter("".join(out_terms))
        out = ell + "".join(sorted(c for c, k in counts.items() if k == 1 and c not in ell))
    return out_terms, out


def matmul_equation(ra: int, rb: int) -> tuple[str, str, str]:
    """Subscripts of ``MatMul`` operands of ranks ``ra``, ``rb`` (numpy semantics, 1-D promoted and dropped)."""
    batch = max(max(ra, rb) - 2, 0)
    letters = [c for c in string.ascii_letters if c not in "ikj"]
    b = "".join(letters[: max(batch, 0)])
    a_sub = "k" if ra == 1 else b[len(b) - (ra - 2) :] + "ik"
    b_sub = "k" if rb == 1 else b[len(b) - (rb - 2) :] + "kj"
    out = b + ("" if ra == 1 else "i") + ("" if rb == 1 else "j")
    return a_sub, b_sub, out


def broadcast_operands(subs: Sequence[str], arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The operands broadcast so that every letter has one size (numpy einsum needs it for explicit letters)."""
    size: dict[str, int] = {}
    for sub, a in zip(subs, arrays, strict=True):
        for c, n in zip(sub, a.shape, strict=True):
            size[c] = max(size.get(c, 1), int(n))
    return [np.broadcast_to(a, tuple(size[c] for c in sub)) for sub, a in zip(subs, arrays, strict=True)]


def has_diagonal(equation: str) -> bool:
    """Whether a subscript repeats inside one operand or the output (``ii->i``)."""
    parts = equation.replace(" ", "").replace("->", ",").split(",")
    return any(len(set(t.replace("...", ""))) != len(t.replace("...", "")) for t in parts)


# -- vjp: gradients ----------------------------------------------------------------------------------


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

# -- contributions: NNSlicer -------------------------------------------------------------------------


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


REGISTRY.register("contributions", "Einsum", since=12)(einsum_contributions)


refuses(
    "contributions",
    "Einsum",
    "a repeated subscript inside one operand",
    lambda n, m: has_diagonal(str(n.attr("equation"))),
)


refuses("contributions", "Einsum", "granularity='channel'")
