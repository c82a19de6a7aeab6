"""The reduction every broadcasting op applies on the way back: one definition for every capability.

A value of shape ``shape`` that numpy broadcasting stretched to ``arr.shape`` (leading axes added, size-1
axes repeated) receives, from each capability's backward rule, the *sum* over those added and stretched
axes: the VJP rules sum cotangents, the contribution rules sum integer CONTRIB counts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["unbroadcast"]


def unbroadcast(arr: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Sum ``arr`` over the axes that broadcasting added or stretched to reach ``arr.shape`` from ``shape``.

    Returns an array of exactly ``shape`` (``arr`` itself when nothing was broadcast).
    """
    shape = tuple(int(s) for s in shape)
    if arr.shape == shape:
        return arr
    lead = arr.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(i + lead for i, s in enumerate(shape) if s == 1 and arr.shape[i + lead] != 1)
    out = arr.sum(axis=axes, keepdims=True) if axes else arr
    return out.reshape(shape)
