"""The eager backend of the VJP primitives: numpy arrays and the engine's fast CPU kernels.

Every primitive runs at once. Elementwise work is plain numpy (Python numbers keep the array's
type), matrix products go through :func:`.kernels.matmul` (onnxruntime's MLAS GEMM for large float32
products), convolution gradients through the kernels of :mod:`.conv` (onnxruntime's ConvTranspose,
im2col GEMMs, the vectorized depthwise and pointwise paths) and pooling through the window loop of
:mod:`.pool`. Rules run on :data:`EAGER` produce exactly the numbers those kernels produce.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .prims import ConvGeometry, Prims

__all__ = ["EAGER", "EagerPrims"]

_FUNCS = {"exp": np.exp, "log": np.log, "sin": np.sin, "cos": np.cos, "tanh": np.tanh, "abs": np.abs, "sign": np.sign}
_CMP = {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal, "==": np.equal}


def _typed(v: np.ndarray | float, like: np.ndarray | float) -> np.ndarray | float:
    """A Python number as a 0-d array of ``like``'s type (so ``where`` keeps that type)."""
    if isinstance(v, np.ndarray) or not isinstance(like, np.ndarray):
        return v
    return np.asarray(v, dtype=like.dtype)


class EagerPrims(Prims):
    """Numpy implementation of :class:`~.prims.Prims`."""

    eager = True

    def shape(self, x: np.ndarray) -> tuple[int, ...]:
        return tuple(np.shape(x))

    def dtype(self, x: np.ndarray) -> np.dtype[Any]:
        return np.asarray(x).dtype

    def value(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x)

    def add(self, a: np.ndarray, b: np.ndarray | float) -> np.ndarray:
        return a + b

    def sub(self, a: np.ndarray, b: np.ndarray | float) -> np.ndarray:
        return a - b

    def mul(self, a: np.ndarray, b: np.ndarray | float) -> np.ndarray:
        return a * b

    def div(self, a: np.ndarray, b: np.ndarray | float) -> np.ndarray:
        return a / b

    def neg(self, a: np.ndarray) -> np.ndarray:
        return -a

    def sqrt(self, a: np.ndarray) -> np.ndarray:
        return np.sqrt(a)

    def reciprocal(self, a: np.ndarray) -> np.ndarray:
        return 1.0 / a

    def scalar_div(self, c: float, a: np.ndarray) -> np.ndarray:
        return c / a

    def func(self, name: str, a: np.ndarray) -> np.ndarray:
        if name == "erf":
            from .unary import erf_values

            return erf_values(a)
        return _FUNCS[name](a)

    def power(self, a: np.ndarray, b: np.ndarray | float) -> np.ndarray:
        return np.power(a, b)

    def maximum(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.maximum(a, b)

    def compare(self, op: str, a: np.ndarray, b: np.ndarray | float) -> np.ndarray:
        return _CMP[op](a, b)

    def logical(self, op: str, a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
        if op == "not":
            return ~a
        return (a & b) if op == "and" else (a | b)

    def where(self, cond: np.ndarray, a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
        return np.where(cond, _typed(a, b), _typed(b, a))

    def cast(self, x: np.ndarray, dtype: Any) -> np.ndarray:
        return np.asarray(x).astype(dtype, copy=False)

    def reduce_sum(self, x: np.ndarray, axes: Sequence[int], keepdims: bool = False, acc: Any = None) -> np.ndarray:
        return np.asarray(x.sum(axis=tuple(axes), keepdims=keepdims, dtype=acc))

    def dot_sum(self, a: np.ndarray, b: np.ndarray, axes: Sequence[int], acc: Any) -> np.ndarray:
        letters = "abcdefghijklmnop"[: a.ndim]
        kept = "".join(c for i, c in enumerate(letters) if i not in set(axes))
        return np.einsum(f"{letters},{letters}->{kept}", a, b, dtype=acc)

    def reduce_max(self, x: np.ndarray, axes: Sequence[int], keepdims: bool = False) -> np.ndarray:
        return np.asarray(x.max(axis=tuple(axes), keepdims=keepdims))

    def reshape(self, x: np.ndarray, shape: Sequence[int]) -> np.ndarray:
        return np.reshape(x, tuple(shape))

    def transpose(self, x: np.ndarray, perm: Sequence[int]) -> np.ndarray:
        return np.transpose(x, tuple(perm))

    def broadcast_to(self, x: np.ndarray, shape: Sequence[int]) -> np.ndarray:
        return np.array(np.broadcast_to(x, tuple(shape)))  # materialized: rules may own their results

    def slice(self, x: np.ndarray, axis: int, start: int, end: int) -> np.ndarray:
        return x[(slice(None),) * axis + (slice(start, end),)]

    def matmul(self, a: np.ndarray, b: np.ndarray, trans_a: bool = False, trans_b: bool = False) -> np.ndarray:
        from .kernels import matmul

        return matmul(a, b, trans_a=trans_a, trans_b=trans_b)

    def place(self, x: np.ndarray, begin: Sequence[int], length: Sequence[int]) -> np.ndarray:
        from .conv import pad_to

        return pad_to(x, begin, length)

    def conv(self, x: np.ndarray, w: np.ndarray, out_shape: Sequence[int], geom: ConvGeometry) -> np.ndarray:
        from .conv import conv_forward

        return conv_forward(x, w, out_shape, geom)

    def conv_input_grad(self, g: np.ndarray, w: np.ndarray, x_shape: Sequence[int], geom: ConvGeometry) -> np.ndarray:
        from .conv import conv_input_grad

        return conv_input_grad(g, w, x_shape, geom)

    def conv_weight_grad(
        self, x: np.ndarray, g: np.ndarray, w_shape: Sequence[int], geom: ConvGeometry, keep: bool = False
    ) -> np.ndarray:
        from .conv import conv_weight_grad

        return conv_weight_grad(x, g, w_shape, geom, keep)

    def window_sum_grad(self, g: np.ndarray, x_shape: Sequence[int], geom: ConvGeometry) -> np.ndarray:
        from .pool import window_sum_grad

        return window_sum_grad(g, x_shape, geom)

    def max_pool_grad(self, x: np.ndarray, y: np.ndarray, g: np.ndarray, geom: ConvGeometry) -> np.ndarray:
        from .pool import max_pool_grad

        return max_pool_grad(x, y, g, geom)


#: The eager backend the engine runs primitive rules on.
EAGER = EagerPrims()
