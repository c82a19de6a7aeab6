"""VJPs of elementwise unary ops, all from the :func:`~.base.unary` template.

Gates (Relu, LeakyRelu, Clip, HardSigmoid, HardSwish) give masks or slopes; smooth functions give
their derivative, read from the recorded input or output. Boundary conventions follow PyTorch
(Relu passes the gradient where ``y > 0``; Clip where ``min <= x <= max``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .base import VjpContext, register, unary
from .prims import Prims, prim_unary, register_prim


def _relu(ctx: VjpContext, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return x > 0


def _leaky(ctx: VjpContext, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    alpha = float(ctx.attr("alpha", 0.01))
    return np.where(x > 0, 1.0, alpha).astype(x.dtype)


def _elu(ctx: VjpContext, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    alpha = float(ctx.attr("alpha", 1.0))
    return np.where(x > 0, 1.0, y + alpha).astype(x.dtype)


def _selu(ctx: VjpContext, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    alpha = float(ctx.attr("alpha", 1.67326319217681884765625))
    gamma = float(ctx.attr("gamma", 1.05070102214813232421875))
    return np.where(x > 0, gamma, y + gamma * alpha).astype(x.dtype)


def _clip_bounds(ctx: VjpContext) -> tuple[float, float]:
    if ctx.node.opset < 11:
        return float(ctx.attr("min", -np.inf)), float(ctx.attr("max", np.inf))
    lo = float(np.asarray(ctx.ins[1]).reshape(-1)[0]) if ctx.has(1) else -np.inf
    hi = float(np.asarray(ctx.ins[2]).reshape(-1)[0]) if ctx.has(2) else np.inf
    return lo, hi


def _clip(ctx: VjpContext, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    lo, hi = _clip_bounds(ctx)
    mask = x >= lo
    mask &= x <= hi
    return mask


def _hard_sigmoid(ctx: VjpContext, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    alpha, beta = float(ctx.attr("alpha", 0.2)), float(ctx.attr("beta", 0.5))
    z = alpha * x + beta
    return np.where((z > 0) & (z < 1), alpha, 0.0).astype(x.dtype)


def _hard_swish(ctx: VjpContext, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    # y = x * max(0, min(1, x/6 + 1/2)); PyTorch's convention at the kinks: 0 below -3, 1 above 3.
    return np.where(x < -3, 0.0, np.where(x > 3, 1.0, x / 3 + 0.5)).astype(x.dtype)


def _sigmoid(ctx: VjpContext, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return y * (1 - y)


def _tanh(ctx: VjpContext, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return 1 - y * y


def _exp(ctx: VjpContext, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return y


def _log(ctx: VjpContext, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return 1 / x


def _sqrt(ctx: VjpContext, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return 0.5 / y


def _reciprocal(ctx: VjpContext, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return -(y * y)


def _neg(ctx: VjpContext, x: np.ndarray, y: np.ndarray) -> float:
    return -1.0


def _abs(ctx: VjpContext, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.sign(x)


def _erf(ctx: VjpContext, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (2 / math.sqrt(math.pi)) * np.exp(-(x * x))


def _gelu(ctx: VjpContext, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    if ctx.attr("approximate", "none") == "tanh":
        c = math.sqrt(2 / math.pi)
        u = c * (x + 0.044715 * x**3)
        t = np.tanh(u)
        return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044715 * x * x)
    return 0.5 * (1 + _erf_values(x / math.sqrt(2))) + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _erf_values(x: np.ndarray) -> np.ndarray:
    try:
        from scipy.special import erf  # optional: fast vectorized erf

        return np.asarray(erf(x), dtype=x.dtype)
    except ImportError:
        return np.asarray(np.frompyfunc(math.erf, 1, 1)(x), dtype=x.dtype)


def _softplus(ctx: VjpContext, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _softsign(ctx: VjpContext, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.abs(x)) ** 2


def _sin(ctx: VjpContext, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.cos(x)


def _cos(ctx: VjpContext, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return -np.sin(x)


def _identity(ctx: VjpContext, x: np.ndarray, y: np.ndarray) -> float:
    return 1.0


def _dropout(ctx: VjpContext, x: np.ndarray, y: np.ndarray) -> float:
    if ctx.node.opset >= 12 and ctx.has(2) and bool(np.asarray(ctx.ins[2])):
        raise ctx.unsupported("Dropout in training mode is random")
    return 1.0


register(["Elu"], unary(_elu, "elu"))
register(["Selu"], unary(_selu, "selu"))
register(["HardSigmoid"], unary(_hard_sigmoid, "hard_sigmoid"))
register(["HardSwish"], unary(_hard_swish, "hard_swish"), since=14)
register(["Log"], unary(_log, "log"))
register(["Sqrt"], unary(_sqrt, "sqrt"))
register(["Reciprocal"], unary(_reciprocal, "reciprocal"))
register(["Abs"], unary(_abs, "abs"))
register(["Erf"], unary(_erf, "erf"), since=9)
register(["Gelu"], unary(_gelu, "gelu"), since=20)
register(["Softplus"], unary(_softplus, "softplus"))
register(["Softsign"], unary(_softsign, "softsign"))
register(["Sin"], unary(_sin, "sin"), since=7)
register(["Cos"], unary(_cos, "cos"), since=7)
# Cast between float types passes the cotangent (cast back to the input dtype by the template);
# casts to or from integers carry no gradient and the engine never asks for them.


# -- written against the primitives (eager and ONNX-emittable) ---------------------------------------


def _p_relu(P: Prims, ctx: VjpContext, x: Any, y: Any) -> Any:
    return P.compare(">", x, 0.0)


def _p_leaky(P: Prims, ctx: VjpContext, x: Any, y: Any) -> Any:
    alpha = float(ctx.attr("alpha", 0.01))
    return P.cast(P.where(P.compare(">", x, 0.0), 1.0, alpha), P.dtype(x))


def _p_clip(P: Prims, ctx: VjpContext, x: Any, y: Any) -> Any:
    lo, hi = float(ctx.attr("min", -np.inf)), float(ctx.attr("max", np.inf))
    return P.logical("and", P.compare(">=", x, lo), P.compare("<=", x, hi))


def _p_sigmoid(P: Prims, ctx: VjpContext, x: Any, y: Any) -> Any:
    return P.mul(y, P.sub(P.neg(y), -1.0))  # y * (1 - y)


def _p_tanh(P: Prims, ctx: VjpContext, x: Any, y: Any) -> Any:
    return P.sub(P.neg(P.mul(y, y)), -1.0)  # 1 - y * y


def _p_exp(P: Prims, ctx: VjpContext, x: Any, y: Any) -> Any:
    return y


def _p_neg(P: Prims, ctx: VjpContext, x: Any, y: Any) -> float:
    return -1.0


def _p_identity(P: Prims, ctx: VjpContext, x: Any, y: Any) -> float:
    return 1.0


def _p_dropout(P: Prims, ctx: VjpContext, x: Any, y: Any) -> float:
    if ctx.node.opset >= 12 and ctx.has(2) and bool(P.value(ctx.ins[2])):
        raise ctx.unsupported("Dropout in training mode is random")
    return 1.0


register_prim(["Relu"], prim_unary(_p_relu, "relu", gate=True), "relu")
register_prim(["LeakyRelu"], prim_unary(_p_leaky, "leaky_relu"), "leaky_relu")
register_prim(["Clip"], prim_unary(_p_clip, "clip", gate=True), "clip", until=10)  # opset 11+: clip.py
register_prim(["Sigmoid"], prim_unary(_p_sigmoid, "sigmoid"), "sigmoid")
register_prim(["Tanh"], prim_unary(_p_tanh, "tanh"), "tanh")
register_prim(["Exp"], prim_unary(_p_exp, "exp"), "exp")
register_prim(["Neg"], prim_unary(_p_neg, "neg"), "neg")
register_prim(["Identity"], prim_unary(_p_identity, "identity"), "identity")
# Cast between float types passes the cotangent (cast back to the input dtype by the template);
# casts to or from integers carry no gradient and the engine never asks for them.
register_prim(["Cast"], prim_unary(_p_identity, "cast"), "cast")
register_prim(["CastLike"], prim_unary(_p_identity, "cast_like"), "cast_like", since=15)
register_prim(["Dropout"], prim_unary(_p_dropout, "dropout"), "dropout")
