"""Reductions: ReduceMean, ReduceSum, ReduceMax, ReduceMin, ReduceProd, ReduceL1, ReduceL2, ReduceSumSquare,
ReduceLogSumExp, and ArgMax/ArgMin (no gradient, no neurons).

Facts: ONNX moved ``axes`` from an attribute to input 1 (ReduceSum at 13, the others at 18); every rule
decodes them through :func:`onnxslice.opsets.axes.reduce_axes`, so each op has one rule per opset range.

- ``vjp``: one template, ``dx = dy (broadcast back) * d reduce / dx``; ReduceMax and ReduceMin share the
  cotangent evenly among tied maxima, as PyTorch's ``amax`` does (not MaxPool's first-maximum rule).
- ``contributions``: ReduceMean and ReduceSum give every reduced input ``CONTRIB_n * dy_n * dx_i`` (no
  weights, no theta); ReduceMax and ReduceMin only the inputs equal to the output. A reduction over the
  sample axis (or the channel axis at channel level) is refused.
- ``prune``: safe only when the reduced axes are not the channel axis.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from onnxslice.errors import UnsupportedOpError

from ..axes import reduce_axes
from ..capabilities.contrib import ContribContext, ContribResult
from ..capabilities.info import OpInfo, register_info
from ..capabilities.vjp import Grads, VjpContext, VjpRule, register
from ..coverage import refuses
from ..ops.pool import MAX_OPS, channel_identity
from ..registry import REGISTRY
from ..templates.axis import reduction
from ..templates.routing import no_neurons
from ..vjp.eager import register_prim
from ..vjp.prims import Prims

# -- info: static metadata ---------------------------------------------------------------------------


register_info(
    "ReduceMean ReduceSum ReduceMax ReduceMin ReduceProd ReduceL1 ReduceL2 ReduceSumSquare ReduceLogSumExp",
    OpInfo("reduce", non_differentiable=(1,)),
)
register_info("ArgMax ArgMin", OpInfo("reduce", non_differentiable=(1,)))

# -- vjp: gradients ----------------------------------------------------------------------------------


# (x, y with kept dims, number of reduced elements) -> local derivative dy/dx (broadcastable to x)
Local = Callable[[np.ndarray, np.ndarray, int], np.ndarray | float]


def _vjp_axes(ctx: VjpContext, from_input: bool) -> list[int] | None:
    """Reduced axes; None means the identity (noop with empty axes)."""
    attr = None if from_input else ctx.attr("axes")
    given = ctx.x(1) if from_input and ctx.has(1) else None
    return reduce_axes(attr, given, ctx.attr("noop_with_empty_axes", 0) if from_input else 0, ctx.x(0).ndim)


def vjp_reduction(local: Local, name: str, from_input: bool) -> VjpRule:
    """Template for ``y = reduce(x, axes)``."""

    def fn(ctx: VjpContext) -> Grads:
        x, y, g = ctx.x(0), ctx.y(0), ctx.g(0)
        axes = _vjp_axes(ctx, from_input)
        rest: Grads = [None] * (len(ctx.ins) - 1)
        if axes is None:
            return [g, *rest]
        kept = [1 if i in axes else d for i, d in enumerate(x.shape)]
        gk, yk = g.reshape(kept), y.reshape(kept)
        count = int(np.prod([x.shape[a] for a in axes]))
        return [np.asarray(gk * local(x, yk, count), dtype=x.dtype) * np.ones_like(x), *rest]

    fn.__name__ = fn.__qualname__ = name
    return VjpRule(fn, False, name)


def _sum(x: np.ndarray, y: np.ndarray, n: int) -> float:
    return 1.0


def _mean(x: np.ndarray, y: np.ndarray, n: int) -> float:
    return 1.0 / n


def _extreme(x: np.ndarray, y: np.ndarray, n: int) -> np.ndarray:
    hit = (x == y).astype(x.dtype)
    axes = tuple(i for i, d in enumerate(y.shape) if d == 1 and x.shape[i] != 1)
    return hit / hit.sum(axis=axes, keepdims=True)  # ties share the cotangent, as in PyTorch's amax


def _sum_square(x: np.ndarray, y: np.ndarray, n: int) -> np.ndarray:
    return 2 * x


def _l1(x: np.ndarray, y: np.ndarray, n: int) -> np.ndarray:
    return np.sign(x)


def _l2(x: np.ndarray, y: np.ndarray, n: int) -> np.ndarray:
    return np.where(y > 0, x / np.where(y > 0, y, 1), 0)


def _log_sum_exp(x: np.ndarray, y: np.ndarray, n: int) -> np.ndarray:
    return np.exp(x - y)


#: ops whose rule is written against the primitives (op -> first opset with axes as an input)
_PRIM = {"ReduceSum": 13, "ReduceMean": 18}


_OPS: dict[str, tuple[Local, int]] = {
    # op -> (local derivative, first opset with axes as an input)
    "ReduceSum": (_sum, 13),
    "ReduceMean": (_mean, 18),
    "ReduceMax": (_extreme, 18),
    "ReduceMin": (_extreme, 18),
    "ReduceSumSquare": (_sum_square, 18),
    "ReduceL1": (_l1, 18),
    "ReduceL2": (_l2, 18),
    "ReduceLogSumExp": (_log_sum_exp, 18),
}


for _op, (_local, _switch) in _OPS.items():
    if _op in _PRIM:
        continue
    register([_op], vjp_reduction(_local, f"{_op}_attr_axes", False), until=_switch - 1)
    register([_op], vjp_reduction(_local, f"{_op}_input_axes", True), since=_switch)


def prim_reduction(mean: bool, name: str, from_input: bool) -> Callable[[Prims, VjpContext], Grads]:
    """ReduceSum / ReduceMean: ``dx = broadcast(dy with kept dims) (/ count)``."""

    def rule(P: Prims, ctx: VjpContext) -> Grads:
        x, g = ctx.x(0), ctx.g(0)
        xs = P.shape(x)
        attr = None if from_input else ctx.attr("axes")
        given = P.value(ctx.x(1)) if from_input and ctx.has(1) else None
        axes = reduce_axes(attr, given, ctx.attr("noop_with_empty_axes", 0) if from_input else 0, len(xs))
        rest: Grads = [None] * (len(ctx.ins) - 1)
        if axes is None:
            return [g, *rest]
        kept = [1 if i in axes else d for i, d in enumerate(xs)]
        count = int(np.prod([xs[a] for a in axes]))
        gk = P.mul(P.reshape(g, kept), 1.0 / count if mean else 1.0)
        return [P.broadcast_to(P.cast(gk, P.dtype(x)), xs), *rest]

    rule.__name__ = rule.__qualname__ = name
    return rule


for _op, _switch in _PRIM.items():
    _mean_op = _op == "ReduceMean"
    register_prim([_op], prim_reduction(_mean_op, f"{_op}_attr_axes", False), f"{_op}_attr_axes", until=_switch - 1)
    register_prim([_op], prim_reduction(_mean_op, f"{_op}_input_axes", True), f"{_op}_input_axes", since=_switch)

# -- contributions: NNSlicer -------------------------------------------------------------------------


def _axes(ctx: ContribContext, rank: int) -> tuple[int, ...]:
    node = ctx.node
    input_axes = ctx.x[1] if len(ctx.x) > 1 else None
    axes = reduce_axes(node.attr("axes"), input_axes, node.attr("noop_with_empty_axes", 0), rank)
    return () if axes is None else tuple(axes)


def reduce_contributions(ctx: ContribContext) -> ContribResult:
    """ReduceMean, ReduceSum, ReduceMax, ReduceMin over any axes but the batch axis.

    Raises:
        UnsupportedOpError: the reduction spans the batch axis (or the channel axis at channel level).
    """
    x, dx, y = ctx.x[0], ctx.dx[0], ctx.y[0]
    if x is None or dx is None:
        return ContribResult()
    node = ctx.node
    axes = _axes(ctx, x.ndim)
    if 0 in axes or (ctx.channel and 1 in axes):
        raise UnsupportedOpError.for_node(
            node,
            "contributions",
            f"a reduction over axes {list(axes)} mixes samples or channels; it has no contributions rule",
        )
    if ctx.channel:
        return channel_identity(ctx)
    keep_shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
    osign = ctx.out_sign().reshape(keep_shape)
    s = osign * np.sign(dx).astype(np.int8)
    if node.op_type in MAX_OPS:
        s = s * (x == y.reshape(keep_shape))
    return ContribResult(inputs={0: s.astype(np.int32)})


REGISTRY.register("contributions", ["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin"])(reduce_contributions)


REGISTRY.register("contributions", ["ArgMax", "ArgMin"])(no_neurons)

refuses(
    "contributions",
    "ReduceMean ReduceSum ReduceMax ReduceMin",
    "a reduction over the sample axis 0 (or the channel axis at channel level)",
    lambda n, m: True if 0 in (n.attr("axes") or [1]) else None if n.attr("axes") is None else False,
)


# -- prune: channel groups ---------------------------------------------------------------------------


REGISTRY.register(
    "prune",
    [
        "ReduceMean",
        "ReduceSum",
        "ReduceMax",
        "ReduceMin",
        "ReduceL1",
        "ReduceL2",
        "ReduceSumSquare",
        "ReduceProd",
        "ReduceLogSumExp",
    ],
)(reduction)
