"""Sliding-window index maps (im2col as indices) shared by Conv and the pooling rules.

For an N-d input of spatial shape ``S`` and an op with kernel ``K``, strides, dilations and pads, the
map ``idx[p, k]`` gives the flat spatial index of the input element that output position ``p`` reads
through kernel offset ``k``, or ``prod(S)`` (a sentinel one past the end) where it reads padding.
Gathering through a map is im2col; :func:`scatter_windows` is its transpose (col2im).
Nothing here reads a graph: the caller passes the node's attributes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from onnxslice.model import Node


@lru_cache(maxsize=256)
def window_index(
    spatial: tuple[int, ...],
    out: tuple[int, ...],
    kernel: tuple[int, ...],
    strides: tuple[int, ...],
    dilations: tuple[int, ...],
    pads_begin: tuple[int, ...],
) -> np.ndarray:
    """The ``(P, prod(K))`` index map (see the module docstring); cached, read-only."""
    sentinel = int(np.prod(spatial))
    flat = np.zeros((1, 1), np.int64)
    valid = np.ones((1, 1), bool)
    for size, o, k, s, d, pb in zip(spatial, out, kernel, strides, dilations, pads_begin, strict=True):
        pos = np.arange(o)[:, None] * s - pb + np.arange(k)[None, :] * d  # (o, k)
        ok = (pos >= 0) & (pos < size)
        flat = (flat[:, None, :, None] * size + pos[None, :, None, :]).reshape(flat.shape[0] * o, -1)
        valid = (valid[:, None, :, None] & ok[None, :, None, :]).reshape(flat.shape)
    idx = np.where(valid, flat, sentinel)
    idx.setflags(write=False)
    return idx


def node_windows(node: Node, spatial: Sequence[int], out: Sequence[int], kernel: Sequence[int]) -> np.ndarray:
    """The index map of a Conv/pool node from its attributes (``auto_pad`` resolved from ``out``)."""
    n = len(spatial)
    strides = tuple(node.attr("strides", [1] * n))
    dilations = tuple(node.attr("dilations", [1] * n))
    pads_begin = tuple(window_pads(node.attr, spatial, out, kernel)[0])
    return window_index(tuple(spatial), tuple(out), tuple(kernel), strides, dilations, pads_begin)


def gather_windows(arr: np.ndarray, idx: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """``(B, C, *S)`` -> ``(B, C, P, K)``: each output position's window, ``fill`` where it is padding."""
    b, c = arr.shape[:2]
    flat = arr.reshape(b, c, -1)
    padded = np.concatenate([flat, np.full((b, c, 1), fill, dtype=arr.dtype)], axis=2)
    return padded[:, :, idx]


def first_max_steps(windows: Iterable[np.ndarray], y: np.ndarray) -> Iterator[np.ndarray]:
    """The max-pooling tie rule, one decision for every capability: the *first* input holding the maximum.

    ``windows`` yields, per kernel offset in row-major window order, the values every window reads there
    (padding ``-inf``), each shaped like the window maxima ``y``. Yields, per offset, the mask of the windows
    whose first maximum is at that offset: the input that PyTorch's and onnxruntime's MaxPool gradients
    credit (the index output of ``MaxPool``), so the VJP and the contributions of MaxPool and GlobalMaxPool
    route ties the same way (``docs/maxpool_ties.md``). Each step is one pass over every window.
    """
    taken: np.ndarray | None = None
    for vals in windows:
        hit = vals == y
        if taken is None:
            taken = hit.copy()
        else:
            hit &= ~taken
            taken |= hit
        yield hit


def first_max(cols: np.ndarray, y: np.ndarray) -> np.ndarray:
    """:func:`first_max_steps` on windows laid out on the last axis of ``cols`` (``y``: ``cols.shape[:-1]``).

    Returns a boolean mask of ``cols``' shape, True at each window's first maximum.
    """
    y = np.asarray(y)
    return np.stack(list(first_max_steps(np.moveaxis(cols, -1, 0), y)), axis=-1)


