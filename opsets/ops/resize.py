"""Resize and Upsample: interpolation matrices and every capability.

``contributions``: Resize and Upsample: nearest routes CONTRIB like any layout op; linear and cubic are weighted
averages.

Nearest (every ``nearest_mode`` and coordinate mode) copies one input element per output element: the
routing rule moves the output's CONTRIB to it. Linear and cubic output element ``n`` is a fixed weighted
average ``y_n = sum_i w_ni x_i`` of its neighbours (the separable interpolation weights of
:func:`axis_matrices` below); like an average pool it applies no theta: every neighbour with a non-zero
weight gets ``sign(CONTRIB_n * dy_n * w_ni * dx_i)``. Vectorised through the separability:
``sign(w_ni) = prod_a sign(M_a[o_a, i_a])``, so the increments are ``sign(dx) * (osign ×_a sign(M_a)^T)``.
At channel granularity the term of a channel is the channel mean of the interpolated deltas.

Resize and Upsample as separable linear maps: one interpolation matrix per resized axis.

For fixed scales (or sizes) every mode of Resize is linear in ``X``: output coordinate ``o`` of an axis reads
input elements with weights that depend only on ``o``. This module builds, per axis, the matrix
``M [out, in]`` of those weights following the ONNX spec as onnxruntime implements it:

- coordinate transformation modes ``half_pixel`` (default), ``half_pixel_symmetric``, ``pytorch_half_pixel``,
  ``align_corners``, ``asymmetric``, ``tf_half_pixel_for_nn``, ``tf_crop_and_resize`` (``roi``; outside
  elements take ``extrapolation_value``, a constant);
- ``nearest`` with ``round_prefer_floor`` (default), ``round_prefer_ceil``, ``floor``, ``ceil``; ``linear``
  (the coordinate clamped to the input); ``cubic`` (``cubic_coeff_a``, ``exclude_outside``);
- opset < 11 (``Upsample``, ``Resize-10``): asymmetric coordinates, nearest truncates (rounds up when
  downsampling);
- scales or sizes, ``axes`` and ``keep_aspect_ratio_policy`` (opset 18).

Coordinates are computed in float32, as onnxruntime does (a nearest index at an exact tie depends on
it). ``antialias=1`` is refused. ``Y = X ×_a M_a`` over the resized axes; its VJP is ``dY ×_a M_a^T``.

``vjp``: VJPs of Resize and Upsample: the transpose of the separable interpolation (``dX = dY ×_a M_a^T``).

For fixed scales or sizes the op is linear in ``X``, so its VJP is exact for every mode (nearest with each
``nearest_mode``, linear, cubic) and coordinate transformation mode; ``roi``, ``scales`` and ``sizes`` carry
no gradient. The matrices (:func:`axis_matrices` below) are checked against the recorded output first:
a configuration they do not reproduce is refused, never differentiated wrongly. ``antialias=1`` is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxslice.errors import UnsupportedOpError

from ..capabilities.contrib import ContribContext, ContribResult
from ..capabilities.info import OpInfo, register_info
from ..capabilities.prune import Context, const_input
from ..capabilities.vjp import Grads, VjpContext, vjp
from ..coverage import refuses
from ..registry import REGISTRY
from ..templates.axis import unless_on_axis
from ..templates.routing import routing_contributions

if TYPE_CHECKING:
    from onnxslice.model import Node


# -- facts of the family -----------------------------------------------------------------------------


_F = np.float32


def _refuse(node: Any, capability: str, why: str) -> UnsupportedOpError:
    return UnsupportedOpError.for_node(node, capability, why)


def _scales(
    node: Any, ins: Sequence[np.ndarray | None], x_shape: tuple[int, ...], y_shape: tuple[int, ...], f: type = _F
) -> list[float]:
    """Per-axis scale as the op uses it in its coordinate transform."""
    rank = len(x_shape)
    opset = node.opset

    def get(i: int) -> np.ndarray | None:
        v = ins[i] if i < len(ins) else None
        return None if v is None or np.asarray(v).size == 0 else np.asarray(v)

    if node.op_type == "Upsample" and opset < 9:
        return [float(s) for s in node.attr("scales")]
    if node.op_type == "Upsample" or opset < 11:
        sc = get(1)
        assert sc is not None
        return [float(s) for s in sc.reshape(-1)]
    axes = node.attr("axes") if opset >= 18 else None
    axes = list(range(rank)) if axes is None else [a + rank if a < 0 else a for a in axes]
    out = [1.0] * rank
    sc = get(2)
    if sc is not None:
        for a, s in zip(axes, sc.reshape(-1), strict=True):
            out[a] = float(f(s))
        return out
    policy = str(node.attr("keep_aspect_ratio_policy", "stretch")) if opset >= 18 else "stretch"
    sizes = get(3)
    want = [int(s) for s in sizes.reshape(-1)] if sizes is not None else [y_shape[a] for a in axes]
    ratios = [float(f(w) / f(x_shape[a])) for a, w in zip(axes, want, strict=True)]
    if policy == "stretch":
        for a, r in zip(axes, ratios, strict=True):
            out[a] = r
    else:
        r = min(ratios) if policy == "not_larger" else max(ratios)
        for a in axes:
            out[a] = r
    return out


def _coords(
    mode: str, o: np.ndarray, n_in: int, n_out: int, s: float, roi: tuple[float, float], f: type = _F
) -> np.ndarray:
    """Input coordinate of each output index ``o`` (in the arithmetic of ``f``: float32 like onnxruntime)."""
    s32 = f(s)
    if mode == "half_pixel":
        return (o + f(0.5)) / s32 - f(0.5)
    if mode == "half_pixel_symmetric":
        adj = f(n_out) / (s32 * f(n_in))
        center = f(n_in) / f(2)
        offset = center * (f(1) - adj)
        return offset + (o + f(0.5)) / s32 - f(0.5)
    if mode == "pytorch_half_pixel":
        return (o + f(0.5)) / s32 - f(0.5) if n_out > 1 else np.zeros_like(o)
    if mode == "align_corners":
        return o * (f(n_in - 1) / f(n_out - 1)) if n_out > 1 else np.zeros_like(o)
    if mode == "asymmetric":
        return o / s32
    if mode == "tf_half_pixel_for_nn":
        return (o + f(0.5)) / s32
    if mode == "tf_crop_and_resize":
        start, end = f(roi[0]), f(roi[1])
        if n_out > 1:
            return start * f(n_in - 1) + o * (end - start) * f(n_in - 1) / f(n_out - 1)
        return np.full_like(o, f(0.5) * (start + end) * f(n_in - 1))
    raise AssertionError(mode)


def _nearest(x: np.ndarray, how: str, down: bool) -> np.ndarray:
    half_ = x.dtype.type(0.5)
    if how == "simple":
        return np.ceil(x) if down else np.trunc(x)
    if how == "floor":
        return np.floor(x)
    if how == "ceil":
        return np.ceil(x)
    fl = np.floor(x)
    half = (x - fl) == half_
    away = np.sign(x) * np.floor(np.abs(x) + half_)  # std::round: halves away from zero
    if how == "round_prefer_floor":
        return np.where(half, fl, away)
    return np.where(half, fl + 1, away)  # round_prefer_ceil


def _cubic(r: np.ndarray, a: float) -> np.ndarray:
    """Cubic coefficients of the neighbours at offsets -1, 0, 1, 2 for fractions ``r`` ``[out, 4]``.

    Computed in float32 like onnxruntime; the distances ``r + 1``, ``1 - r``, ``2 - r`` are formed in the
    fraction's own precision first, as ONNX's reference evaluator does with its float32 ``cubic_coeff_a``.
    """
    f = np.float32
    a32 = f(a)
    r = r.astype(np.float64)

    def far(d: np.ndarray) -> np.ndarray:
        d = d.astype(f)
        return ((a32 * d - f(5) * a32) * d + f(8) * a32) * d - f(4) * a32

    def near(d: np.ndarray) -> np.ndarray:
        d = d.astype(f)
        return ((a32 + f(2)) * d - (a32 + f(3))) * d * d + f(1)

    return np.stack([far(r + 1), near(r), near(1 - r), far((1 - r) + 1)], axis=1).astype(np.float64)


def axis_matrices(
    node: Any,
    ins: Sequence[np.ndarray | None],
    x_shape: tuple[int, ...],
    y_shape: tuple[int, ...],
    capability: str = "vjp",
    dtype: type = _F,
) -> list[np.ndarray | None]:
    """Per axis, the interpolation matrix ``[out, in]`` (None where the axis is copied as is).

    Coordinates are computed in ``dtype``: float32 as onnxruntime does; float64 for float64 data (which
    only ONNX's reference evaluator runs, in double arithmetic).

    Raises:
        UnsupportedOpError: ``antialias=1``, or an unknown mode.
    """
    opset = node.opset
    rank = len(x_shape)
    legacy = node.op_type == "Upsample" or opset < 11
    mode = str(node.attr("mode", "nearest"))
    if mode not in ("nearest", "linear", "cubic", "bilinear", "trilinear"):
        raise _refuse(node, capability, f"mode '{mode}' is not nearest, linear or cubic")
    mode = "linear" if mode in ("bilinear", "trilinear") else mode
    if not legacy and opset >= 18 and int(node.attr("antialias", 0)) and mode != "nearest":
        raise _refuse(node, capability, "antialias=1 (a downsampling filter) is not supported")
    coord = "asymmetric" if legacy else str(node.attr("coordinate_transformation_mode", "half_pixel"))
    how = "simple" if legacy else str(node.attr("nearest_mode", "round_prefer_floor"))
    a_coef = float(node.attr("cubic_coeff_a", -0.75))
    exclude = bool(int(node.attr("exclude_outside", 0))) and not legacy
    scales = _scales(node, ins, x_shape, y_shape, dtype)
    roi_all = None
    if coord == "tf_crop_and_resize":
        roi_in = ins[1] if len(ins) > 1 else None
        if roi_in is None:
            raise _refuse(node, capability, "tf_crop_and_resize without a roi input")
        roi_v = np.asarray(roi_in, np.float64).reshape(-1)
        axes = node.attr("axes") if opset >= 18 else None
        axes = list(range(rank)) if axes is None else [a + rank if a < 0 else a for a in axes]
        roi_all = {a: (0.0, 1.0) for a in range(rank)}
        k = len(axes)
        for j, a in enumerate(axes):
            roi_all[a] = (float(roi_v[j]), float(roi_v[j + k]))
    mats: list[np.ndarray | None] = []
    for a in range(rank):
        n_in, n_out, s = x_shape[a], y_shape[a], scales[a]
        if n_in == n_out and s == 1.0 and coord != "tf_crop_and_resize":
            mats.append(None)
            continue
        o: np.ndarray = np.arange(n_out, dtype=dtype)
        x = _coords(coord, o, n_in, n_out, s, roi_all[a] if roi_all else (0.0, 1.0), dtype)
        m = np.zeros((n_out, n_in))
        rows = np.arange(n_out)
        if mode == "nearest":
            idx = np.clip(_nearest(x, how, s < 1.0).astype(np.int64), 0, n_in - 1)
            m[rows, idx] = 1.0
        elif mode == "linear":
            xc = np.clip(x, dtype(0), dtype(n_in - 1))
            i0 = np.floor(xc).astype(np.int64)
            f = (xc - i0.astype(dtype)).astype(np.float64)
            i1 = np.minimum(i0 + 1, n_in - 1)
            np.add.at(m, (rows, i0), 1.0 - f)
            np.add.at(m, (rows, i1), f)
        else:
            i0 = np.floor(x).astype(np.int64)
            coef = _cubic((x - i0.astype(dtype)).astype(dtype), a_coef)
            idx = i0[:, None] + np.arange(-1, 3)[None, :]
            if exclude:
                coef = np.where((idx >= 0) & (idx < n_in), coef, 0.0)
                coef = coef / coef.sum(axis=1, keepdims=True)
            np.add.at(m, (np.repeat(rows, 4), np.clip(idx, 0, n_in - 1).reshape(-1)), coef.reshape(-1))
        if coord == "tf_crop_and_resize":
            m[(x < 0) | (x > n_in - 1)] = 0.0
        mats.append(m)
    return mats


def coord_dtype(x: np.ndarray) -> type:
    """The arithmetic of the coordinates for data ``x``: float64 for float64 data, else float32."""
    return np.float64 if x.dtype == np.float64 else np.float32


def apply(x: np.ndarray, mats: Sequence[np.ndarray | None], transpose: bool = False) -> np.ndarray:
    """``x ×_a M_a`` over every axis with a matrix (``M_a^T`` with ``transpose``), float64."""
    out = np.asarray(x, np.float64)
    for a, m in enumerate(mats):
        if m is None:
            continue
        mm = m.T if transpose else m
        out = np.moveaxis(np.tensordot(mm, np.moveaxis(out, a, 0), axes=(1, 0)), 0, a)
    return out


def extrapolated(node: Any, mats: Sequence[np.ndarray | None], y_shape: tuple[int, ...]) -> np.ndarray | None:
    """The constant part of ``Y`` (``extrapolation_value`` outside a tf_crop_and_resize roi), or None."""
    if node.op_type != "Resize" or node.opset < 11:
        return None
    if str(node.attr("coordinate_transformation_mode", "half_pixel")) != "tf_crop_and_resize":
        return None
    inside = np.ones(y_shape, bool)
    for a, m in enumerate(mats):
        if m is None:
            continue
        row_in = m.any(axis=1)
        shape = [1] * len(y_shape)
        shape[a] = -1
        inside = inside & row_in.reshape(shape)
    return np.where(inside, 0.0, float(node.attr("extrapolation_value", 0.0)))


def check(node: Any, x: np.ndarray, y: np.ndarray | None, mats: Sequence[np.ndarray | None], capability: str) -> None:
    """Refuse when the matrices do not reproduce the recorded output.

    Raises:
        UnsupportedOpError: the rebuilt ``Y`` differs from the recorded one.
    """
    if y is None:
        return
    mine = apply(x, mats)
    const = extrapolated(node, mats, tuple(y.shape))
    if const is not None:
        mine = mine + const
    err = float(np.max(np.abs(mine - y), initial=0.0))
    scale = float(np.max(np.abs(y), initial=0.0))
    if err > 1e-3 * max(scale, 1.0):
        raise _refuse(
            node,
            capability,
            f"rebuilding {node.op_type} as interpolation matrices misses the recorded output by {err:.3g} "
            "(an attribute combination onnxslice does not model); report it with the model",
        )


def declare_refusals(capability: str) -> None:
    """Declare the configurations :func:`axis_matrices` refuses (see ``coverage.py``)."""

    refuses(capability, "Resize", "antialias=1", lambda n, m: n.opset >= 18 and bool(int(n.attr("antialias", 0))))
    refuses(
        capability,
        "Resize Upsample",
        "a mode other than nearest, linear or cubic",
        lambda n, m: str(n.attr("mode", "nearest")) not in ("nearest", "linear", "cubic", "bilinear", "trilinear"),
    )


# -- info: static metadata ---------------------------------------------------------------------------


register_info("Resize Upsample", OpInfo("layout", non_differentiable=(1, 2, 3)))

# -- vjp: gradients ----------------------------------------------------------------------------------


def resize(ctx: VjpContext) -> Grads:
    """Resize / Upsample: ``dX = dY ×_a M_a^T`` over the resized axes."""
    out: Grads = [None] * len(ctx.ins)
    if not ctx.need(0):
        return out
    x, y = ctx.x(0), ctx.y(0)
    mats = axis_matrices(ctx.node, ctx.ins, tuple(x.shape), tuple(y.shape), dtype=coord_dtype(x))
    check(ctx.node, x, y, mats, "vjp")
    out[0] = apply(ctx.g(0), mats, transpose=True).astype(x.dtype, copy=False)
    return out


vjp("Resize", since=10)(resize)


vjp("Upsample", since=7)(resize)


declare_refusals("vjp")

# -- contributions: NNSlicer -------------------------------------------------------------------------


def resize_contributions(ctx: ContribContext) -> ContribResult:
    """Resize / Upsample (see the module docstring)."""
    node = ctx.node
    x, dx = ctx.x[0], ctx.dx[0]
    if x is None or dx is None:
        return ContribResult()
    if str(node.attr("mode", "nearest")) == "nearest":
        return routing_contributions(ctx)
    y = ctx.y[0]
    mats = axis_matrices(node, ctx.x, tuple(x.shape), tuple(y.shape), "contributions", coord_dtype(x))
    check(node, x, y, mats, "contributions")
    osign = ctx.out_sign().astype(np.float64)
    if ctx.channel:
        term = ctx.view(apply(dx, mats))
        inc = osign * np.sign(term)
        return ContribResult(inputs={0: inc.astype(np.int32)})
    signs = [None if m is None else np.sign(m) for m in mats]
    back = apply(osign, signs, transpose=True)
    inc = np.sign(dx).astype(np.int64) * np.rint(back).astype(np.int64)
    return ContribResult(inputs={0: inc.astype(np.int32)})


REGISTRY.register("contributions", "Resize", since=10)(resize_contributions)


REGISTRY.register("contributions", "Upsample", since=7)(resize_contributions)


declare_refusals("contributions")

# -- prune: channel groups ---------------------------------------------------------------------------


def _resize_axes(node: Node, ctx: Context) -> list[int] | str:
    s = ctx.shape(node.inputs[0])
    if s is None:
        return "the rank of its input is unknown"
    if node.input(3):
        return "it resizes to hard-coded sizes (sizes input)"
    k = 1 if node.opset < 11 else 2
    got = const_input(node, ctx, k)
    if isinstance(got, str) or got is None:
        return got or "its scales are unknown"
    return [a for a, f in enumerate(got.reshape(-1).tolist()) if f != 1.0]


REGISTRY.register("prune", "Resize")(unless_on_axis(_resize_axes))
