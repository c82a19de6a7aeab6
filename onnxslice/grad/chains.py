"""Fused *Conv -> BatchNormalization [-> Relu | Clip]* chains: one backward step, recorded fused.

A chain's backward needs only its input ``x`` and its output ``z``: the activation's gate comes from
``z`` (``z > lo`` and ``z < hi``; Relu is ``lo = 0``), the BatchNormalization scale
``s = gamma / sqrt(var + eps)`` folds into the convolution's cotangents (input cotangent through the
scaled kernel ``W * s``, weight cotangent ``s * dW'`` where ``dW'`` is the weight cotangent of the
gated cotangent ``dy``), and the scale's own gradient needs no pass over the activation:

    sum dy * xhat = (sum_k W[c, k] dW'[c, k] + (b[c] - mean[c]) sum dy[c]) / sqrt(var[c] + eps)

because ``sum dy * conv(x, W)[c] = sum_k W[c, k] dW'[c, k]``. So the engine records neither the
convolution's nor the BatchNormalization's output, and where that pays
(``GradientEngine.recording_optimized``) onnxruntime runs the chain as it runs it by default (one
fused convolution, NCHWc layout). The gates are then decided on that fused forward's values, as the
model runs in onnxruntime by default; at a kink (a pre-activation within float32 rounding of a bound)
they may differ from the unfused graph's.

:func:`find_chains` finds the chains of a model; :func:`conv_bn_act` is the chain's VJP, written against
the primitives like every rule, so it runs eagerly and is emitted as ONNX nodes alike.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxslice.model import Model, Node
from onnxslice.opsets.capabilities.vjp import Grads, VjpContext
from onnxslice.opsets.ops.conv import conv_geometry
from onnxslice.opsets.vjp.eager import prim_rule
from onnxslice.opsets.vjp.prims import PrimRule, Prims

__all__ = ["CHAIN_DOMAIN", "CHAIN_OP", "CHAIN_RULE", "Chain", "conv_bn_act", "find_chains"]

#: The op type and domain of a chain's step node (engine-internal; never written to a model).
CHAIN_OP, CHAIN_DOMAIN = "ConvBatchNormActivation", "onnxslice.grad"
_ACTS = ("Relu", "Clip")


@dataclass(frozen=True)
class Chain:
    """One fusible chain and the step node the engine differentiates it as.

    Attributes:
        conv, bn: the Conv and BatchNormalization nodes.
        act: the Relu or Clip that follows, or None.
        node: the step node: inputs ``x, W, B, scale, beta, mean, var, min, max`` (``""`` where absent),
            output the chain's output; attributes the Conv's plus ``epsilon``, ``lo``, ``hi``.
    """

    conv: Node
    bn: Node
    act: Node | None
    node: Node

    @property
    def members(self) -> tuple[Node, ...]:
        """The chain's nodes in forward order."""
        return (self.conv, self.bn) if self.act is None else (self.conv, self.bn, self.act)

    @property
    def inner(self) -> tuple[str, ...]:
        """The values inside the chain (no longer recorded)."""
        return tuple(n.outputs[0] for n in self.members[:-1])


def _sole_consumer(model: Model, value: str, protected: Collection[str], ops: tuple[str, ...]) -> Node | None:
    """The one node reading ``value`` (as its first input only) when it is one of ``ops``, else None."""
    if value in protected:
        return None
    users = model.consumers(value)
    if len(users) != 1:
        return None
    node = users[0]
    if node.op_type not in ops or node.domain not in ("", "ai.onnx") or list(node.inputs).count(value) != 1:
        return None
    return node if node.inputs[0] == value else None


def _float_init(model: Model, name: str) -> bool:
    return bool(name) and model.is_initializer(name) and model.initializer(name).dtype == np.float32


def _inference_bn(model: Model, bn: Node) -> bool:
    if bn.opset < 7 or (bn.opset < 9 and not int(bn.attr("spatial", 1))):
        return False
    if bn.opset >= 14 and int(bn.attr("training_mode", 0)):
        return False
    if len([o for o in bn.outputs if o]) != 1 or len(bn.inputs) != 5:
        return False
    return all(_float_init(model, v) for v in bn.inputs[1:])


