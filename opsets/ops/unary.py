"""One-to-one elementwise ops: ReLU-family gates, smooth activations, casts, Identity, Dropout, PRelu.

All follow the gate template (:mod:`onnxslice.opsets.templates.gates`): output element ``n`` depends on input
element ``n`` alone through a local derivative (``vjp``) or its sign (``contributions``).

- ``vjp``: ``dx = dy * f'(x, y)``; gates (Relu, Clip before opset 11) select the cotangent with a mask.
  Clip from opset 11 also gives its bounds a cotangent (where the input is clipped); PRelu gives its slope
  ``dy * x`` where ``x <= 0``, summed back to the slope's shape (PyTorch's convention at 0).
- ``contributions``: ``contrib = CONTRIB_n * dy_n * g(x_n) * dx_n``, no theta (one input). Gates
  (ALGORITHMS.md: "on their active region"): ``g = 1`` where the op passes its input, else 0 (Relu,
  LeakyRelu and PRelu ``x > 0``; Clip ``min < x < max``; HardSwish ``x > -3``; HardSigmoid ``0 < alpha x +
  beta < 1``; ThresholdedRelu ``x > alpha``). Smooth ops: ``g = f'(x)``, whose sign is what counts (1 for
  the increasing ones as in the paper; Gelu, Swish and Mish are negative on part of the negative axis;
  Neg and Reciprocal decreasing; Abs ``sign(x)``; Sin and Cos their derivative). Identity, Dropout and
  float casts move CONTRIB unchanged; Floor, Sign, comparisons of one operand hold no neurons. At channel
  granularity a channel's term is the channel mean of ``g(x) * dx``.
- ``prune``: the channels pass straight through (PRelu: as a broadcasting op, its slope sliced with them).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..capabilities.contrib import ContribContext
from ..capabilities.info import OpInfo, register_info
from ..capabilities.vjp import Grads, VjpContext, register, unbroadcast, vjp
from ..coverage import refuses
from ..registry import REGISTRY
from ..templates.binary import broadcasting
from ..templates.gates import LocalWeight, elementwise, one, passthrough, prim_unary, unary
from ..templates.routing import identity_contributions, no_neurons
from ..vjp.eager import prim_vjp, register_prim
from ..vjp.prims import Prims

# -- info: static metadata ---------------------------------------------------------------------------


register_info(
    "Relu LeakyRelu PRelu Elu Selu Celu Sigmoid HardSigmoid HardSwish Tanh Softplus Softsign Erf Gelu Exp Log "
    "Sqrt Reciprocal Neg Abs Sin Cos Mish Swish ThresholdedRelu Floor Ceil Round Sign Not IsNaN IsInf Cast CastLike "
    "Dropout",
    OpInfo("elementwise"),
)
register_info("Clip", OpInfo("elementwise", constant_inputs=(1, 2)))
register_info("Shrink", OpInfo("elementwise"), since=9)
register_info("Identity", OpInfo("layout", layout_only=True))

# -- vjp: gradients ----------------------------------------------------------------------------------


def _mish_grad(ctx: VjpContext, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    # y = x tanh(softplus(x)); y' = tanh(sp) + x (1 - tanh(sp)^2) sigmoid(x)
    xf = x.astype(np.float64)
    t = np.tanh(np.logaddexp(0.0, xf))
    return (t + xf * (1 - t * t) * 0.5 * (1 + np.tanh(0.5 * xf))).astype(x.dtype)


def _celu_grad(ctx: VjpContext, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    alpha = float(ctx.attr("alpha", 1.0))
    return np.where(x > 0, 1.0, np.exp(np.minimum(x, 0) / alpha)).astype(x.dtype)


def _thresholded_grad(ctx: VjpContext, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x > float(ctx.attr("alpha", 1.0))).astype(x.dtype)


register(["Mish"], unary(_mish_grad, "mish"), since=18)


register(["Celu"], unary(_celu_grad, "celu"), since=12)


register(["ThresholdedRelu"], unary(_thresholded_grad, "thresholded_relu"), since=10)


def _bound(P: Prims, ctx: VjpContext, i: int) -> float | None:
    """The value of Clip's scalar bound ``i`` when it is a constant of the graph, else None."""
    if not ctx.has(i):
        return None
    try:
        v = np.asarray(P.value(ctx.ins[i]))
    except Exception:  # NotEmittable (the bound is data), or a backend without constants
        return None
    return float(v.reshape(())) if v.size == 1 else None


