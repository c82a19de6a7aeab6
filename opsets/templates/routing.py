"""The routing template in every capability: ops whose output elements are copies of input elements.

- ``vjp``: :func:`routing` (eager) and :func:`prim_routing` (on the primitives): ``back(ctx, dy)`` puts the
  cotangent back where each element came from, one cotangent per differentiable input.
- ``contributions``: :func:`routing_contributions`, the op itself is run by the ONNX reference evaluator on
  *index tensors* (element ``k`` of the data inputs holds ``k + 1``; shapes, indices, axes and pads keep
  their recorded values), so its output says, per output element, which input element it copies (0 where
  it reads padding). CONTRIB then moves along that map (summed where an input feeds several outputs, as
  Expand does). An op that mixes elements (a linear Resize) gives fractional indices and is refused with an
  :class:`UnsupportedOpError`. At channel granularity each (output unit, input unit) pair that the map
  links passes the output unit's CONTRIB once. :func:`identity_contributions` (Identity, Dropout, casts)
  and :func:`no_neurons` (integer and boolean outputs: shapes, comparisons, ArgMax) are its two
  degenerate forms.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import helper

from onnxslice.errors import UnsupportedOpError

from ..capabilities.contrib import ContribContext, ContribResult
from ..capabilities.vjp import Grads, VjpRule
from ..registry import REGISTRY
from ..vjp.prims import PrimFn, Prims

if TYPE_CHECKING:
    from ..capabilities.vjp import VjpContext


# -- contributions -------------------------------------------------------------------------------------


_Maps = tuple[list[np.ndarray], list[int], list[tuple[int, ...]], int]


_CACHE: OrderedDict[tuple[Any, ...], _Maps] = OrderedDict()


_CACHE_SIZE = 64


def identity_contributions(ctx: ContribContext) -> ContribResult:
    """Identity, Dropout (inference), float-to-float Cast: output neuron ``n`` is input neuron ``n``."""
    c = ctx.out_contrib[0]
    if ctx.dx[0] is None or c is None:
        return ContribResult()
    return ContribResult(inputs={0: c.astype(np.int32, copy=True)})


def no_neurons(ctx: ContribContext) -> ContribResult:
    """Shape, Size, ArgMax, comparisons, ...: the output is an integer or boolean, no CONTRIB flows."""
    return ContribResult()


def _structural(ctx: ContribContext) -> set[int]:
    info = REGISTRY.find("info", ctx.node.op_type, ctx.node.domain, ctx.node.opset)
    return set(info.non_differentiable) if info is not None else set()


def _eval_maps(ctx: ContribContext, group: int | None) -> tuple[list[np.ndarray], list[int], list[tuple[int, ...]]]:
    """Run the node on index tensors whose batch axis has ``group`` samples (``None``: the recorded shapes,
    for values whose axis 0 is not the samples, such as one part of a stacked ``[3, N, ...]`` qkv).

    Returns, per output, the source id (1-based over the concatenated data inputs, 0 = none) of each
    element; per input, its offset; per data input, the shape of one group.
    """
    from onnx.reference import ReferenceEvaluator

    node = ctx.node
    structural = _structural(ctx)
    feeds: dict[str, np.ndarray] = {}
    names: list[str] = []
    offsets: list[int] = []
    shapes: list[tuple[int, ...]] = []
    total = 0
    for i, (x, dx) in enumerate(zip(ctx.x, ctx.dx, strict=True)):
        name = f"in{i}"
        names.append(name if x is not None else "")
        offsets.append(total)
        shapes.append(())
        if x is None:
            continue
        if dx is not None:
            shape = tuple(x.shape) if group is None else (group, *x.shape[1:])
            feeds[name] = np.arange(total + 1, total + 1 + int(np.prod(shape)), dtype=np.float64).reshape(shape)
            shapes[i] = shape
            total += int(np.prod(shape))
        elif i in structural or not np.issubdtype(x.dtype, np.floating):
            feeds[name] = np.zeros_like(x) if node.op_type == "Pad" and i == 2 else x
        else:
            feeds[name] = np.zeros(x.shape, np.float64)  # a constant operand: no neurons
    attrs = dict(node.attrs)
    if node.op_type == "Pad" and "value" in attrs:
        attrs["value"] = 0.0
    if node.op_type in ("Cast", "CastLike"):
        attrs["to"] = onnx.TensorProto.DOUBLE
    outs = [f"out{k}" for k in range(len(node.outputs))]
    proto = helper.make_node(node.op_type, names, outs, domain=node.domain or None, **attrs)
    graph = helper.make_graph(
        [proto],
        "routing",
        [
            helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(feeds[n].dtype), feeds[n].shape)
            for n in names
            if n
        ],
        [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in outs],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(node.domain, node.opset)])
    maps = [np.asarray(m) for m in ReferenceEvaluator(model).run(None, feeds)]
    return maps, offsets, shapes


def _maps(ctx: ContribContext) -> _Maps:
    """Index maps for the whole batch, or for one sample when shapes are fixed to batch 1."""
    bsz = ctx.y[0].shape[0] if ctx.y[0].ndim else 1
    key = (
        ctx.node.name,
        tuple(
            None if x is None else (x.shape if d is not None else (x.shape, x.tobytes()[:4096]))
            for x, d in zip(ctx.x, ctx.dx, strict=True)
        ),
    )
    failure = ""
    # a data input whose axis 0 is not the output's (time-first [T, N, ...] or a stacked [3, N, ...]) cannot be
    # cut into sample groups: map the recorded shapes first
    odd = any(
        x is not None and d is not None and (x.ndim == 0 or x.shape[0] != bsz)
        for x, d in zip(ctx.x, ctx.dx, strict=True)
    )
    for group in (None, bsz, 1) if odd else (bsz, 1, None):
        k = (*key, group)
        if k in _CACHE:
            _CACHE.move_to_end(k)
            return _CACHE[k]
        try:
            maps, offsets, shapes = _eval_maps(ctx, group)
        except Exception as e:  # the reference evaluator raises many types; report the last one
            failure = f"{type(e).__name__}: {e}"
            continue
        want = [y.shape if group is None else (group, *y.shape[1:]) for y in ctx.y]
        if all(m.shape == w for m, w in zip(maps, want, strict=True)):
            _CACHE[k] = (maps, offsets, shapes, bsz if group is None else group)
            if len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
            return _CACHE[k]
    n = ctx.node
    raise UnsupportedOpError.for_node(
        n,
        "contributions",
        f"the routing map of this node could not be computed ({failure or 'its output shape does not match'})",
    )


def _units(shape: tuple[int, ...], channel: bool) -> np.ndarray:
    """Unit id of every element of a batched value: a channel (rank >= 3) or a feature (rank <= 2)."""
    size = int(np.prod(shape))
    if not channel or len(shape) <= 2:
        return np.arange(size)
    b, c = shape[:2]
    return np.repeat(np.arange(b * c), size // (b * c))


def routing_contributions(ctx: ContribContext) -> ContribResult:
    """Move each output element's CONTRIB to its source element (see the module docstring).

    Raises:
        UnsupportedOpError: the op mixes elements (fractional sources) or cannot be evaluated.
    """
    data = ctx.data_inputs()
    if not data:
        return ContribResult()
    maps, offsets, shapes, group = _maps(ctx)
    bsz = ctx.y[0].shape[0]
    ngroups = bsz // group
    total = sum(int(np.prod(shapes[i])) for i in data)
    acc = np.zeros(ngroups * total + 1, np.int64)
    for k, m in enumerate(maps):
        c = ctx.out_contrib[k]
        if c is None or not c.any():
            continue
        src = m.reshape(-1)
        if not np.array_equal(src, np.rint(src)):
            n = ctx.node
            raise UnsupportedOpError.for_node(
                n,
                "contributions",
                f"{n.op_type} with these attributes mixes elements (it is not a routing op here)",
            )
        src = src.astype(np.int64)
        per_group = c.reshape(ngroups, -1) if not ctx.channel else None
        if ctx.channel:
            _route_channels(ctx, k, src, group, ngroups, shapes, offsets, data, total, acc)
            continue
        assert per_group is not None
        ids = np.where(src > 0, src[None, :] + (np.arange(ngroups) * total)[:, None], 0)
        acc += np.bincount(ids.ravel(), weights=per_group.ravel(), minlength=acc.size).astype(np.int64)
    flat = acc[1:].reshape(ngroups, total)
    res: dict[int, np.ndarray] = {}
    pos = 0
    for i in data:
        size = int(np.prod(shapes[i]))
        part = flat[:, pos : pos + size]
        x = ctx.x[i]
        assert x is not None
        if ctx.channel and x.ndim > 2:
            part = part.reshape(bsz, x.shape[1], -1)[:, :, 0]
        res[i] = part.reshape(ctx.view(x).shape if ctx.channel else x.shape).astype(np.int32)
        pos += size
    return ContribResult(inputs=res)


def _route_channels(
    ctx: ContribContext,
    k: int,
    src: np.ndarray,
    group: int,
    ngroups: int,
    shapes: list[tuple[int, ...]],
    offsets: list[int],
    data: list[int],
    total: int,
    acc: np.ndarray,
) -> None:
    """Channel-level routing: each linked (output unit, input unit) pair passes the CONTRIB once.

    Input units are written into ``acc`` at the first element of the unit (read back per unit).
    """
    y = ctx.y[k]
    c = ctx.out_contrib[k]
    assert c is not None
    out_units = _units((group, *y.shape[1:]), True)
    first_elem = np.zeros(total + 1, np.int64)  # 1-based element id -> 1-based id of its unit's first element
    pos = 0
    for i in data:
        shape = shapes[i]
        size = int(np.prod(shape))
        units = _units(shape, True)
        starts = np.searchsorted(units, units, side="left")
        first_elem[pos + 1 : pos + 1 + size] = pos + 1 + starts
        pos += size
    valid = src > 0
    pairs = np.unique(np.stack([out_units[valid], first_elem[src[valid]]], axis=1), axis=0)
    cg = c.reshape(ngroups, -1)
    for g in range(ngroups):
        w = cg[g, pairs[:, 0]]
        acc += np.bincount(pairs[:, 1] + g * total, weights=w, minlength=acc.size).astype(np.int64)


# -- vjp (eager) ---------------------------------------------------------------------------------------


def routing(back: Callable[[VjpContext, np.ndarray], list[np.ndarray | None]], name: str) -> VjpRule:
    """Template for layout ops (Reshape, Flatten, Transpose, Squeeze, ...): the cotangent goes back where
    each element came from. ``back(ctx, dy)`` returns one cotangent per input (only differentiable
    ones non-None). In per-sample mode the engine applies layout ops of weights sample by sample.
    """

    def fn(ctx: VjpContext) -> Grads:
        if not any(ctx.needs):
            return [None] * len(ctx.ins)
        out = back(ctx, ctx.g(0))
        return out + [None] * (len(ctx.ins) - len(out))

    fn.__name__ = fn.__qualname__ = name
    return VjpRule(fn, False, name)


# -- vjp (on the primitives) -----------------------------------------------------------------------------


def prim_routing(back: Callable[[Prims, VjpContext, Any], list[Any]], name: str) -> PrimFn:
    """Primitive form of :func:`routing` (layout ops)."""

    def rule(P: Prims, ctx: VjpContext) -> list[Any]:
        if not any(ctx.needs):
            return [None] * len(ctx.ins)
        out = back(P, ctx, ctx.g(0))
        return out + [None] * (len(ctx.ins) - len(out))

    rule.__name__ = rule.__qualname__ = name
    return rule
