"""Axis conventions shared by every capability: negative axes, and where a Reduce op keeps its axes.

ONNX moved ``axes`` from an attribute to input 1 across opsets (ReduceSum at 13, the other Reduce ops
at 18) and added ``noop_with_empty_axes``; every rule that reads a reduction decodes it here, from the
values it has (recorded tensors or constants). Pure functions: nothing here reads a graph.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np


def normalize_axis(axis: int, rank: int) -> int:
    """``axis`` made non-negative for a tensor of ``rank`` dimensions."""
    return axis + rank if axis < 0 else axis


def normalize_axes(axes: Iterable[int], rank: int) -> list[int]:
    """Every axis made non-negative, order kept."""
    return [normalize_axis(int(a), rank) for a in axes]


def reduce_axes(attr_axes: Any, input_axes: Any, noop_with_empty_axes: Any, rank: int) -> list[int] | None:
    """The axes a Reduce op reduces, sorted; None when it is the identity.

    Args:
        attr_axes: the ``axes`` attribute (older opsets), or None.
        input_axes: the values of input 1 (newer opsets), or None when absent.
        noop_with_empty_axes: the attribute of that name (0 when absent).
        rank: the rank of the reduced input.
    """
    axes = attr_axes if attr_axes is not None else input_axes
    flat = [] if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]
    if not flat:
        return None if int(noop_with_empty_axes or 0) else list(range(rank))
    return sorted(normalize_axes(flat, rank))


def add_along_axis(out: np.ndarray, idx: np.ndarray, axis: int, values: Any) -> None:
    """``out[..., idx, ...] += values`` along ``axis``, in place, repeated indices accumulating.

    The transpose of ``np.take_along_axis``: where TopK, GatherElements and their CONTRIB routing send
    what an output element read back to the input element it read.
    """
    grid: list[np.ndarray] = list(np.indices(idx.shape, sparse=True))
    grid[axis] = idx
    np.add.at(out, tuple(grid), values)