def clip_gate(P: Prims, ctx: VjpContext) -> Grads | None:
    """Clip's common case, two constant bounds ``lo <= hi``: one mask per side, no ``max(x, lo)``.

    With ``lo <= hi`` the general rule's ``max(x, lo) > hi`` is ``x > hi`` and its ``lo`` mask
    ``x < lo and not over`` is ``x < lo``. When the bounds need no cotangent the input's passes where
    the forward output equals its input (``lo <= x <= hi`` exactly: Clip returns ``x`` unchanged
    there), one comparison instead of four passes over the activation. The same cotangents as
    :func:`clip_general`, bit for bit (``tests/grad/test_grad_fuse.py``); None where it does not apply
    (per-sample mode, data bounds, ``lo > hi``, a missing bound).
    """
    if ctx.node.opset < 11 or not (ctx.has(1) and ctx.has(2)):
        return None
    lo, hi = _bound(P, ctx, 1), _bound(P, ctx, 2)
    if lo is None or hi is None or not lo <= hi or any(ctx.keep(i) for i in range(3)):
        return None
    x, g = ctx.x(0), ctx.g(0)
    out: Grads = [None] * len(ctx.ins)
    bounds = [i for i in (1, 2) if ctx.need(i)]
    if not bounds:
        if ctx.need(0):
            out[0] = P.cast(P.where(P.compare("==", ctx.y(0), x), g, 0.0), P.dtype(x))
        return out
    lo_v, hi_v = P.reshape(ctx.ins[1], ()), P.reshape(ctx.ins[2], ())
    under, over = P.compare("<", x, lo_v), P.compare(">", x, hi_v)
    if ctx.need(0):
        out[0] = P.cast(P.where(P.logical("or", under, over), 0.0, g), P.dtype(x))
    for i, mask in ((1, under), (2, over)):
        if i in bounds:
            part = P.where(mask, g, 0.0)
            total = P.reduce_sum(part, tuple(range(P.ndim(part))))
            out[i] = P.cast(P.reshape(total, P.shape(ctx.ins[i])), P.dtype(ctx.ins[i]))
    return out


@prim_vjp("Clip", since=11, per_sample=True)
def clip(P: Prims, ctx: VjpContext) -> Grads:
    """Clip with ``min``/``max`` inputs (either may be omitted): :func:`clip_gate` where it applies, else
    :func:`clip_general`."""
    fast = clip_gate(P, ctx)
    return fast if fast is not None else clip_general(P, ctx)


def clip_general(P: Prims, ctx: VjpContext) -> Grads:
    """Clip with ``min``/``max`` inputs (either may be omitted, either may be data), per sample too."""
    x = ctx.x(0)
    g = ctx.g(0)
    lo = P.reshape(ctx.ins[1], ()) if ctx.has(1) else None
    hi = P.reshape(ctx.ins[2], ()) if ctx.has(2) else None
    m = P.maximum(x, lo) if lo is not None else x
    under = P.compare("<", x, lo) if lo is not None else None
    over = P.compare(">", m, hi) if hi is not None else None
    out: Grads = [None] * len(ctx.ins)
    if ctx.need(0):
        stop = under if over is None else over if under is None else P.logical("or", under, over)
        dx = g if stop is None else P.where(stop, 0.0, g)
        out[0] = P.cast(dx, P.dtype(x))
    masks = (under if over is None or under is None else P.logical("and", under, P.logical("not", over)), over)
    for i, mask in zip((1, 2), masks, strict=True):
        if ctx.has(i) and ctx.need(i):
            b = ctx.ins[i]
            bs = P.shape(b)
            part = P.mul(g, 0.0) if mask is None else P.where(mask, g, 0.0)  # None: the bound is never active
            nd = P.ndim(part)
            total = P.reduce_sum(part, tuple(range(1, nd)) if ctx.keep(i) else tuple(range(nd)))
            out[i] = P.cast(P.reshape(total, (P.shape(g)[0], *bs) if ctx.keep(i) else bs), P.dtype(b))
    return out


