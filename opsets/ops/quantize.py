"""QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear.

``contributions``: Quantize and dequantize ops pass CONTRIB straight through (the counterpart of the STE below).

``QuantizeLinear``, ``DequantizeLinear`` and ``DynamicQuantizeLinear`` change the precision of a value, not
which input element an output element comes from: output element ``n`` is input element ``n``, so its
CONTRIB moves to it unchanged, like ``Identity`` or ``Cast``. The integer value between a Q and a DQ holds no
neurons (it is not profiled) and is not reported; the backward walk lets CONTRIB cross it because the ops'
``info`` says ``straight_through``.

``vjp``: VJPs of QuantizeLinear, DequantizeLinear and DynamicQuantizeLinear: the straight-through estimator.

Rounding has a zero derivative almost everywhere, so quantize-dequantize of activations is differentiated
with the **straight-through estimator** (STE), as quantization-aware training does: rounding counts as the
identity, saturation does not.

- ``QuantizeLinear``: ``dx = dy / scale`` where ``round(x / scale) + zero_point`` lies in the output type's
  range, 0 where it saturates (PyTorch's ``fake_quantize`` mask). Scale and zero point get no cotangent.
- ``DequantizeLinear``: ``y = (x - zero_point) * scale`` is exact: ``dx = dy * scale`` (the integer input
  taken as continuous) and ``dscale = sum dy * (x - zero_point)`` per scale entry.
- ``DynamicQuantizeLinear``: ``dx = dy / y_scale`` (never saturated: the range is the input's own); the
  scale and zero point it computes from ``x`` are treated as constants (their cotangents are dropped).

A Q -> DQ pair with one scale thus passes ``dy`` through where it does not saturate. Per-axis scales follow
``axis``; blocked quantization (``block_size``) is refused. The engine lets gradients through the integer
values these ops exchange because their ``info`` says ``straight_through``.
"""

from __future__ import annotations

import numpy as np

from ..capabilities.contrib import ContribContext, ContribResult
from ..capabilities.info import OpInfo, register_info
from ..capabilities.vjp import Grads, VjpContext, vjp
from ..coverage import refuses
from ..registry import REGISTRY

# -- info: static metadata ---------------------------------------------------------------------------


register_info("QuantizeLinear", OpInfo("other", non_differentiable=(1, 2), straight_through=True))
register_info("DequantizeLinear", OpInfo("other", non_differentiable=(2,), straight_through=True))
register_info("DynamicQuantizeLinear", OpInfo("other", straight_through=True))

# -- vjp: gradients ----------------------------------------------------------------------------------


_RANGE = {
    np.dtype(np.uint8): (0, 255),
    np.dtype(np.int8): (-128, 127),
    np.dtype(np.uint16): (0, 65535),
    np.dtype(np.int16): (-32768, 32767),
    np.dtype(np.int32): (-(2**31), 2**31 - 1),
}


def _along(ctx: VjpContext, v: np.ndarray, rank: int) -> np.ndarray:
    """A scale or zero point shaped to broadcast against the data (per-axis along ``axis``)."""
    if v.ndim == 0 or v.size == 1:
        return v.reshape(())
    if int(ctx.attr("block_size", 0)):
        raise ctx.unsupported("blocked quantization (block_size) has no straight-through rule")
    axis = int(ctx.attr("axis", 1))
    axis = axis + rank if axis < 0 else axis
    shape = [1] * rank
    shape[axis] = v.size
    return v.reshape(shape)


@vjp("QuantizeLinear", since=10)
def quantize_linear(ctx: VjpContext) -> Grads:
    """QuantizeLinear: clipped straight-through estimator (see the module docstring)."""
    out: Grads = [None] * len(ctx.ins)
    if not ctx.need(0):
        return out
    x = ctx.x(0)
    scale = _along(ctx, np.asarray(ctx.x(1), np.float64), x.ndim)
    y = ctx.y(0)
    lo, hi = _RANGE.get(y.dtype, (-np.inf, np.inf))
    zp = _along(ctx, np.asarray(ctx.ins[2], np.float64), x.ndim) if ctx.has(2) else 0.0
    q = np.rint(x / scale) + zp
    live = (q >= lo) & (q <= hi)
    out[0] = np.where(live, ctx.g(0) / scale, 0.0).astype(x.dtype)
    return out


@vjp("DequantizeLinear", since=10)
def dequantize_linear(ctx: VjpContext) -> Grads:
    """DequantizeLinear: exact in the scale, straight through for the integer input."""
    x = np.asarray(ctx.x(0))
    g = np.asarray(ctx.g(0), np.float64)
    scale_in = np.asarray(ctx.x(1))
    scale = _along(ctx, scale_in.astype(np.float64), x.ndim)
    zp = _along(ctx, np.asarray(ctx.ins[2], np.float64), x.ndim) if ctx.has(2) else 0.0
    out: Grads = [None] * len(ctx.ins)
    if ctx.need(0):
        out[0] = (g * scale).astype(ctx.y(0).dtype)
    if ctx.need(1):
        prod = g * (x.astype(np.float64) - zp)
        if scale.ndim == 0:
            ds = np.asarray(prod.sum())
        else:
            axis = int(np.flatnonzero(np.asarray(scale.shape) != 1)[0]) if scale.size > 1 else 0
            ds = prod.sum(axis=tuple(i for i in range(prod.ndim) if i != axis))
        out[1] = ds.reshape(scale_in.shape).astype(scale_in.dtype)
    return out


@vjp("DynamicQuantizeLinear", since=11)
def dynamic_quantize_linear(ctx: VjpContext) -> Grads:
    """DynamicQuantizeLinear: ``dx = dy / y_scale``; its computed scale and zero point count as constants."""
    x = ctx.x(0)
    if not ctx.need(0):
        return [None]
    scale = float(np.asarray(ctx.y(1)).reshape(()))
    return [(ctx.g(0) / scale).astype(x.dtype)]


refuses(
    "vjp",
    "QuantizeLinear DequantizeLinear",
    "block_size (blocked quantization)",
    lambda n, m: bool(int(n.attr("block_size", 0))),
)

# -- contributions: NNSlicer -------------------------------------------------------------------------


def straight_through(ctx: ContribContext) -> ContribResult:
    """Output 0's CONTRIB to input 0, element for element."""
    c = ctx.out_contrib[0]
    if c is None or ctx.x[0] is None or ctx.is_weight[0]:
        return ContribResult()
    return ContribResult(inputs={0: np.asarray(c).astype(np.int32, copy=True)})


REGISTRY.register("contributions", ["QuantizeLinear", "DequantizeLinear"], since=10)(straight_through)


REGISTRY.register("contributions", "DynamicQuantizeLinear", since=11)(straight_through)
