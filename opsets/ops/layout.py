"""Layout ops that move, copy or select elements: Reshape, Flatten, Transpose, Squeeze, Unsqueeze, Concat,
Split, Slice, Pad, Expand, Tile, DepthToSpace, SpaceToDepth, Trilu.

- ``vjp`` (the routing template): the cotangent goes back where each element came from. Reshape, Flatten,
  Squeeze and Unsqueeze reshape back whatever form their axes or shape take in any opset; Slice and Pad read
  their parameters from attributes in early opsets and from inputs later (one rule per opset range);
  DepthToSpace and SpaceToDepth (DCR and CRD) apply the inverse rearrangement; Trilu keeps the same
  triangle of the cotangent.
- ``contributions``: routing (:mod:`onnxslice.opsets.templates.routing`): CONTRIB moves to the input element
  each output element copies, found by running the op on index tensors.
- ``prune``: Flatten and Reshape map a channel axis onto a flattened axis (channel ``c`` becomes the block
  of H*W features ``c*H*W ... (c+1)*H*W - 1``); Concat along the channel axis shifts the offset by the sizes
  of the inputs before it; Transpose, Squeeze and Unsqueeze move the axis; Split, Slice and Pad are safe
  only away from the channel axis; DepthToSpace and SpaceToDepth are left alone (they move blocks of
  channels into space). Anything that splits or mixes the channel axis otherwise stops the group with the
  reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..axes import normalize_axes, normalize_axis
from ..capabilities.info import OpInfo, register_info
from ..capabilities.prune import Context, CountEdit, Effect, Port, Ref, blocked, const_input, left_alone, prod
from ..capabilities.vjp import VjpContext, int_list, register
from ..coverage import refuses
from ..registry import REGISTRY
from ..templates.axis import unless_on_axis
from ..templates.routing import prim_routing, routing, routing_contributions
from ..vjp.eager import register_prim
from ..vjp.prims import Prims

if TYPE_CHECKING:
    from onnxslice.model import Node


# -- info: static metadata ---------------------------------------------------------------------------


register_info("Trilu", OpInfo("layout", non_differentiable=(1,), layout_only=True), since=14)
register_info("Flatten Transpose", OpInfo("layout", layout_only=True))
register_info("Reshape Expand Tile", OpInfo("layout", non_differentiable=(1,), layout_only=True))
register_info("Squeeze Unsqueeze", OpInfo("layout", non_differentiable=(1,), layout_only=True))
register_info("Concat SpaceToDepth DepthToSpace", OpInfo("layout", layout_only=True))
register_info("Split", OpInfo("layout", non_differentiable=(1,), layout_only=True))
register_info("Slice", OpInfo("layout", non_differentiable=(1, 2, 3, 4), layout_only=True))
register_info("Pad", OpInfo("layout", non_differentiable=(1, 2, 3), layout_only=True))

# -- vjp: gradients ----------------------------------------------------------------------------------


def _trilu_back(ctx: VjpContext, g: np.ndarray) -> list[np.ndarray | None]:
    x = ctx.x(0)
    k = int(np.asarray(ctx.x(1)).reshape(())) if ctx.has(1) else 0
    upper = bool(ctx.attr("upper", 1))
    rows, cols = x.shape[-2], x.shape[-1]
    keep = np.triu(np.ones((rows, cols), bool), k) if upper else np.tril(np.ones((rows, cols), bool), k)
    return [np.where(keep, g, 0).astype(x.dtype, copy=False)]


register(["Trilu"], routing(_trilu_back, "trilu_back"), since=14)


def _d2s_layout(x_shape: tuple[int, ...], b: int, mode: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    n, c, h, w = x_shape
    if mode == "CRD":
        return (n, c // (b * b), b, b, h, w), (0, 1, 4, 2, 5, 3)
    return (n, b, b, c // (b * b), h, w), (0, 3, 4, 1, 5, 2)


def _depth_to_space_back(ctx: VjpContext, g: np.ndarray) -> list[np.ndarray | None]:
    x = ctx.x(0)
    shape, perm = _d2s_layout(tuple(x.shape), int(ctx.attr("blocksize")), str(ctx.attr("mode", "DCR")))
    moved = tuple(shape[p] for p in perm)
    return [g.reshape(moved).transpose(np.argsort(perm)).reshape(x.shape)]


def _space_to_depth_back(ctx: VjpContext, g: np.ndarray) -> list[np.ndarray | None]:
    x = ctx.x(0)
    b = int(ctx.attr("blocksize"))
    n, c, h, w = x.shape
    crd = str(ctx.attr("mode", "DCR")) == "CRD"
    shape, perm = (n, c, h // b, b, w // b, b), ((0, 1, 3, 5, 2, 4) if crd else (0, 3, 5, 1, 2, 4))
    moved = tuple(shape[p] for p in perm)
    return [g.reshape(moved).transpose(np.argsort(perm)).reshape(x.shape)]


register(["DepthToSpace"], routing(_depth_to_space_back, "depth_to_space_back"))


register(["SpaceToDepth"], routing(_space_to_depth_back, "space_to_depth_back"))


def _split_back(ctx: VjpContext, g0: np.ndarray) -> list[np.ndarray | None]:
    x = ctx.x(0)
    axis = int(ctx.attr("axis", 0))
    parts = [ctx.g(k) for k in range(len(ctx.node.outputs))]
    return [np.concatenate(parts, axis=axis).reshape(x.shape)]


def _slice_params(ctx: VjpContext, from_inputs: bool) -> tuple[list[int], list[int], list[int], list[int]]:
    rank = ctx.x(0).ndim
    if from_inputs:
        starts, ends = int_list(ctx.x(1)), int_list(ctx.x(2))
        axes = int_list(ctx.x(3)) if ctx.has(3) else list(range(len(starts)))
        steps = int_list(ctx.x(4)) if ctx.has(4) else [1] * len(starts)
    else:
        starts, ends = int_list(ctx.attr("starts")), int_list(ctx.attr("ends"))
        axes = int_list(ctx.attr("axes", list(range(len(starts)))))
        steps = [1] * len(starts)
    return starts, ends, normalize_axes(axes, rank), steps


def _onnx_slice(start: int, end: int, step: int, dim: int) -> slice:
    """ONNX Slice clamping rules as a Python slice."""
    if start < 0:
        start += dim
    if end < 0:
        end += dim
    if step > 0:
        return slice(min(max(start, 0), dim), min(max(end, 0), dim), step)
    start = min(max(start, 0), dim - 1)
    end = min(max(end, -1), dim - 1)
    return slice(start, None if end < 0 else end, step)


def _slicer(from_inputs: bool):  # type: ignore[no-untyped-def]
    def back(ctx: VjpContext, g: np.ndarray) -> list[np.ndarray | None]:
        x = ctx.x(0)
        index = [slice(None)] * x.ndim
        for s, e, a, st in zip(*_slice_params(ctx, from_inputs), strict=True):
            index[a] = _onnx_slice(s, e, st, x.shape[a])
        dx = np.zeros_like(x)
        dx[tuple(index)] = g
        return [dx]

    return back


def _pad_params(ctx: VjpContext, from_inputs: bool) -> tuple[list[int], str]:
    x = ctx.x(0)
    mode = str(ctx.attr("mode", "constant"))
    if not from_inputs:
        pads = int_list(ctx.attr("pads", ctx.attr("paddings")))
        return pads, mode
    pads = int_list(ctx.x(1))
    if ctx.has(3):
        axes = normalize_axes(int_list(ctx.x(3)), x.ndim)
        full = [0] * (2 * x.ndim)
        k = len(axes)
        for j, a in enumerate(axes):
            full[a], full[a + x.ndim] = pads[j], pads[j + k]
        pads = full
    return pads, mode


def _padder(from_inputs: bool):  # type: ignore[no-untyped-def]
    def back(ctx: VjpContext, g: np.ndarray) -> list[np.ndarray | None]:
        return _pad_back(ctx, g, *_pad_params(ctx, from_inputs))

    return back


def _pad_back(ctx: VjpContext, g: np.ndarray, pads: list[int], mode: str) -> list[np.ndarray | None]:
    """Route through an index array padded the same way (``np.pad`` modes match ONNX's)."""
    x = ctx.x(0)
    r = x.ndim
    idx = np.arange(x.size, dtype=np.int64).reshape(x.shape)
    crop = tuple(slice(max(-pads[i], 0), x.shape[i] - max(-pads[i + r], 0)) for i in range(r))
    idx = idx[crop]
    widths = [(max(pads[i], 0), max(pads[i + r], 0)) for i in range(r)]
    if mode == "constant":
        padded = np.pad(idx, widths, mode="constant", constant_values=-1)
    else:
        padded = np.pad(idx, widths, mode=mode)  # type: ignore[call-overload]  # ONNX's modes are numpy's
    flat, gf = padded.reshape(-1), g.reshape(-1)
    keep = flat >= 0
    dx = np.bincount(flat[keep], weights=gf[keep], minlength=x.size)
    return [dx.reshape(x.shape).astype(x.dtype)]


register(["Split"], routing(_split_back, "split_back"))


register(["Slice"], routing(_slicer(False), "slice_back_attrs"), until=9)


register(["Slice"], routing(_slicer(True), "slice_back"), since=10)


register(["Pad"], routing(_padder(False), "pad_back_attrs"), until=10)


register(["Pad"], routing(_padder(True), "pad_back"), since=11)


def _p_reshape_back(P: Prims, ctx: VjpContext, g: Any) -> list[Any]:
    return [P.reshape(g, P.shape(ctx.x(0)))]


def _p_transpose_back(P: Prims, ctx: VjpContext, g: Any) -> list[Any]:
    perm = ctx.attr("perm")
    nd = P.ndim(g)
    perm = list(range(nd))[::-1] if perm is None else int_list(perm)
    return [P.transpose(g, [int(v) for v in np.argsort(perm)])]


_RESHAPES = ["Reshape", "Flatten", "Squeeze", "Unsqueeze"]


register_prim(_RESHAPES, prim_routing(_p_reshape_back, "reshape_back"), "reshape_back")


register_prim(["Transpose"], prim_routing(_p_transpose_back, "transpose_back"), "transpose_back")


def _p_concat_back(P: Prims, ctx: VjpContext, g: Any) -> list[Any]:
    nd = P.ndim(g)
    axis = int(ctx.attr("axis"))
    axis = axis + nd if axis < 0 else axis
    out: list[Any] = []
    start = 0
    for i, v in enumerate(ctx.ins):
        size = P.shape(v)[axis] if v is not None else 0
        out.append(P.slice(g, axis, start, start + size) if ctx.need(i) else None)
        start += size
    return out


def _p_expand_back(P: Prims, ctx: VjpContext, g: Any) -> list[Any]:
    return [P.unbroadcast(g, P.shape(ctx.x(0)))]


def _p_tile_back(P: Prims, ctx: VjpContext, g: Any) -> list[Any]:
    xs = P.shape(ctx.x(0))
    reps = int_list(P.value(ctx.x(1)))
    shaped = P.reshape(g, [v for r, d in zip(reps, xs, strict=True) for v in (r, d)])
    return [P.reduce_sum(shaped, tuple(range(0, 2 * len(xs), 2)))]


register_prim(["Concat"], prim_routing(_p_concat_back, "concat_back"), "concat_back")


register_prim(["Expand"], prim_routing(_p_expand_back, "expand_back"), "expand_back", since=8)


register_prim(["Tile"], prim_routing(_p_tile_back, "tile_back"), "tile_back", since=6)

# -- contributions: NNSlicer -------------------------------------------------------------------------


REGISTRY.register("contributions", "Trilu", since=14)(routing_contributions)


REGISTRY.register(
    "contributions",
    [
        "Flatten",
        "Reshape",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "Concat",
        "Split",
        "Slice",
        "Pad",
        "Expand",
        "Tile",
        "DepthToSpace",
        "SpaceToDepth",
    ],
)(routing_contributions)

# -- prune: channel groups ---------------------------------------------------------------------------


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


def _split_axes(node: Node, ctx: Context) -> list[int] | str:
    s = ctx.shape(node.inputs[0])
    if s is None:
        return "the rank of its input is unknown"
    a = int(node.attr("axis", 0))
    return [a + len(s) if a < 0 else a]


def _slice_axes(node: Node, ctx: Context) -> list[int] | str:
    s = ctx.shape(node.inputs[0])
    if s is None:
        return "the rank of its input is unknown"
    if node.opset < 10:
        axes = node.attr("axes") or list(range(len(s)))
    else:
        got = const_input(node, ctx, 3)
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
        got = const_input(node, ctx, 1)
        if isinstance(got, str) or got is None:
            return got or "its pads are unknown"
        pads = got.reshape(-1).tolist()
        if node.input(3):
            return "it pads chosen axes only (axes input)"
    r = len(s)
    return [a for a in range(r) if pads[a] != 0 or pads[a + r] != 0]


REGISTRY.register("prune", ["Transpose", "Squeeze", "Unsqueeze"])(axis_mover)


REGISTRY.register("prune", "Flatten")(flatten)


REGISTRY.register("prune", "Reshape", since=5)(reshape)


REGISTRY.register("prune", "Concat")(concat)


REGISTRY.register("prune", "Split")(unless_on_axis(_split_axes))


REGISTRY.register("prune", "Slice")(unless_on_axis(_slice_axes))


REGISTRY.register("prune", "Pad")(unless_on_axis(_pad_axes))


_MOVES_CHANNELS = {
    "DepthToSpace": "it moves blocks of blocksize^2 channels into space",
    "SpaceToDepth": "it moves space into blocks of blocksize^2 channels",
}
for _op, _why in _MOVES_CHANNELS.items():
    REGISTRY.register("prune", _op)(left_alone(_why))
    refuses("prune", _op, _why, lambda n, m: True)
