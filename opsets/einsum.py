"""Einsum equations made explicit: ellipses spelled out as letters, implicit outputs resolved.

Shared by the ``vjp`` and ``contributions`` rules of Einsum and of MatMul (``...ik,...kj->...ij``). Pure
functions of the equation and the operand ranks.
"""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Sequence

import numpy as np

__all__ = ["broadcast_operands", "explicit", "has_diagonal", "matmul_equation"]


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
