"""The eager backend of the VJP primitives: numpy arrays and the engine's fast CPU kernels.

Every primitive runs at once. Elementwise work is plain numpy (Python numbers keep the array's
type), matrix products go through :func:`.kernels.matmul` (onnxruntime's MLAS GEMM for large float32
products), convolution gradients through the kernels of :mod:`.conv_kernels` (onnxruntime's
ConvTranspose, im2col GEMMs, the vectorized depthwise and pointwise paths) and pooling through its window
loops. Rules run on :data:`EAGER` produce exactly the numbers those kernels produce.

:func:`prim_vjp` / :func:`register_prim` register a primitive rule as the VJP of op types; the engine calls
it on :data:`EAGER` (the ONNX lowering of :mod:`onnxslice.grad.lowering` calls the same rule on its own
backend).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..capabilities.vjp import register
from ..geometry import pad_to
from .conv_kernels import conv_forward, conv_input_grad, conv_weight_grad, max_pool_grad, window_sum_grad
from .kernels import matmul
from .prims import ConvGeometry, PrimFn, PrimRule, Prims

if TYPE_CHECKING:
    from ..capabilities.vjp import VjpContext

__all__ = ["EAGER", "EagerPrims", "erf_values", "prim_rule", "prim_vjp", "register_prim"]

_FUNCS = {"exp": np.exp, "log": np.log, "sin": np.sin, "cos": np.cos, "tanh": np.tanh, "abs": np.abs, "sign": np.sign}
_CMP = {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal, "==": np.equal}


#: masks of at least this many elements select by a bitwise mask (see :func:`_masked`)
_MASK_MIN = 4096


def _masked(cond: np.ndarray, keep: bool, a: np.ndarray) -> np.ndarray | None:
    """``where(cond, a, 0)`` (``keep``) or ``where(cond, 0, a)``, branch-free and exact: ``a``'s bits and a
    mask whose selected elements have every bit set.

    numpy's ``where`` branches per element and a gate's mask is close to random: 80 ms against 32 ms for
    a 9.6M-element activation (EfficientNet-Lite0's widest gate, the mask's comparisons included). Unlike
    ``a * mask`` the bitwise AND keeps ``where``'s result exactly where ``a`` is not finite (``inf * 0``
    is NaN), so no check of the result is needed (that check's pass took 13% of the gate). None: the
    shapes or types do not fit (the caller uses ``where``).
    """
    if cond.dtype != np.bool_ or a.dtype.kind != "f" or cond.size < _MASK_MIN or a.shape != cond.shape:
        return None
    if a.dtype.itemsize not in (2, 4, 8):
        return None
    ints = np.dtype(f"i{a.dtype.itemsize}")
    sel = cond if keep else np.logical_not(cond)
    mask = np.negative(sel.view(np.int8), dtype=ints)  # -1 (every bit set) where selected, else 0
    return np.bitwise_and(a.view(ints), mask, out=mask).view(a.dtype)


def _typed(v: np.ndarray | float, like: np.ndarray | float) -> np.ndarray | float:
    """A Python number as a 0-d array of ``like``'s type (so ``where`` keeps that type)."""
    if isinstance(v, np.ndarray) or not isinstance(like, np.ndarray):
        return v
    return np.asarray(v, dtype=like.dtype)


def erf_values(x: np.ndarray) -> np.ndarray:
    """The error function, elementwise, in ``x``'s type (scipy's when installed)."""
    try:
        from scipy.special import erf  # optional: fast vectorized erf

        return np.asarray(erf(x), dtype=x.dtype)
    except ImportError:
        return np.asarray(np.frompyfunc(math.erf, 1, 1)(x), dtype=x.dtype)


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
        if isinstance(cond, np.ndarray):  # a gate: one branch an activation, the other zero
            fast = None
            if isinstance(a, np.ndarray) and not isinstance(b, np.ndarray) and b == 0:
                fast = _masked(cond, True, a)
            elif isinstance(b, np.ndarray) and not isinstance(a, np.ndarray) and a == 0:
                fast = _masked(cond, False, b)
            if fast is not None:
                return fast
        return np.where(cond, _typed(a, b), _typed(b, a))

    def cast(self, x: np.ndarray, dtype: Any) -> np.ndarray:
        return np.asarray(x).astype(dtype, copy=False)

    def reduce_sum(self, x: np.ndarray, axes: Sequence[int], keepdims: bool = False, acc: Any = None) -> np.ndarray:
        return np.asarray(x.sum(axis=tuple(axes), keepdims=keepdims, dtype=acc))

    def dot_sum(self, a: np.ndarray, b: np.ndarray, axes: Sequence[int], acc: Any) -> np.ndarray:
        k = len(axes)
        if (k and a.ndim == b.ndim and sorted(x % a.ndim for x in axes) == list(range(a.ndim - k, a.ndim))
                and a.shape[a.ndim - k:] == b.shape[b.ndim - k:] and a.dtype == b.dtype == np.dtype(acc)
                and a.dtype in (np.float32, np.float64)):  # rows of one dot each: BLAS, 1.8 ms vs 2.2 (einsum)
            lead = np.broadcast_shapes(a.shape[: a.ndim - k], b.shape[: b.ndim - k])
            size = int(np.prod(a.shape[a.ndim - k:], dtype=np.int64))
            a2 = np.broadcast_to(a.reshape(*a.shape[: a.ndim - k], size), (*lead, size))
            b2 = np.broadcast_to(b.reshape(*b.shape[: b.ndim - k], size), (*lead, size))
            return np.matmul(a2[..., None, :], b2[..., :, None])[..., 0, 0]
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
        return matmul(a, b, trans_a=trans_a, trans_b=trans_b)

    def place(self, x: np.ndarray, begin: Sequence[int], length: Sequence[int]) -> np.ndarray:
        return pad_to(x, begin, length)

    def conv(self, x: np.ndarray, w: np.ndarray, out_shape: Sequence[int], geom: ConvGeometry) -> np.ndarray:
        return conv_forward(x, w, out_shape, geom)

    def conv_input_grad(self, g: np.ndarray, w: np.ndarray, x_shape: Sequence[int], geom: ConvGeometry) -> np.ndarray:
        return conv_input_grad(g, w, x_shape, geom)

    def conv_weight_grad(
        self, x: np.ndarray, g: np.ndarray, w_shape: Sequence[int], geom: ConvGeometry, keep: bool = False
    ) -> np.ndarray:
        return conv_weight_grad(x, g, w_shape, geom, keep)

    def window_sum_grad(self, g: np.ndarray, x_shape: Sequence[int], geom: ConvGeometry) -> np.ndarray:
        return window_sum_grad(g, x_shape, geom)

    def max_pool_grad(self, x: np.ndarray, y: np.ndarray, g: np.ndarray, geom: ConvGeometry) -> np.ndarray:
        return max_pool_grad(x, y, g, geom)


#: The eager backend the engine runs primitive rules on.
EAGER = EagerPrims()


# -- registering a primitive rule: the engine runs it on EAGER -----------------------------------------


def _eager_fn(rule: PrimFn, name: str) -> Callable[[VjpContext], list[Any]]:
    def fn(ctx: VjpContext) -> list[Any]:
        return rule(EAGER, ctx)

    fn.__name__ = fn.__qualname__ = name
    fn.__module__ = rule.__module__
    return fn


def prim_rule(rule: PrimFn, name: str, *, per_sample: bool = False) -> PrimRule:
    """The :class:`PrimRule` of the primitive rule ``rule`` (eager execution by :class:`EagerPrims`), unregistered."""
    return PrimRule(_eager_fn(rule, name), per_sample, name, rule)


def register_prim(
    op_types: Iterable[str], rule: PrimFn, name: str, *, per_sample: bool = False, since: int = 1,
    until: int | None = None, domain: str = "",
) -> PrimRule:
    """Register the primitive rule ``rule`` as the VJP of ``op_types`` (eager execution by :class:`EagerPrims`)."""
    prule = prim_rule(rule, name, per_sample=per_sample)
    register(list(op_types), prule, since=since, until=until, domain=domain)
    return prule


def prim_vjp(
    op_types: str | Iterable[str], *, since: int = 1, until: int | None = None, domain: str = "",
    per_sample: bool = False,
) -> Callable[[PrimFn], PrimFn]:
    """Decorator form of :func:`register_prim` (``op_types`` space-separated or a list)."""
    names = op_types.split() if isinstance(op_types, str) else list(op_types)

    def deco(rule: PrimFn) -> PrimFn:
        register_prim(names, rule, rule.__name__, per_sample=per_sample, since=since, until=until, domain=domain)
        return rule

    return deco