def _bounds(model: Model, act: Node) -> tuple[float, float, str, str] | None:
    """``(lo, hi, min input, max input)`` of a Relu or Clip with constant bounds, else None."""
    if act.op_type == "Relu":
        return 0.0, math.inf, "", ""
    if act.opset < 11:
        lo, hi = float(act.attr("min", -math.inf)), float(act.attr("max", math.inf))  # as the Clip-6 rule reads them
        return (lo, hi, "", "") if lo <= hi else None
    names = [act.input(1), act.input(2)]
    vals = []
    for name, default in zip(names, (-math.inf, math.inf), strict=True):
        if not name:
            vals.append(default)
        elif _float_init(model, name) and model.initializer(name).size == 1:
            vals.append(float(model.initializer(name).reshape(())))
        else:
            return None
    return (vals[0], vals[1], names[0], names[1]) if vals[0] <= vals[1] else None


def find_chains(model: Model, protected: Collection[str] = ()) -> list[Chain]:
    """Every *Conv -> BatchNormalization [-> Relu | Clip]* chain whose inner values only the chain reads.

    Args:
        model: the model.
        protected: values that must stay recorded (targets, outputs): no chain hides them.

    A chain needs a float32 Conv weight (and bias) and BatchNormalization parameters that are
    initializers, a BatchNormalization in inference mode, and constant Clip bounds; a Clip that does not
    qualify ends the chain at the BatchNormalization.
    """
    protected = set(protected) | set(model.output_names)
    chains = []
    for conv in model.nodes:
        if conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx") or len(conv.outputs) != 1:
            continue
        if not _float_init(model, conv.input(1)) or (conv.input(2) and not _float_init(model, conv.input(2))):
            continue
        bn = _sole_consumer(model, conv.outputs[0], protected, ("BatchNormalization",))
        if bn is None or not _inference_bn(model, bn):
            continue
        act = _sole_consumer(model, bn.outputs[0], protected, _ACTS)
        bounds = _bounds(model, act) if act is not None else None
        if bounds is None:
            act, bounds = None, (-math.inf, math.inf, "", "")
        lo, hi, lo_name, hi_name = bounds
        last = act if act is not None else bn
        attrs = dict(conv.attrs)
        attrs.update(epsilon=float(bn.attr("epsilon", 1e-5)), lo=lo, hi=hi)
        node = Node(
            name="+".join(n.name for n in (conv, bn, act) if n is not None),
            op_type=CHAIN_OP,
            domain=CHAIN_DOMAIN,
            inputs=(conv.inputs[0], conv.inputs[1], conv.input(2), *bn.inputs[1:5], lo_name, hi_name),
            outputs=(last.outputs[0],),
            attrs=attrs,
            opset=conv.opset,
        )
        chains.append(Chain(conv, bn, act, node))
    return chains


