"""``prune`` templates for ops whose channel safety depends on an axis.

:func:`per_channel_params` (BatchNormalization-like: per-channel parameters are sliced with the channels),
:func:`axis_op` (Softmax-like and LayerNormalization: safe only when the channels are on another axis),
:func:`reduction` (safe only when the reduced axes are not the channel axis) and :func:`unless_on_axis`
(Split, Slice, Pad, Resize: a pass-through away from the axes they act on).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..axes import normalize_axis
from ..capabilities.prune import Context, Dim, Effect, Port, Ref, Rule, blocked

if TYPE_CHECKING:
    from onnxslice.model import Node


def _data_shape(node: Node, ctx: Context, port: Port) -> tuple[Dim, ...] | Effect:
    """The static shape of input 0 when the channels arrive on the data tensor, else why the group stops."""
    side, i = port
    if (side, i) not in (("in", 0), ("out", 0)):
        return blocked(f"channels arrive on {side}put {i}")
    shape = ctx.shape(node.inputs[0])
    if shape is None:
        return blocked("the rank of its input is unknown")
    return shape


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
        side, _ = port
        shape = _data_shape(node, ctx, port)
        if isinstance(shape, Effect):
            return shape
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
    side, _ = port
    shape = _data_shape(node, ctx, port)
    if isinstance(shape, Effect):
        return shape
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


def unless_on_axis(axis_of: Callable[[Node, Context], list[int] | str]) -> Rule:
    """Ops that act on some axes only (Split, Slice, Pad, Resize): a pass-through away from them."""

    def rule(node: Node, ctx: Context, port: Port, ref: Ref) -> Effect:
        side, i = port
        if (side == "in" and i != 0) or (side == "out" and ctx.is_graph_output(node.outputs[i])):
            return blocked(f"channels arrive on {side}put {i}")
        acted = axis_of(node, ctx)
        if isinstance(acted, str):
            return blocked(acted)
        if ref.axis in acted:
            return blocked(f"it acts on axis {ref.axis}, where the channels are")
        values = [node.inputs[0], *[o for o in node.outputs if o]]
        arriving = node.inputs[0] if side == "in" else node.outputs[i]
        return Effect(refs=tuple((v, ref) for v in values if v != arriving))

    return rule
