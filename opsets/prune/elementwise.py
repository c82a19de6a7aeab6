"""``prune`` rules for ops that keep channels where they are: unary elementwise ops, pools,
normalisations with per-channel parameters, broadcasting binary ops, reductions, softmax-like ops.

Four templates cover the families: :func:`passthrough` (the channels go straight through),
:func:`broadcasting` (operands are aligned from the right; a constant operand with a channel dim is
sliced, a variable one is coupled), :func:`per_channel_params` (BatchNormalization-like), and
:func:`axis_op` / :func:`reduction` (safe only when they do not mix the channels).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..axes import normalize_axis
from ..registry import REGISTRY
from .base import Context, Effect, Port, Ref, blocked

if TYPE_CHECKING:
    from onnxslice.model import Node

__all__ = ["axis_op", "broadcasting", "passthrough", "per_channel_params", "reduction"]

Rule = Callable[["Node", Context, Port, Ref], Effect]


def _rank(ctx: Context, value: str) -> int | None:
    s = ctx.shape(value)
    return None if s is None else len(s)


def passthrough(*, channel_axis_only: bool = False, data_outputs: int = 1) -> Rule:
    """The channels of input 0 are those of the first ``data_outputs`` outputs, on the same axis.

    Args:
        channel_axis_only: the op acts on the spatial axes (pools), so the channels must be on axis 1.
        data_outputs: how many outputs carry the data; any further output in use (MaxPool indices,
            Dropout mask excepted) stops the group.
    """

    def rule(node: Node, ctx: Context, port: Port, ref: Ref) -> Effect:
        side, i = port
        if (side == "in" and i != 0) or (side == "out" and i >= data_outputs):
            return blocked(f"channels arrive on {side}put {i}, which is not the data tensor")
        if channel_axis_only and ref.axis != 1:
            return blocked(f"acts across axis {ref.axis} of its input, where the channels are")
        extra = [o for o in node.outputs[data_outputs:] if o]
        if extra and node.op_type != "Dropout":
            return blocked(f"its extra output '{extra[0]}' depends on the channel layout")
        data = [node.inputs[0], *[o for o in node.outputs[:data_outputs] if o]]
        if node.op_type == "Dropout" and len(node.outputs) > 1 and node.outputs[1]:
            data.append(node.outputs[1])
        arriving = node.inputs[i] if side == "in" else node.outputs[i]
        return Effect(refs=tuple((v, ref) for v in data if v != arriving))

    return rule


def broadcasting(node: Node, ctx: Context, port: Port, ref: Ref) -> Effect:
    """Multidirectional broadcasting ops (Add, Mul, Where, PRelu, Sum, ...).

    Operands are aligned from the right. An operand whose dim on the channel axis is 1 (or that has
    no such axis) is broadcast and stays; a constant operand with the channel dim is sliced; a variable
    operand with it is coupled: its channels are the same channels (a residual Add prunes both sides
    with one selection).
    """
    out = node.outputs[0]
    r_out = _rank(ctx, out)
    if r_out is None:
        return blocked(f"the rank of '{out}' is unknown (run shape inference)")
    side, i = port
    if side == "out":
        a_out = ref.axis
    else:
        r_in = _rank(ctx, node.inputs[i])
        if r_in is None:
            return blocked(f"the rank of '{node.inputs[i]}' is unknown")
        a_out = ref.axis + (r_out - r_in)
    refs: list[tuple[str, Ref]] = []
    cuts: list[tuple[str, Ref]] = []
    for j, v in enumerate(node.inputs):
        if not v or (side == "in" and j == i):
            continue
        shape = ctx.shape(v)
        if shape is None:
            return blocked(f"the shape of operand '{v}' is unknown")
        a = a_out - (r_out - len(shape))
        if a < 0 or shape[a] == 1:
            continue  # broadcast along the channels: unaffected
        if not isinstance(shape[a], int):
            return blocked(f"operand '{v}' has an unknown dim {shape[a]!r} on the channel axis")
        if ctx.is_const(v):
            cuts.append((v, ref.moved(a, ref.offset, 1)))
        else:
            refs.append((v, ref.moved(a, ref.offset, 1)))
    if side == "in":
        refs.append((out, ref.moved(a_out, ref.offset, 1)))
    return Effect(refs=tuple(refs), cuts=tuple(cuts))


def per_channel_params(params: tuple[int, ...], data_outputs: int = 1) -> Rule:
    """Normalisations with one parameter per channel on axis 1 (BatchNormalization, InstanceNormalization)."""

    def rule(node: Node, ctx: Context, port: Port, ref: Ref) -> Effect:
        side, i = port
        if (side, i) not in (("in", 0), ("out", 0)):
            return blocked(f"channels arrive on {side}put {i}, which is not the data tensor")
        if ref.axis != 1:
            return blocked(f"its parameters are per channel on axis 1, but the group is on axis {ref.axis}")
        if any(o for o in node.outputs[data_outputs:]):
            return blocked("it is in training mode (running statistics are outputs)")
        cuts = []
        for k in params:
            p = node.input(k)
            if not p:
                continue
            if not ctx.is_const(p):
                return blocked(f"its parameter '{p}' is computed at run time")
            cuts.append((p, ref.moved(0, ref.offset, 1)))
        other = node.outputs[0] if side == "in" else node.inputs[0]
        return Effect(refs=((other, ref),), cuts=tuple(cuts))

    return rule


def axis_op(default_axis: int, *, coerce_2d_until: int | None = None) -> Rule:
    """Ops that mix values along one axis (Softmax, LogSoftmax, Hardmax, LayerNormalization).

    Safe only when the channels are on another axis; before opset 13 Softmax flattens every axis from
    ``axis`` on (``coerce_2d_until=12``), so all of those count.
    """

    def rule(node: Node, ctx: Context, port: Port, ref: Ref) -> Effect:
        side, i = port
        if (side, i) not in (("in", 0), ("out", 0)):
            return blocked(f"channels arrive on {side}put {i}")
        shape = ctx.shape(node.inputs[0])
        if shape is None:
            return blocked("the rank of its input is unknown")
        axis = normalize_axis(int(node.attr("axis", default_axis)), len(shape))
        mixes = ref.axis >= axis if (coerce_2d_until and node.opset <= coerce_2d_until) else ref.axis == axis
        if node.op_type == "LayerNormalization":
            mixes = ref.axis >= axis
        if mixes:
            return blocked(f"it normalises over axis {ref.axis}, where the channels are")
        if any(o for o in node.outputs[1:]):
            return blocked("its extra outputs depend on the channel layout")
        other = node.outputs[0] if side == "in" else node.inputs[0]
        return Effect(refs=((other, ref),))

    return rule


def reduction(node: Node, ctx: Context, port: Port, ref: Ref) -> Effect:
    """Reduce* ops: safe when the reduced axes do not include the channel axis (the axis may shift)."""
    side, i = port
    if (side, i) not in (("in", 0), ("out", 0)):
        return blocked(f"channels arrive on {side}put {i}")
    shape = ctx.shape(node.inputs[0])
    if shape is None:
        return blocked("the rank of its input is unknown")
    rank = len(shape)
    axes_attr = node.attr("axes")
    if axes_attr is None and node.input(1):
        if not ctx.is_const(node.input(1)):
            return blocked("its axes are computed at run time")
        axes_attr = [int(a) for a in ctx.const(node.input(1)).reshape(-1)]
    if not axes_attr:
        if node.attr("noop_with_empty_axes", 0):
            axes: list[int] = []
        else:
            return blocked("it reduces over every axis, the channels included")
    else:
        axes = sorted(normalize_axis(int(a), rank) for a in axes_attr)
    keep = int(node.attr("keepdims", 1))
    in_axes = [a for a in range(rank) if keep or a not in axes]  # output axis k <- input axis in_axes[k]
    if side == "in":
        if ref.axis in axes:
            return blocked(f"it reduces over axis {ref.axis}, where the channels are")
        return Effect(refs=((node.outputs[0], ref.moved(in_axes.index(ref.axis), ref.offset, 1)),))
    a_in = in_axes[ref.axis]
    if a_in in axes:
        return blocked("the channels are a reduced axis")
    return Effect(refs=((node.inputs[0], ref.moved(a_in, ref.offset, 1)),))


_UNARY = [
    "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Softplus",
    "Softsign", "Erf", "Gelu", "Exp", "Log", "Sqrt", "Reciprocal", "Neg", "Abs", "Sin", "Cos", "Mish", "Swish",
    "ThresholdedRelu", "Floor", "Ceil", "Round", "Sign", "Identity", "Cast", "Dropout", "Clip", "IsNaN", "IsInf",
    "Not",
]
REGISTRY.register("prune", _UNARY)(passthrough())
REGISTRY.register("prune", ["MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"])(
    passthrough(channel_axis_only=True)
)
REGISTRY.register("prune", ["Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "PRelu"])(
    broadcasting
)
REGISTRY.register("prune", "BatchNormalization")(per_channel_params((1, 2, 3, 4)))
REGISTRY.register("prune", "InstanceNormalization")(per_channel_params((1, 2)))
REGISTRY.register("prune", ["Softmax", "LogSoftmax", "Hardmax"], until=12)(axis_op(1, coerce_2d_until=12))
REGISTRY.register("prune", ["Softmax", "LogSoftmax", "Hardmax"], since=13)(axis_op(-1))
REGISTRY.register("prune", "LayerNormalization")(axis_op(-1))
REGISTRY.register("prune", ["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL1", "ReduceL2",
                            "ReduceSumSquare", "ReduceProd", "ReduceLogSumExp"])(reduction)
