"""VJPs of layout ops: the cotangent goes back where each element came from (the routing template).

Reshape, Flatten, Squeeze and Unsqueeze only reshape, so their VJP reshapes back whatever form
their axes or shape take in any opset. Slice, Pad and Reduce-style ops read their parameters from
attributes in early opsets and from inputs later; those rules are registered per opset range.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import VjpContext, int_list, normalize_axes, register, routing
from .prims import Prims, prim_routing, register_prim


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


def _gather_back(ctx: VjpContext, g: np.ndarray) -> list[np.ndarray | None]:
    x, idx = ctx.x(0), np.asarray(ctx.x(1)).astype(np.int64)
    axis = int(ctx.attr("axis", 0))
    axis = axis + x.ndim if axis < 0 else axis
    idx = np.where(idx < 0, idx + x.shape[axis], idx)
    dx = np.zeros_like(x)
    dxm = np.moveaxis(dx, axis, 0)
    gm = np.moveaxis(g, list(range(axis, axis + idx.ndim)), list(range(idx.ndim)))
    np.add.at(dxm, idx, gm)
    return [dx]


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
register(["Gather"], routing(_gather_back, "gather_back"))
register(["Pad"], routing(_padder(False), "pad_back_attrs"), until=10)
register(["Pad"], routing(_padder(True), "pad_back"), since=11)


# -- written against the primitives (eager and ONNX-emittable) ---------------------------------------


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
