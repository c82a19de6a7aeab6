"""The primitives VJP rules are written against: one rule definition, two executions.

A ported rule (registered with :func:`onnxslice.opsets.vjp.eager.prim_vjp`) is a function ``rule(P, ctx) ->
cotangents`` that
computes only through the :class:`Prims` ``P`` it is given: elementwise arithmetic and comparisons,
casts, reductions, layout changes, matrix products, convolution input and weight gradients and
pooling window gradients. Two backends implement them:

- :class:`onnxslice.opsets.vjp.eager.EagerPrims` runs them at once on numpy arrays, with the fast
  CPU kernels of the eager engine (onnxruntime one-node sessions, BLAS, vectorized numpy); it is what
  the engine calls, so eager numbers are those of the kernels themselves;
- :class:`onnxslice.grad.lowering.OnnxPrims` emits them as standard ONNX nodes over symbolic values
  with static shapes, so the same rule becomes part of a gradient graph (``onnxslice grad --emit``).

Values are opaque to a rule (``Any``): a numpy array in one backend, a symbolic value in the other.
Rules read static shapes and dtypes through ``P.shape`` / ``P.dtype`` and concrete values of
constant inputs (clip bounds) through ``P.value``. Shapes are those of the recorded sample, so the
emitted graph is specialised to them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..broadcast import unbroadcast_axes
from ..capabilities.vjp import VjpRule

if TYPE_CHECKING:
    from ..capabilities.vjp import VjpContext

__all__ = ["ConvGeometry", "NotEmittable", "PoolGeometry", "PrimFn", "PrimRule", "Prims"]

V = Any  # a value of the backend: np.ndarray (eager) or a symbolic value (ONNX lowering)
PrimFn = Callable[["Prims", "VjpContext"], list[Any]]


class NotEmittable(Exception):
    """A rule needs something the ONNX lowering cannot give (a data-dependent value, per-sample mode)."""


@dataclass(frozen=True)
class ConvGeometry:
    """Static geometry of one convolution or pooling window (spatial lists, one entry per axis).

    Attributes:
        kernel: kernel size.
        strides: strides.
        dilations: dilations.
        begin: begin pads.
        end: end pads.
        length: size of the padded input the windows read (at least ``begin + in``).
        groups: groups (1 for pooling).
    """

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    begin: tuple[int, ...]
    end: tuple[int, ...]
    length: tuple[int, ...]
    groups: int = 1


PoolGeometry = ConvGeometry


class Prims(ABC):
    """The primitive operations of VJP rules; see the module docstring."""

    #: whether this backend runs at once (numpy) rather than emitting nodes
    eager: bool = True

    # -- introspection ---------------------------------------------------------------------------
    @abstractmethod
    def shape(self, x: V) -> tuple[int, ...]:
        """Static shape of ``x``."""

    @abstractmethod
    def dtype(self, x: V) -> np.dtype[Any]:
        """Element type of ``x``."""

    @abstractmethod
    def value(self, x: V) -> np.ndarray:
        """The concrete array of a constant ``x``; raises :class:`NotEmittable` when it is data."""

    def ndim(self, x: V) -> int:
        """Rank of ``x``."""
        return len(self.shape(x))

    # -- elementwise -----------------------------------------------------------------------------
    @abstractmethod
    def add(self, a: V, b: V | float) -> V:
        """``a + b`` (broadcasting; a Python number takes ``a``'s type)."""

    @abstractmethod
    def sub(self, a: V, b: V | float) -> V:
        """``a - b``."""

    @abstractmethod
    def mul(self, a: V, b: V | float) -> V:
        """``a * b``."""

    @abstractmethod
    def div(self, a: V, b: V | float) -> V:
        """``a / b``."""

    @abstractmethod
    def neg(self, a: V) -> V:
        """``-a``."""

    @abstractmethod
    def sqrt(self, a: V) -> V:
        """Square root."""

    @abstractmethod
    def reciprocal(self, a: V) -> V:
        """``1 / a``."""

    @abstractmethod
    def scalar_div(self, c: float, a: V) -> V:
        """``c / a`` for a number ``c``."""

    @abstractmethod
    def func(self, name: str, a: V) -> V:
        """An elementwise function: ``exp``, ``log``, ``sin``, ``cos``, ``tanh``, ``abs``, ``sign`` or ``erf``."""

    @abstractmethod
    def power(self, a: V, b: V | float) -> V:
        """``a ** b`` (broadcasting)."""

    @abstractmethod
    def maximum(self, a: V, b: V) -> V:
        """Elementwise maximum (broadcasting)."""

    @abstractmethod
    def compare(self, op: str, a: V, b: V | float) -> V:
        """A boolean mask: ``op`` is one of ``< <= > >= ==``."""

    @abstractmethod
    def logical(self, op: str, a: V, b: V | None = None) -> V:
        """``and``, ``or`` of two masks, or ``not`` of one."""

    @abstractmethod
    def where(self, cond: V, a: V | float, b: V | float) -> V:
        """``a`` where ``cond`` else ``b`` (numbers take the type of the other operand)."""

    @abstractmethod
    def cast(self, x: V, dtype: Any) -> V:
        """``x`` as ``dtype`` (no copy when it already is)."""

    # -- reductions ------------------------------------------------------------------------------
    @abstractmethod
    def reduce_sum(self, x: V, axes: Sequence[int], keepdims: bool = False, acc: Any = None) -> V:
        """Sum over ``axes`` (accumulated in ``acc`` when given; the result has that type)."""

    @abstractmethod
    def dot_sum(self, a: V, b: V, axes: Sequence[int], acc: Any) -> V:
        """Sum over ``axes`` of ``a * b``, products and sum in ``acc`` (a fused multiply-reduce)."""

    @abstractmethod
    def reduce_max(self, x: V, axes: Sequence[int], keepdims: bool = False) -> V:
        """Maximum over ``axes``."""

    # -- layout ----------------------------------------------------------------------------------
    @abstractmethod
    def reshape(self, x: V, shape: Sequence[int]) -> V:
        """``x`` with static shape ``shape``."""

    @abstractmethod
    def transpose(self, x: V, perm: Sequence[int]) -> V:
        """Axes permuted."""

    @abstractmethod
    def broadcast_to(self, x: V, shape: Sequence[int]) -> V:
        """``x`` broadcast to ``shape``."""

    @abstractmethod
    def slice(self, x: V, axis: int, start: int, end: int) -> V:
        """``x[start:end]`` along ``axis`` (step 1, bounds within the axis)."""

    # -- linear algebra and windows --------------------------------------------------------------
    @abstractmethod
    def matmul(self, a: V, b: V, trans_a: bool = False, trans_b: bool = False) -> V:
        """Matrix product of the last two axes (stacked over leading ones) with optional transposes."""

    @abstractmethod
    def place(self, x: V, begin: Sequence[int], length: Sequence[int]) -> V:
        """``x`` [N, C, *sp] placed at spatial offset ``begin`` in zeros of spatial size ``length`` (cropped
        where it does not fit)."""

    @abstractmethod
    def conv(self, x: V, w: V, out_shape: Sequence[int], geom: ConvGeometry) -> V:
        """Convolution without pads (``geom``'s strides, dilations, groups), cropped or zero-extended to
        ``out_shape``."""

    @abstractmethod
    def conv_input_grad(self, g: V, w: V, x_shape: Sequence[int], geom: ConvGeometry) -> V:
        """Cotangent of a convolution's input: the transposed convolution of ``g`` by ``w``."""

    @abstractmethod
    def conv_weight_grad(self, x: V, g: V, w_shape: Sequence[int], geom: ConvGeometry, keep: bool = False) -> V:
        """Cotangent of a convolution's weight (per sample, ``[N, *w_shape]``, with ``keep``)."""

    @abstractmethod
    def window_sum_grad(self, g: V, x_shape: Sequence[int], geom: ConvGeometry) -> V:
        """Transpose of a per-channel window sum: each output's ``g`` added to every input of its window."""

    @abstractmethod
    def max_pool_grad(self, x: V, y: V, g: V, geom: ConvGeometry) -> V:
        """Cotangent of MaxPool's input: each window's cotangent to its first arg-max."""

    # -- composites (shared by both backends) ----------------------------------------------------
    def zeros_like(self, x: V) -> V:
        """Zeros shaped and typed like ``x``."""
        return self.mul(x, 0.0)

    def unbroadcast(self, g: V, shape: Sequence[int], keep_batch: bool = False) -> V:
        """Sum ``g`` over the axes broadcasting added or stretched (:func:`onnxslice.opsets.broadcast.unbroadcast`)."""
        axes, out = unbroadcast_axes(self.shape(g), shape, keep_batch)
        if not keep_batch and self.shape(g) == out:
            return g
        r = self.reduce_sum(g, axes, keepdims=True) if axes else g
        return self.reshape(r, out)


@dataclass(frozen=True)
class PrimRule(VjpRule):
    """A :class:`~onnxslice.opsets.capabilities.vjp.VjpRule` whose definition is written against :class:`Prims`.

    Attributes:
        prim: the rule ``prim(P, ctx)``; ``fn`` runs it on the eager backend.
    """

    prim: PrimFn | None = None
