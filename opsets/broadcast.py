"""The reduction every broadcasting op applies on the way back: one definition for every capability.

A value of shape ``shape`` that numpy broadcasting stretched to ``arr.shape`` (leading axes added, size-1
axes repeated) receives, from each capability's backward rule, the *sum* over those added and stretched
axes: the VJP rules sum cotangents (eagerly, or as emitted ONNX nodes through
:meth:`onnxslice.opsets.vjp.prims.Prims.unbroadcast`), the contribution rules sum integer CONTRIB counts.
Which axes those are is decided once, by :func:`unbroadcast_axes`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["PerSampleUnsupported", "unbroadcast", "unbroadcast_axes"]


class PerSampleUnsupported(Exception):
    """A rule cannot give per-sample cotangents for this node; the engine falls back to a sample loop."""


def unbroadcast_axes(
    from_shape: Sequence[int], shape: Sequence[int], keep_batch: bool = False
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The axes of ``from_shape`` to sum (kept as size 1) and the shape to reshape the sum to.

    With ``keep_batch`` the sample axis 0 of ``from_shape`` is kept: the result shape is ``[N, *shape]``,
    the per-sample cotangent of a batch-independent operand.

    Raises:
        PerSampleUnsupported: ``keep_batch`` and the operand itself spans the sample axis.
    """
    src = tuple(int(s) for s in from_shape)
    shape = tuple(int(s) for s in shape)
    if not keep_batch:
        lead = len(src) - len(shape)
        axes = tuple(range(lead)) + tuple(i + lead for i, s in enumerate(shape) if s == 1 and src[i + lead] != 1)
        return axes, shape
    tshape = (1,) * (len(src) - len(shape)) + shape
    if len(src) == 0 or tshape[0] != 1:
        raise PerSampleUnsupported("the operand spans the sample axis")
    axes = tuple(i for i in range(1, len(src)) if tshape[i] == 1 and src[i] != 1)
    return axes, (src[0], *shape)


def unbroadcast(arr: np.ndarray, shape: Sequence[int], keep_batch: bool = False) -> np.ndarray:
    """Sum ``arr`` over the axes that broadcasting added or stretched to reach ``arr.shape`` from ``shape``.

    Returns an array of exactly ``shape`` (``arr`` itself when nothing was broadcast), or ``[N, *shape]``
    with ``keep_batch`` (see :func:`unbroadcast_axes`).
    """
    axes, out = unbroadcast_axes(arr.shape, shape, keep_batch)
    if not keep_batch and arr.shape == out:
        return arr
    r = arr.sum(axis=axes, keepdims=True) if axes else arr
    return r.reshape(out)
