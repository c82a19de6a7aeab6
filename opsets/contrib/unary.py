"""One-to-one ops: ReLU-family gates, smooth activations, Softmax and per-channel affine ops (BN).

One template serves them all: output neuron ``n`` depends on input neuron ``n`` alone through a
*local weight* ``g(x_n)``, and ``contrib = CONTRIB_n * dy_n * g(x_n) * dx_n``; no theta (one input).

- Gates (ALGORITHMS.md: "on their active region"): ``g = 1`` where the op passes its input, else 0:
  Relu and LeakyRelu and PRelu ``x > 0``; Clip ``min < x < max``; HardSwish ``x > -3``; HardSigmoid
  ``0 < alpha x + beta < 1`` (``g = alpha``); ThresholdedRelu ``x > alpha``.
- Smooth ops: ``g = f'(x)``, whose sign is what counts. For the increasing ones (Sigmoid, Tanh,
  Softplus, Softsign, Elu, Selu, Celu, Exp, Log, Sqrt, Erf) that is ``CONTRIB_n * dy_n * dx_n`` as
  in the paper; Gelu, Swish/SiLU and Mish use their derivative (negative on part of the negative
  axis); Neg and Reciprocal are decreasing; Abs uses ``sign(x)``; Sin/Cos their derivative.
- Softmax, LogSoftmax: the diagonal of the Jacobian (``g = 1``): each output increases with its own
  logit; the cross terms, shared by every output of the row, are left out (documented choice).
- BatchNormalization: ``g = gamma / sqrt(var + eps)`` per channel; the paper's "scale"
  ``(x - mu) / sigma`` has ``g > 0`` and gives its formula ``CONTRIB_n * dy_n * dx_n``; a negative
  learned ``gamma`` flips the sign as it flips the dependence. InstanceNormalization and
  LayerNormalization use the sign of their scale (their statistics are per sample).

At channel granularity the term of a channel is the channel mean of the element-level term
``g(x) * dx`` (for a ReLU: the mean delta over the channel's active elements, scaled by their share).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..registry import REGISTRY
from .base import ContribContext, ContribResult

__all__ = ["elementwise"]

LocalWeight = Callable[[ContribContext, np.ndarray], np.ndarray | float]


def elementwise(weight: LocalWeight) -> Callable[[ContribContext], ContribResult]:
    """A rule for a one-to-one op whose local weight at input value ``x`` is ``weight(ctx, x)``."""

    def rule(ctx: ContribContext) -> ContribResult:
        x, dx = ctx.x[0], ctx.dx[0]
        if dx is None or x is None:
            return ContribResult()
        g = np.asarray(weight(ctx, x), dtype=np.float64)
        s = ctx.out_sign() * np.sign(ctx.view(g * dx)).astype(np.int8)
        return ContribResult(inputs={0: s.astype(np.int32)})

    rule.__doc__ = f"Elementwise contributions with local weight {weight.__name__}."
    rule.__name__ = rule.__qualname__ = f"elementwise_{weight.__name__.lstrip('_')}"
    return rule


def _clip_bounds(ctx: ContribContext) -> tuple[float, float]:
    node = ctx.node
    if node.opset < 11:
        return float(node.attr("min", -np.inf)), float(node.attr("max", np.inf))
    lo = ctx.x[1] if len(ctx.x) > 1 and ctx.x[1] is not None else -np.inf
    hi = ctx.x[2] if len(ctx.x) > 2 and ctx.x[2] is not None else np.inf
    return float(np.asarray(lo)), float(np.asarray(hi))


def _positive(ctx: ContribContext, x: np.ndarray) -> np.ndarray:
    return (x > 0).astype(np.float64)


def _clip(ctx: ContribContext, x: np.ndarray) -> np.ndarray:
    lo, hi = _clip_bounds(ctx)
    return ((x > lo) & (x < hi)).astype(np.float64)


def _hardswish(ctx: ContribContext, x: np.ndarray) -> np.ndarray:
    return (x > -3).astype(np.float64)


def _hardsigmoid(ctx: ContribContext, x: np.ndarray) -> np.ndarray:
    alpha, beta = float(ctx.node.attr("alpha", 0.2)), float(ctx.node.attr("beta", 0.5))
    z = alpha * x + beta
    return np.where((z > 0) & (z < 1), alpha, 0.0)


def _thresholded(ctx: ContribContext, x: np.ndarray) -> np.ndarray:
    return (x > float(ctx.node.attr("alpha", 1.0))).astype(np.float64)


def _one(ctx: ContribContext, x: np.ndarray) -> float:
    return 1.0


def _minus_one(ctx: ContribContext, x: np.ndarray) -> float:
    return -1.0


def _abs(ctx: ContribContext, x: np.ndarray) -> np.ndarray:
    return np.sign(x)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _gelu(ctx: ContribContext, x: np.ndarray) -> np.ndarray:
    # d/dx [x * Phi(x)] = Phi(x) + x * phi(x); Phi via the logistic approximation 1.702 x (sign-exact
    # away from the single root near -0.75).
    xf = x.astype(np.float64)
    return _sigmoid(1.702 * xf) + xf * np.exp(-0.5 * xf * xf) / np.sqrt(2 * np.pi)


def _swish(ctx: ContribContext, x: np.ndarray) -> np.ndarray:
    alpha = float(ctx.node.attr("alpha", 1.0))
    s = _sigmoid(alpha * x.astype(np.float64))
    return s * (1.0 + alpha * x * (1.0 - s))


def _mish(ctx: ContribContext, x: np.ndarray) -> np.ndarray:
    xf = x.astype(np.float64)
    sp = np.logaddexp(0.0, xf)
    t = np.tanh(sp)
    return t + xf * (1.0 - t * t) * _sigmoid(xf)


def _sin(ctx: ContribContext, x: np.ndarray) -> np.ndarray:
    return np.cos(x)


def _cos(ctx: ContribContext, x: np.ndarray) -> np.ndarray:
    return -np.sin(x)


def _channel_param(ctx: ContribContext, p: np.ndarray, x: np.ndarray) -> np.ndarray:
    """A per-channel parameter ``(C,)`` shaped to broadcast against ``x`` ``(B, C, ...)``."""
    return p.reshape(1, -1, *([1] * (x.ndim - 2))) if x.ndim >= 2 else p


def _batchnorm(ctx: ContribContext, x: np.ndarray) -> np.ndarray:
    scale, var = ctx.x[1], ctx.x[4]
    assert scale is not None and var is not None
    eps = float(ctx.node.attr("epsilon", 1e-5))
    g = scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
    return _channel_param(ctx, g, x)


def _instancenorm(ctx: ContribContext, x: np.ndarray) -> np.ndarray:
    scale = ctx.x[1]
    assert scale is not None
    return _channel_param(ctx, np.sign(scale.astype(np.float64)), x)


def _layernorm(ctx: ContribContext, x: np.ndarray) -> np.ndarray:
    scale = ctx.x[1]
    assert scale is not None
    return np.sign(scale.astype(np.float64))


_TABLE: dict[str, LocalWeight] = {
    "Relu LeakyRelu PRelu": _positive,
    "Clip": _clip,
    "HardSwish": _hardswish,
    "HardSigmoid": _hardsigmoid,
    "ThresholdedRelu": _thresholded,
    "Sigmoid Tanh Softplus Softsign Elu Selu Celu Exp Log Sqrt Erf Softmax LogSoftmax": _one,
    "Neg Reciprocal": _minus_one,
    "Abs": _abs,
    "Gelu": _gelu,
    "Swish": _swish,
    "Mish": _mish,
    "Sin": _sin,
    "Cos": _cos,
    "BatchNormalization": _batchnorm,
    "InstanceNormalization": _instancenorm,
    "LayerNormalization": _layernorm,
}

for _ops, _w in _TABLE.items():
    REGISTRY.register("contributions", _ops.split())(elementwise(_w))