def scatter_windows(cols: np.ndarray, idx: np.ndarray, spatial: Sequence[int]) -> np.ndarray:
    """Transpose of :func:`gather_windows` for integer tables: ``(B, C, P, K)`` summed into ``(B, C, *S)``."""
    b, c = cols.shape[:2]
    size = int(np.prod(spatial))
    base = (np.arange(b * c, dtype=np.int64) * (size + 1))[:, None]
    flat = (base + idx.reshape(1, -1)).ravel()
    summed = np.bincount(flat, weights=cols.reshape(b * c, -1).ravel(), minlength=b * c * (size + 1))
    out = summed.reshape(b, c, size + 1)[:, :, :size]
    return np.rint(out).astype(np.int32).reshape(b, c, *spatial)


Attr = Callable[[str, Any], Any]


def same_pads(total: int, mode: str) -> tuple[int, int]:
    """(begin, end) split of ``total`` padding cells for ``auto_pad`` SAME_UPPER / SAME_LOWER."""
    half = total // 2
    return (half, total - half) if mode == "SAME_UPPER" else (total - half, half)


def window_pads(
    attr: Attr, in_sp: Sequence[int], out_sp: Sequence[int], kernel: Sequence[int]
) -> tuple[list[int], list[int]]:
    """Begin and end pads of a Conv / pooling window, from ``pads`` or ``auto_pad`` and the output size.

    Args:
        attr: the node's attribute getter, ``attr(name, default)`` (``Node.attr`` or a rule context's).
        in_sp: spatial input size.
        out_sp: spatial output size (resolves ``auto_pad``).
        kernel: spatial kernel size.
    """
    r = len(in_sp)
    strides = [int(s) for s in attr("strides", [1] * r)]
    dil = [int(d) for d in attr("dilations", [1] * r)]
    mode = attr("auto_pad", "NOTSET")
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        both = [
            same_pads(max(0, (o - 1) * s + (k - 1) * d + 1 - i), mode)
            for i, o, k, s, d in zip(in_sp, out_sp, kernel, strides, dil, strict=True)
        ]
        return [b for b, _ in both], [e for _, e in both]
    if mode == "VALID":
        return [0] * r, [0] * r
    pads = [int(p) for p in attr("pads", [0] * (2 * r))]
    return pads[:r], pads[r:]


def window(k: Sequence[int], dil: Sequence[int], stride: Sequence[int], n: Sequence[int]) -> tuple[slice, ...]:
    """The slices of a padded input that kernel offset ``k`` reads for ``n`` output positions per axis."""
    return tuple(
        slice(ki * di, ki * di + si * (ni - 1) + 1, si) for ki, di, si, ni in zip(k, dil, stride, n, strict=True)
    )


def pad_to(x: np.ndarray, begin: Sequence[int], length: Sequence[int], fill: float = 0.0) -> np.ndarray:
    """``x`` [N, C, *sp] placed at ``begin`` in a zero (``fill``) array of spatial size ``length``.

    Returns ``x`` itself (no copy) when that placement is the identity: treat the result as read-only.
    """
    if all(b == 0 for b in begin) and list(x.shape[2:]) == [int(v) for v in length]:
        return x
    shape = (*x.shape[:2], *length)
    out = np.zeros(shape, dtype=x.dtype) if fill == 0 else np.full(shape, fill, dtype=x.dtype)  # zeros: no pass
    src = []
    dst = []
    for b, n, L in zip(begin, x.shape[2:], length, strict=True):
        lo, hi = max(b, 0), min(b + n, L)
        dst.append(slice(lo, hi))
        src.append(slice(lo - b, hi - b))
    out[(slice(None), slice(None), *dst)] = x[(slice(None), slice(None), *src)]
    return out


def crop(x: np.ndarray, begin: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """Inverse of :func:`pad_to`: the ``size`` window at ``begin`` (zeros outside ``x``)."""
    return pad_to(x, [-b for b in begin], size)
