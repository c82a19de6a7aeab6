"""Sliding-window index maps (im2col as indices) shared by Conv and the pooling rules.

For an N-d input of spatial shape ``S`` and an op with kernel ``K``, strides, dilations and pads, the
map ``idx[p, k]`` gives the flat spatial index of the input element that output position ``p`` reads
through kernel offset ``k``, or ``prod(S)`` (a sentinel one past the end) where it reads padding.
Gathering through a map is im2col; :func:`scatter_windows` is its transpose (col2im).
Nothing here reads a graph: the caller passes the node's attributes.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from ..geometry import window_pads

if TYPE_CHECKING:
    from onnxslice.model import Node

__all__ = ["gather_windows", "node_windows", "scatter_windows", "window_index"]


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


def scatter_windows(cols: np.ndarray, idx: np.ndarray, spatial: Sequence[int]) -> np.ndarray:
    """Transpose of :func:`gather_windows` for integer tables: ``(B, C, P, K)`` summed into ``(B, C, *S)``."""
    b, c = cols.shape[:2]
    size = int(np.prod(spatial))
    base = (np.arange(b * c, dtype=np.int64) * (size + 1))[:, None]
    flat = (base + idx.reshape(1, -1)).ravel()
    summed = np.bincount(flat, weights=cols.reshape(b * c, -1).ravel(), minlength=b * c * (size + 1))
    out = summed.reshape(b, c, size + 1)[:, :, :size]
    return np.rint(out).astype(np.int32).reshape(b, c, *spatial)