@vjp("PRelu", per_sample=True)
def prelu(ctx: VjpContext) -> Grads:
    """PRelu with a broadcast slope."""
    x, slope = ctx.x(0), ctx.x(1)
    g = ctx.g(0)
    pos = x > 0
    out: Grads = [None, None]
    if ctx.need(0):
        out[0] = np.where(pos, g, g * slope).astype(x.dtype, copy=False)
    if ctx.need(1):
        out[1] = unbroadcast(np.where(pos, 0, g * x), slope.shape, ctx.keep(1)).astype(slope.dtype, copy=False)
    return out


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


register_prim(["Clip"], prim_unary(_p_clip, "clip", gate=True), "clip", until=10)  # opset 11+: the Clip rule above


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


def _p_shrink(P: Prims, ctx: VjpContext, x: Any, y: Any) -> Any:
    """Shrink passes ``x -+ bias`` where ``|x| > lambd`` (strictly) and outputs 0 in between."""
    lambd = float(ctx.attr("lambd", 0.5))
    return P.logical("or", P.compare(">", x, lambd), P.compare("<", x, -lambd))


register_prim(["Shrink"], prim_unary(_p_shrink, "shrink", gate=True), "shrink", since=9)


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

refuses("vjp", "Dropout", "training mode (random)", lambda n, m: None if n.opset >= 12 and n.input(2) else False)


# -- contributions: NNSlicer -------------------------------------------------------------------------


REGISTRY.register("contributions", ["Identity", "Dropout", "Cast", "CastLike"])(identity_contributions)


REGISTRY.register("contributions", ["Not", "IsNaN", "IsInf", "Sign", "Floor", "Ceil", "Round"])(no_neurons)


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


_TABLE: dict[str, LocalWeight] = {
    "Relu LeakyRelu PRelu": _positive,
    "Clip": _clip,
    "HardSwish": _hardswish,
    "HardSigmoid": _hardsigmoid,
    "ThresholdedRelu": _thresholded,
    "Sigmoid Tanh Softplus Softsign Elu Selu Celu Exp Log Sqrt Erf": one,
    "Neg Reciprocal": _minus_one,
    "Abs": _abs,
    "Gelu": _gelu,
    "Swish": _swish,
    "Mish": _mish,
    "Sin": _sin,
    "Cos": _cos,
}


for _ops, _w in _TABLE.items():
    REGISTRY.register("contributions", _ops.split())(elementwise(_w))

# -- prune: channel groups ---------------------------------------------------------------------------


_UNARY = [
    "Relu",
    "Shrink",
    "LeakyRelu",
    "Elu",
    "Selu",
    "Celu",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Tanh",
    "Softplus",
    "Softsign",
    "Erf",
    "Gelu",
    "Exp",
    "Log",
    "Sqrt",
    "Reciprocal",
    "Neg",
    "Abs",
    "Sin",
    "Cos",
    "Mish",
    "Swish",
    "ThresholdedRelu",
    "Floor",
    "Ceil",
    "Round",
    "Sign",
    "Identity",
    "Cast",
    "Dropout",
    "Clip",
    "IsNaN",
    "IsInf",
    "Not",
]


REGISTRY.register("prune", _UNARY)(passthrough())


REGISTRY.register("prune", "PRelu")(broadcasting)
