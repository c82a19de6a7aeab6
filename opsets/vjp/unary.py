"""VJPs of elementwise unary ops, all from the :func:`~.base.unary` template.

Gates (Relu, LeakyRelu, Clip, HardSigmoid, HardSwish) give masks or slopes; smooth functions give
their derivative, read from the recorded input or output. Boundary conventions follow PyTorch
(Relu passes the gradient where ``y > 0``; Clip where ``min <= x <= max``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .base import VjpContext
from .prims import Prims, prim_unary, register_prim


def erf_values(x: np.ndarray) -> np.ndarray:
    """The error function, elementwise, in ``x``'s type (scipy's when installed)."""
    try:
        from scipy.special import erf  # optional: fast vectorized erf

        return np.asarray(erf(x), dtype=x.dtype)
    except ImportError:
        return np.asarray(np.frompyfunc(math.erf, 1, 1)(x), dtype=x.dtype)








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


def _p_elu(P: Prims, ctx: VjpContext, x: Any, y: Any) -> Any:
    alpha = float(ctx.attr("alpha", 1.0))
    return P.cast(P.where(P.compare(">", x, 0.0), 1.0, P.add(y, alpha)), P.dtype(x))


def _p_selu(P: Prims, ctx: VjpContext, x: Any, y: Any) -> Any:
    alpha = float(ctx.attr("alpha", 1.67326319217681884765625))
    gamma = float(ctx.attr("gamma", 1.05070102214813232421875))
    return P.cast(P.where(P.compare(">", x, 0.0), gamma, P.add(y, gamma * alpha)), P.dtype(x))


def _p_hard_sigmoid(P: Prims, ctx: VjpContext, x: Any, y: Any) -> Any:
    alpha, beta = float(ctx.attr("alpha", 0.2)), float(ctx.attr("beta", 0.5))
    z = P.add(P.mul(x, alpha), beta)
    inside = P.logical("and", P.compare(">", z, 0.0), P.compare("<", z, 1.0))
    return P.cast(P.where(inside, alpha, 0.0), P.dtype(x))


def _p_hard_swish(P: Prims, ctx: VjpContext, x: Any, y: Any) -> Any:
    # y = x * max(0, min(1, x/6 + 1/2)); PyTorch's convention at the kinks: 0 below -3, 1 above 3.
    mid = P.add(P.div(x, 3.0), 0.5)
    return P.cast(P.where(P.compare("<", x, -3.0), 0.0, P.where(P.compare(">", x, 3.0), 1.0, mid)), P.dtype(x))


def _p_log(P: Prims, ctx: VjpContext, x: Any, y: Any) -> Any:
    return P.scalar_div(1.0, x)


def _p_sqrt(P: Prims, ctx: VjpContext, x: Any, y: Any) -> Any:
    return P.scalar_div(0.5, y)


def _p_reciprocal(P: Prims, ctx: VjpContext, x: Any, y: Any) -> Any:
    return P.neg(P.mul(y, y))


def _p_abs(P: Prims, ctx: VjpContext, x: Any, y: Any) -> Any:
    return P.func("sign", x)


def _p_erf(P: Prims, ctx: VjpContext, x: Any, y: Any) -> Any:
    return P.mul(P.func("exp", P.neg(P.mul(x, x))), 2 / math.sqrt(math.pi))


def _p_softplus(P: Prims, ctx: VjpContext, x: Any, y: Any) -> Any:
    return P.scalar_div(1.0, P.add(P.func("exp", P.neg(x)), 1.0))


def _p_softsign(P: Prims, ctx: VjpContext, x: Any, y: Any) -> Any:
    t = P.add(P.func("abs", x), 1.0)
    return P.scalar_div(1.0, P.mul(t, t))


def _p_sin(P: Prims, ctx: VjpContext, x: Any, y: Any) -> Any:
    return P.func("cos", x)


def _p_cos(P: Prims, ctx: VjpContext, x: Any, y: Any) -> Any:
    return P.neg(P.func("sin", x))


register_prim(["Elu"], prim_unary(_p_elu, "elu"), "elu")
register_prim(["Selu"], prim_unary(_p_selu, "selu"), "selu")
register_prim(["HardSigmoid"], prim_unary(_p_hard_sigmoid, "hard_sigmoid"), "hard_sigmoid")
register_prim(["HardSwish"], prim_unary(_p_hard_swish, "hard_swish"), "hard_swish", since=14)
register_prim(["Log"], prim_unary(_p_log, "log"), "log")
register_prim(["Sqrt"], prim_unary(_p_sqrt, "sqrt"), "sqrt")
register_prim(["Reciprocal"], prim_unary(_p_reciprocal, "reciprocal"), "reciprocal")
register_prim(["Abs"], prim_unary(_p_abs, "abs"), "abs")
register_prim(["Erf"], prim_unary(_p_erf, "erf"), "erf", since=9)
register_prim(["Softplus"], prim_unary(_p_softplus, "softplus"), "softplus")
register_prim(["Softsign"], prim_unary(_p_softsign, "softsign"), "softsign")
register_prim(["Sin"], prim_unary(_p_sin, "sin"), "sin", since=7)
register_prim(["Cos"], prim_unary(_p_cos, "cos"), "cos", since=7)


def _p_gelu(P: Prims, ctx: VjpContext, x: Any, y: Any) -> Any:
    if ctx.attr("approximate", "none") == "tanh":
        c = math.sqrt(2 / math.pi)
        u = P.mul(P.add(x, P.mul(P.power(x, 3.0), 0.044715)), c)
        t = P.func("tanh", u)
        left = P.mul(P.add(t, 1.0), 0.5)
        slope = P.add(P.mul(P.mul(x, x), 3 * 0.044715), 1.0)
        right = P.mul(P.mul(P.mul(P.mul(x, 0.5), P.sub(P.neg(P.mul(t, t)), -1.0)), c), slope)
        return P.add(left, right)
    cdf = P.mul(P.add(P.func("erf", P.div(x, math.sqrt(2))), 1.0), 0.5)
    pdf = P.div(P.mul(x, P.func("exp", P.mul(P.mul(x, x), -0.5))), math.sqrt(2 * math.pi))
    return P.add(cdf, pdf)


register_prim(["Gelu"], prim_unary(_p_gelu, "gelu"), "gelu", since=20)
