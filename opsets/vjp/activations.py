"""VJPs of the remaining elementwise activations (Mish, Celu, ThresholdedRelu), from the unary template."""

from __future__ import annotations

import numpy as np

from .base import VjpContext, register, unary


def _mish(ctx: VjpContext, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    # y = x tanh(softplus(x)); y' = tanh(sp) + x (1 - tanh(sp)^2) sigmoid(x)
    xf = x.astype(np.float64)
    t = np.tanh(np.logaddexp(0.0, xf))
    return (t + xf * (1 - t * t) * 0.5 * (1 + np.tanh(0.5 * xf))).astype(x.dtype)


def _celu(ctx: VjpContext, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    alpha = float(ctx.attr("alpha", 1.0))
    return np.where(x > 0, 1.0, np.exp(np.minimum(x, 0) / alpha)).astype(x.dtype)


def _thresholded(ctx: VjpContext, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x > float(ctx.attr("alpha", 1.0))).astype(x.dtype)


register(["Mish"], unary(_mish, "mish"), since=18)
register(["Celu"], unary(_celu, "celu"), since=12)
register(["ThresholdedRelu"], unary(_thresholded, "thresholded_relu"), since=10)
