"""``prune`` rules for ops that move channels: Transpose, Squeeze/Unsqueeze, Flatten, Reshape, Concat,
and ops that are safe only away from the channel axis (Split, Slice, Pad, Resize).

Flatten and Reshape map a channel axis onto a flattened axis: channel ``c`` becomes the block of H*W
features ``c*H*W ... (c+1)*H*W - 1`` (the C*H*W feature mapping of Flatten -> Gemm). Concat along the
channel axis shifts the offset by the sizes of the inputs before it. Anything that splits or mixes the
channel axis in another way stops the group with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from ..axes import normalize_axes, normalize_axis
from ..registry import REGISTRY
from .base import Context, CountEdit, Effect, Port, Ref, blocked, prod

if TYPE_CHECKING:
    from onnxslice.model import Node

__all__ = ["axis_mover", "concat", "flatten", "reshape", "unless_on_axis"]

Rule = Callable[["Node", Context, Port, Ref], Effect]


def _axes(node: Node, ctx: Context, rank: int) -> list[int] | None:
    """The ``axes`` attribute or constant input 1, normalised; None when computed at run time."""
    axes = node.attr("axes")
    if axes is None and node.input(1):
        if not ctx.is_const(node.input(1)):
            return None
        axes = [int(a) for a in ctx.const(node.input(1)).reshape(-1)]
    return sorted(normalize_axes(axes or [], rank))


def _axis_map(node: Node, ctx: Context) -> list[int | None] | str:
    """For each output axis, the input axis it comes from (None for a new axis), or why unknown."""
    s_in, s_out = ctx.shape(node.inputs[0]), ctx.shape(node.outputs[0])
    if s_in is None or s_out is None:
        return "the ranks of its input and output are unknown"
    r_in, r_out = len(s_in), len(s_out)
    if node.op_type == "Transpose":
        perm = node.attr("perm") or list(range(r_in))[::-1]
        return [int(p) for p in perm]
    if node.op_type == "Squeeze":
        axes = _axes(node, ctx, r_in)
        if axes is None:
            return "its axes are computed at run time"
        if not axes:
            axes = [a for a, d in enumerate(s_in) if d == 1]
        return [a for a in range(r_in) if a not in axes]
    # Unsqueeze
    axes = _axes(node, ctx, r_out)
    if axes is None:
        return "its axes are computed at run time"
    src = iter(range(r_in))
    return [None if a in axes else next(src) for a in range(r_out)]


def axis_mover(node: Node, ctx: Context, port: Port, ref: Ref) -> Effect:
    """Transpose, Squeeze, Unsqueeze: the channels move to another axis, unchanged."""
    side, i = port
    if (side, i) not in (("in", 0), ("out", 0)):
        return blocked(f"channels arrive on {side}put {i}")
    amap = _axis_map(node, ctx)
    if isinstance(amap, str):
        return blocked(amap)
    if side == "in":
        return Effect(refs=((node.outputs[0], ref.moved(amap.index(ref.axis), ref.offset, 1)),))
    a_in = amap[ref.axis]
    if a_in is None:
        return blocked("the channels are on an inserted axis")
    return Effect(refs=((node.inputs[0], ref.moved(a_in, ref.offset, 1)),))


def _merge_into(ref: Ref, s_in: tuple, merged_from: int) -> Ref | str:
    """The reference after merging input axes ``merged_from..end`` into one axis ``merged_from``."""
    before = prod(list(s_in[merged_from : ref.axis]))
    after = prod(list(s_in[ref.axis + 1 :]))
    if before is None or after is None:
        return "the dims merged with the channels are not static"
    if before != 1:
        return f"axes {merged_from}..{ref.axis - 1} merged before the channels are not of size 1"
    return ref.moved(merged_from, ref.offset * after, after)


def _split_from(ref: Ref, s_in: tuple, axis: int) -> Ref | str:
    """Inverse of :func:`_merge_into`: a reference on a merged axis back on input axis ``axis``."""
    after = prod(list(s_in[axis + 1 :]))
    if after is None:
        return "the dims merged with the channels are not static"
    if ref.offset % after or ref.block % after:
        return "the flattened features do not align with whole channels"
    return Ref(axis, ref.offset // after, ref.block // after, ref.size)


def flatten(node: Node, ctx: Context, port: Port, ref: Ref) -> Effect:
    """Flatten(axis=k): channels on axis ``a >= k`` become blocks of ``prod(dims after a)`` features."""
    side, i = port
    if (side, i) not in (("in", 0), ("out", 0)):
        return blocked(f"channels arrive on {side}put {i}")
    s_in = ctx.shape(node.inputs[0])
    if s_in is None:
        return blocked("the shape of its input is unknown")
    k = int(node.attr("axis", 1))
    k = k + len(s_in) if k < 0 else k
    if side == "in":
        if ref.axis < k:
            return blocked(f"the channels (axis {ref.axis}) are merged with the batch axes")
        out = _merge_into(ref, s_in, k)
        return blocked(out) if isinstance(out, str) else Effect(refs=((node.outputs[0], out.moved(1, out.offset)),))
    if ref.axis != 1:
        return blocked("the channels are on the merged leading axis")
    back = _split_from(ref, s_in, k)
    return blocked(back) if isinstance(back, str) else Effect(refs=((node.inputs[0], back),))


def reshape(node: Node, ctx: Context, port: Port, ref: Ref) -> Effect:
    """Reshape with a constant shape that keeps the channel axis or flattens from it to the end.

    The shape constant's entry for that axis shrinks with the channels (a per-node copy is written).
    A computed shape, or one that splits or mixes the channel axis, stops the group.
    """
    side, i = port
    if (side, i) not in (("in", 0), ("out", 0)):
        return blocked(f"channels arrive on {side}put {i}")
    if not ctx.is_const(node.input(1)):
        return blocked("its target shape is computed at run time (export with a static flatten)")
    target = [int(x) for x in ctx.const(node.input(1)).reshape(-1)]
    s_in, s_out = ctx.shape(node.inputs[0]), ctx.shape(node.outputs[0])
    if s_in is None or s_out is None:
        return blocked("the shapes of its input and output are unknown")
    a = ref.axis
    if a >= len(s_in) or a >= len(target):
        return blocked("hard-coded target shape that drops or moves the channel axis")
    if not all(t in (0, -1) or (isinstance(d, int) and t == d) for t, d in zip(target[:a], s_in[:a], strict=False)):
        return blocked("hard-coded target shape that reshapes the axes before the channels")
    other = node.outputs[0] if side == "in" else node.inputs[0]
    if isinstance(s_in[a], int) and s_out[a] == s_in[a]:  # channel axis kept; trailing axes may change
        moved, per = ref, ref.block
    elif len(target) == a + 1 and target[a] != 0:  # flatten from the channel axis to the end
        m = _merge_into(ref, s_in, a) if side == "in" else _split_from(ref, s_in, a)
        if isinstance(m, str):
            return blocked(m)
        moved = m
        per = m.block if side == "in" else ref.block
    else:
        return blocked("hard-coded target shape that splits or mixes the channel axis")
    counts = (CountEdit("input", per, index=1, position=a),) if target[a] > 0 else ()
    return Effect(refs=((other, moved),), counts=counts)


def concat(node: Node, ctx: Context, port: Port, ref: Ref) -> Effect:
    """Concat: along the channel axis the offset shifts by the inputs before; along another axis every
    operand carries the same channels (coupled, like Add)."""
    shapes = [ctx.shape(v) for v in node.inputs]
    if any(s is None for s in shapes):
        return blocked("the shapes of its inputs are unknown")
    rank = len(shapes[0])  # type: ignore[arg-type]
    axis = int(node.attr("axis"))
    axis = normalize_axis(axis, rank)
    side, i = port
    if ref.axis != axis:
        refs = [(v, ref) for j, v in enumerate(node.inputs) if not (side == "in" and j == i) and not ctx.is_const(v)]
        cuts = [(v, ref) for v in node.inputs if ctx.is_const(v)]
        if side == "in":
            refs.append((node.outputs[0], ref))
        return Effect(refs=tuple(refs), cuts=tuple(cuts))
    sizes = [s[axis] for s in shapes]  # type: ignore[index]
    if not all(isinstance(d, int) for d in sizes):
        return blocked("the sizes of its inputs along the concat axis are not static")
    starts = [0, *np.cumsum([int(d) for d in sizes if isinstance(d, int)]).tolist()]
    if side == "in":
        return Effect(refs=((node.outputs[0], ref.moved(axis, ref.offset + starts[i], 1)),))
    for j, v in enumerate(node.inputs):
        if starts[j] <= ref.offset and ref.end <= starts[j + 1]:
            if ctx.is_const(v):
                return Effect(cuts=((v, ref.moved(axis, ref.offset - starts[j], 1)),))
            return Effect(refs=((v, ref.moved(axis, ref.offset - starts[j], 1)),))
    return blocked("the channels straddle two concatenated inputs")


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


def _split_axes(node: Node, ctx: Context) -> list[int] | str:
    s = ctx.shape(node.inputs[0])
    if s is None:
        return "the rank of its input is unknown"
    a = int(node.attr("axis", 0))
    return [a + len(s) if a < 0 else a]


def _const_input(node: Node, ctx: Context, k: int) -> np.ndarray | str | None:
    v = node.input(k)
    if not v:
        return None
    if not ctx.is_const(v):
        return f"its input {k} ('{v}') is computed at run time"
    return np.asarray(ctx.const(v))


def _slice_axes(node: Node, ctx: Context) -> list[int] | str:
    s = ctx.shape(node.inputs[0])
    if s is None:
        return "the rank of its input is unknown"
    if node.opset < 10:
        axes = node.attr("axes") or list(range(len(s)))
    else:
        got = _const_input(node, ctx, 3)
        if isinstance(got, str):
            return got
        axes = list(range(len(s))) if got is None else [int(a) for a in got.reshape(-1)]
    return [int(a) + len(s) if int(a) < 0 else int(a) for a in axes]


def _pad_axes(node: Node, ctx: Context) -> list[int] | str:
    s = ctx.shape(node.inputs[0])
    if s is None:
        return "the rank of its input is unknown"
    pads = node.attr("pads")
    if pads is None:
        got = _const_input(node, ctx, 1)
        if isinstance(got, str) or got is None:
            return got or "its pads are unknown"
        pads = got.reshape(-1).tolist()
        if node.input(3):
            return "it pads chosen axes only (axes input)"
    r = len(s)
    return [a for a in range(r) if pads[a] != 0 or pads[a + r] != 0]


def _resize_axes(node: Node, ctx: Context) -> list[int] | str:
    s = ctx.shape(node.inputs[0])
    if s is None:
        return "the rank of its input is unknown"
    if node.input(3):
        return "it resizes to hard-coded sizes (sizes input)"
    k = 1 if node.opset < 11 else 2
    got = _const_input(node, ctx, k)
    if isinstance(got, str) or got is None:
        return got or "its scales are unknown"
    return [a for a, f in enumerate(got.reshape(-1).tolist()) if f != 1.0]


def _shape_reader(node: Node, ctx: Context, port: Port, ref: Ref) -> Effect:
    return blocked("it reads the channel count (the computed shapes would change)")


REGISTRY.register("prune", ["Transpose", "Squeeze", "Unsqueeze"])(axis_mover)
REGISTRY.register("prune", "Flatten")(flatten)
REGISTRY.register("prune", "Reshape", since=5)(reshape)
REGISTRY.register("prune", "Concat")(concat)
REGISTRY.register("prune", "Split")(unless_on_axis(_split_axes))
REGISTRY.register("prune", "Slice")(unless_on_axis(_slice_axes))
REGISTRY.register("prune", "Pad")(unless_on_axis(_pad_axes))
REGISTRY.register("prune", "Resize")(unless_on_axis(_resize_axes))
REGISTRY.register("prune", ["Shape", "Size"])(_shape_reader)