def _size(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _nonzero(P: Prims, scale: Any) -> bool:
    """Whether every BatchNormalization scale is a known nonzero constant."""
    try:
        return bool(np.all(np.asarray(P.value(scale)) != 0))
    except Exception:  # NotEmittable: the scale is data
        return False


def conv_bn_act(P: Prims, ctx: VjpContext) -> Grads:
    """The VJP of a chain (see the module docstring); inputs ``x, W, B, scale, beta, mean, var, min, max``."""
    x, w, z = ctx.x(0), ctx.x(1), ctx.y(0)
    g = ctx.g(0)
    lo, hi = float(ctx.attr("lo")), float(ctx.attr("hi"))
    xs, ws, zs = P.shape(x), P.shape(w), P.shape(z)
    n, c = zs[0], ws[0]
    out: Grads = [None] * len(ctx.ins)
    keep = any(ctx.keep(i) for i in range(1, len(ctx.ins)))
    # the activation's gate, from its output: z passes where lo < z < hi
    dy = g
    sides = [P.compare(op, z, b) for op, b in ((">", lo), ("<", hi)) if math.isfinite(b)]
    if sides:
        dy = P.where(sides[0] if len(sides) == 1 else P.logical("and", sides[0], sides[1]), g, 0.0)
    for i, op, b in ((7, "<=", lo), (8, ">=", hi)):  # a bound's cotangent: where the output sits on it
        if ctx.has(i) and ctx.need(i):
            part = P.where(P.compare(op, z, b), g, 0.0)
            total = P.reduce_sum(part, tuple(range(1, len(zs))) if ctx.keep(i) else tuple(range(len(zs))))
            bs = P.shape(ctx.ins[i])
            out[i] = P.cast(P.reshape(total, (n, *bs) if ctx.keep(i) else bs), P.dtype(ctx.ins[i]))
    f64 = np.dtype(np.float64)
    scale, mean, var = ctx.x(3), ctx.x(5), ctx.x(6)
    inv = P.reciprocal(P.sqrt(P.add(P.cast(var, f64), float(ctx.attr("epsilon")))))
    s = P.mul(P.cast(scale, f64), inv)  # the folded scale, per output channel
    geom = conv_geometry(ctx, xs, ws, zs)
    want_xhat = ctx.need(3) or ctx.need(6)
    # Fold the scale into whichever is smaller: the weights (dx through W * s, dW = s * dW') or the
    # cotangent (dc = s * dy, then the plain convolution cotangents; the weights' dot then carries s).
    # Scaling the weights copies them per call (and, emitted, onnxruntime folds W * s into a persistent
    # copy): on the CIFAR ResNet-18 at batch 8 the weights are 20x a layer's cotangent. A zero scale
    # (a zero-initialised BatchNormalization) would lose dW', so it keeps the weight side.
    on_cot = _size(zs) < _size(ws) and _nonzero(P, scale)
    s_c = P.reshape(P.cast(s, P.dtype(w)), (c,) + (1,) * (len(ws) - 1))
    if on_cot:
        g_conv, w_conv = P.mul(dy, P.reshape(P.cast(s, P.dtype(dy)), (1, c) + (1,) * (len(zs) - 2))), w
    else:
        g_conv, w_conv = dy, P.mul(w, s_c) if ctx.need(0) else w
    if ctx.need(0):
        out[0] = P.conv_input_grad(g_conv, w_conv, xs, geom)
    # the weight cotangent of g_conv: dW itself (on_cot) or dW' = dW / s
    dwg = P.conv_weight_grad(x, g_conv, ws, geom, keep) if ctx.need(1) or want_xhat else None
    if ctx.need(1):
        assert dwg is not None
        dw = dwg if on_cot else P.mul(dwg, P.reshape(s_c, (1, *P.shape(s_c))) if keep else s_c)
        out[1] = dw if ctx.keep(1) or not keep else P.reduce_sum(dw, (0,))
    if not any(ctx.need(i) for i in range(2, 7)):
        return out
    acc = np.promote_types(P.dtype(x), np.float32)
    s_g = P.cast(P.reduce_sum(P.reshape(dy, (n, c, -1)), (2,), acc=acc), f64)  # [N, C]
    if not keep:
        s_g = P.reduce_sum(s_g, (0,), keepdims=True)  # [1, C]

    def per(v: Any, i: int) -> Any:
        return P.cast(v if ctx.keep(i) else P.reduce_sum(v, (0,)), P.dtype(ctx.x(i)))

    if ctx.need(2) and ctx.has(2):
        out[2] = per(P.mul(s_g, s), 2)
    if ctx.need(4):
        out[4] = per(s_g, 4)
    if ctx.need(5):
        out[5] = per(P.mul(s_g, P.neg(s)), 5)
    if want_xhat:
        assert dwg is not None
        # one dot per output channel over the weight's own axes (float32 like the weight cotangent's GEMM;
        # float64 copies of ResNet-18's weights cost 40 ms per call), with no reshape of the weight (an
        # emitted Reshape of a constant is folded into a copy)
        w_b = w if not keep else P.reshape(w, (1, *ws))
        wdw = P.cast(P.dot_sum(dwg, w_b, tuple(range(P.ndim(dwg) - len(ws) + 1, P.ndim(dwg))), acc), f64)
        wdw = P.reshape(wdw, (n, c) if keep else (1, c))
        if on_cot:
            wdw = P.div(wdw, s)  # sum_k W dW / s = sum_k W dW'
        shift = P.cast(mean, f64) if not ctx.has(2) else P.sub(P.cast(mean, f64), P.cast(ctx.x(2), f64))
        s_gxhat = P.mul(P.sub(wdw, P.mul(s_g, shift)), inv)  # sum dy * xhat, per channel
        if ctx.need(3):
            out[3] = per(s_gxhat, 3)
        if ctx.need(6):
            out[6] = per(P.mul(s_gxhat, P.mul(P.mul(P.mul(P.cast(scale, f64), -0.5), inv), inv)), 6)
    return out


#: The chains' rule (eager and emitted alike); per-sample cotangents natively.
CHAIN_RULE: PrimRule = prim_rule(conv_bn_act, "conv_bn_act", per_sample=True)
