"""What every ``contributions`` rule shares: its context, its result, the theta rule and sign helpers.

Terms. For one output neuron ``n`` a rule forms the *terms* ``t_i`` of its inputs (``w_i * dx_i`` for a
weighted sum, ``dx_i`` for a pool, ...). The local contribution is ``CONTRIB_n * dy_n * t_i``; only its
sign is kept (``CONTRIB_input += sign(contrib_i)``), so a rule works with ``sign(CONTRIB_n) * sign(dy_n)``
(:meth:`ContribContext.out_sign`) and ``sign(t_i)``.

Theta (ALGORITHMS.md 1.4), per output neuron of a weighted sum: sort its terms by ascending ``|t_i|``
and exclude the longest prefix ``1..j`` whose partial sums all stay small, ``|sum_{i<=j'} t_i| < theta *
|y_n|`` for every ``j' <= j`` (``"stays"``: the prefix ends at the first partial sum that reaches the
bound); keep the rest. ``|y_n| < 1e-12`` keeps every input. ``theta_denominator="delta"`` divides by
``|dy_n|``; ``theta_sum="abs"`` sums ``|t_i|`` instead of ``t_i``.

Nothing here touches a graph; arrays in, arrays out.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from onnxslice.errors import UnsupportedOpError

if TYPE_CHECKING:
    from onnxslice.model import Node

__all__ = [
    "DEFAULT_CHUNK",
    "ContribContext",
    "ContribResult",
    "Granularity",
    "blocks",
    "collapse",
    "rows_sign",
    "sign_terms",
    "theta_keep",
    "unsupported",
]


Granularity = Literal["element", "channel"]


ThetaDenominator = Literal["raw", "delta"]


ThetaSum = Literal["signed", "abs"]


Accumulate = Literal["signed", "abs"]


#: |y_n| below this keeps every input of n (the ratio in the theta rule is undefined).
ZERO_DENOMINATOR = 1e-12


#: Elements of the largest temporary a rule builds at once (terms of one chunk of output neurons).
DEFAULT_CHUNK = 1 << 21


def collapse(arr: np.ndarray) -> np.ndarray:
    """Channel-level view of a batched value: ``(B, C, *spatial) -> (B, C)`` by the spatial mean.

    Values of rank <= 2 (``(B, features)``) are their own channel view: a feature is a neuron.
    """
    if arr.ndim <= 2:
        return arr
    return arr.reshape(arr.shape[0], arr.shape[1], -1).mean(axis=2, dtype=np.float64).astype(arr.dtype, copy=False)


@dataclass
class ContribContext:
    """Everything a rule may read for one node and one batch of samples.

    Arrays carry the batch axis first where the value has one. ``dx[i]``/``dy[k]`` are None for values
    that hold no neurons (initializers, shape tensors, integer values). ``out_contrib[k]`` is the
    integer CONTRIB of output ``k`` (None when it has none); at ``granularity="channel"`` it is
    channel-level (``(B, C)`` for values of rank >= 3) and so must the input increments be, while
    ``x``, ``dx``, ``y`` and ``dy`` stay element-level (use :func:`collapse`).

    Attributes:
        node: the node.
        x: input values (recorded tensors, or initializer arrays); None for omitted inputs.
        dx: input deltas ``x - profiled mean``.
        y: output values.
        dy: output deltas.
        out_contrib: output CONTRIB tables.
        is_weight: whether input ``i`` is an initializer (a synapse holder).
        theta: the theta of the rule in (0, 1).
        theta_denominator: ``"raw"`` (``|y_n|``) or ``"delta"`` (``|dy_n|``).
        theta_sum: ``"signed"`` or ``"abs"`` partial sums.
        granularity: ``"element"`` or ``"channel"``.
        chunk: the most elements a rule's temporaries may hold at once.
        accumulate: how a weight's increments add up over its uses (positions, samples): ``"signed"``
            (``CONTRIB_w += sign(contrib)``, NNSlicer's rule) or ``"abs"`` (``CONTRIB_w += |sign(contrib)|``,
            the number of uses in which the synapse was significant). Neuron CONTRIB is always signed.
    """

    node: Node
    x: tuple[np.ndarray | None, ...]
    dx: tuple[np.ndarray | None, ...]
    y: tuple[np.ndarray, ...]
    dy: tuple[np.ndarray | None, ...]
    out_contrib: tuple[np.ndarray | None, ...]
    is_weight: tuple[bool, ...]
    theta: float = 0.3
    theta_denominator: ThetaDenominator = "raw"
    theta_sum: ThetaSum = "signed"
    granularity: Granularity = "element"
    chunk: int = DEFAULT_CHUNK
    accumulate: Accumulate = "signed"

    @property
    def channel(self) -> bool:
        """Whether the analysis runs at channel granularity."""
        return self.granularity == "channel"

    def view(self, arr: np.ndarray) -> np.ndarray:
        """``arr`` at the analysis granularity (channel means at channel level, else itself)."""
        return collapse(arr) if self.channel else arr

    def out_sign(self, k: int = 0) -> np.ndarray:
        """``sign(CONTRIB_n) * sign(dy_n)`` per output neuron of output ``k`` (int8, at the granularity)."""
        c = self.out_contrib[k]
        dy = self.dy[k]
        if c is None or dy is None:
            return np.zeros(self.view(self.y[k]).shape, np.int8)
        return (np.sign(c).astype(np.int8) * np.sign(self.view(dy)).astype(np.int8)).astype(np.int8)

    def denominator(self, k: int = 0) -> np.ndarray:
        """The theta denominator per output neuron: ``|y_n|`` or ``|dy_n|`` (float64, at the granularity)."""
        src = self.dy[k] if self.theta_denominator == "delta" and self.dy[k] is not None else self.y[k]
        assert src is not None
        return np.abs(self.view(src).astype(np.float64))

    def synapse_signs(self, full: np.ndarray) -> np.ndarray:
        """The per-use synapse increments to sum: ``full`` itself, or ``|full|`` with ``accumulate="abs"``."""
        return np.abs(full) if self.accumulate == "abs" else full

    def data_inputs(self) -> list[int]:
        """Indices of the inputs that hold neurons."""
        return [i for i, d in enumerate(self.dx) if d is not None]


@dataclass
class ContribResult:
    """CONTRIB increments a rule returns.

    Attributes:
        inputs: input index -> increment with the input's (batched) shape at the granularity (int32).
        synapses: input index of a weight initializer -> increment with the weight's shape, summed
            over the batch (int64).
    """

    inputs: dict[int, np.ndarray] = field(default_factory=dict)
    synapses: dict[int, np.ndarray] = field(default_factory=dict)


def _sort_keys(t: np.ndarray, theta_sum: ThetaSum) -> np.ndarray:
    """uint32 keys ordering ``|t|`` ascending; with signed sums the lowest bit carries ``t < 0``."""
    u = t.view(np.uint32)
    key = u & np.uint32(0x7FFFFFFF)
    if theta_sum == "signed":
        key &= np.uint32(0xFFFFFFFE)
        key |= u >> np.uint32(31)
    return key


#: Columns of sorted keys scanned at a time; rows leave the scan at their first crossing.
_SCAN_BLOCK = 256


def _cut(key: np.ndarray, denom: np.ndarray, theta: float, theta_sum: ThetaSum) -> np.ndarray:
    """Per row, the smallest key that is kept (``0xFFFFFFFF``, above every key, when none is).

    The partial sums are scanned in blocks of columns and a row stops at its first crossing; the carry
    is added to the block's first term, so the float32 sums are exactly those of one sequential cumsum.
    """
    rows, width = key.shape
    ks = np.sort(key, axis=1)
    bound = (theta * np.asarray(denom, np.float64)).astype(np.float32)
    cut = np.full(rows, 0xFFFFFFFF, np.uint32)
    active = np.arange(rows)
    carry = np.zeros(rows, np.float32)
    for start in range(0, width, _SCAN_BLOCK):
        blk = ks[:, start : start + _SCAN_BLOCK] if active.size == rows else ks[active, start : start + _SCAN_BLOCK]
        if theta_sum == "signed":
            vals = ((blk & np.uint32(0xFFFFFFFE)) | (blk << np.uint32(31))).view(np.float32)
        else:
            vals = np.array(blk, copy=True).view(np.float32)
        vals[:, 0] += carry[active]
        partial = np.cumsum(vals, axis=1, dtype=np.float32)
        last = partial[:, -1].copy()
        np.abs(partial, out=partial)
        reached = partial >= bound[active, None]
        first = reached.argmax(axis=1)
        at = np.arange(active.size)
        hit = reached[at, first]
        cut[active[hit]] = blk[at[hit], first[hit]]
        carry[active] = last
        active = active[~hit]
        if active.size == 0:
            break
    cut[np.asarray(denom) < ZERO_DENOMINATOR] = 0
    return cut


def theta_keep(
    terms: np.ndarray,
    denom: np.ndarray,
    theta: float,
    theta_sum: ThetaSum = "signed",
) -> np.ndarray:
    """Which terms of each row survive the theta rule (see the module docstring).

    Args:
        terms: ``(R, F)`` terms ``t_i`` of R output neurons with F inputs each (float).
        denom: ``(R,)`` the denominator ``|y_n|`` (or ``|dy_n|``) per row.
        theta: the threshold in (0, 1).
        theta_sum: ``"signed"`` or ``"abs"`` partial sums.

    Returns:
        ``(R, F)`` boolean mask of the kept terms.

    The sort runs on uint32 keys (the bits of ``|t_i|``, whose lowest mantissa bit is replaced by the
    sign of ``t_i``), so one integer sort (fast in numpy for rows up to 512) yields both the order and
    the signed values. Partial sums are float32, like the recorded activations. Ties and decoded values
    differ from exact arithmetic by at most one unit in the last place of ``|t_i|``, so only a decision
    within about 1e-6 (relative) of the bound can differ from a float64 evaluation.
    """
    t = np.ascontiguousarray(terms, dtype=np.float32)
    if t.size == 0:
        return np.zeros(t.shape, bool)
    key = _sort_keys(t, theta_sum)
    keep: np.ndarray = key >= _cut(key, denom, theta, theta_sum)[:, None]
    return keep


def sign_terms(terms: np.ndarray, out_sign: np.ndarray, denom: np.ndarray | None, ctx: ContribContext) -> np.ndarray:
    """``sign(contrib_i)`` of R output neurons' F terms, theta applied when ``denom`` is given.

    Args:
        terms: ``(R, F)`` terms.
        out_sign: ``(R,)`` ``sign(CONTRIB_n) * sign(dy_n)``.
        denom: ``(R,)`` theta denominators, or None for ops that apply no theta.
        ctx: the rule context (theta options).

    Returns:
        ``(R, F)`` int8 in {-1, 0, 1}.
    """
    t = np.ascontiguousarray(terms, dtype=np.float32)
    s = np.sign(t).astype(np.int8)
    s *= out_sign.astype(np.int8)[:, None]
    if denom is not None and t.size:
        key = _sort_keys(t, ctx.theta_sum)
        s *= (key >= _cut(key, denom, ctx.theta, ctx.theta_sum)[:, None]).view(np.int8)
    return s


def blocks(total: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` (at least 1) covering ``range(total)``."""
    size = max(1, size)
    for s in range(0, total, size):
        yield slice(s, min(total, s + size))


def rows_sign(
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


def unsupported(ctx: ContribContext, why: str) -> UnsupportedOpError:
    """The one-line error of a configuration the ``contributions`` rule of this node refuses."""
    n = ctx.node
    return UnsupportedOpError.for_node(n, "contributions", why)
