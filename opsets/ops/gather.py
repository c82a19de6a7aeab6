"""Indexing ops: Gather, GatherElements, GatherND, ScatterND.

- ``vjp``: the cotangent is added back where each element was read from (Gather, GatherElements,
  GatherND); ScatterND's data keeps the cotangent where it was not overwritten and its updates take it from
  where they were written (``reduction`` ``none`` or ``add``).
- ``contributions``: routing (:mod:`onnxslice.opsets.templates.routing`), like the layout ops.
"""

from __future__ import annotations

import numpy as np

from ..axes import add_along_axis
from ..capabilities.info import OpInfo, register_info
from ..capabilities.vjp import Grads, VjpContext, register, vjp
from ..registry import REGISTRY
from ..templates.routing import routing, routing_contributions

# -- info: static metadata ---------------------------------------------------------------------------


register_info("ScatterND", OpInfo("layout", non_differentiable=(1,)), since=11)
register_info("Gather GatherElements GatherND", OpInfo("layout", non_differentiable=(1,), layout_only=True))

# -- vjp: gradients ----------------------------------------------------------------------------------


def _gather_elements_back(ctx: VjpContext, g: np.ndarray) -> list[np.ndarray | None]:
    x = ctx.x(0)
    idx = np.asarray(ctx.x(1)).astype(np.int64)
    axis = int(ctx.attr("axis", 0))
    axis = axis + x.ndim if axis < 0 else axis
    idx = np.where(idx < 0, idx + x.shape[axis], idx)
    dx = np.zeros_like(x)
    add_along_axis(dx, idx, axis, g)
    return [dx]


def _gather_nd_back(ctx: VjpContext, g: np.ndarray) -> list[np.ndarray | None]:
    x = ctx.x(0)
    idx = np.asarray(ctx.x(1)).astype(np.int64)
    b = int(ctx.attr("batch_dims", 0))
    k = idx.shape[-1]
    dx = np.zeros_like(x)
    lead = int(np.prod(x.shape[:b], dtype=np.int64))
    xb = dx.reshape(lead, *x.shape[b:])
    ib = idx.reshape(lead, -1, k)
    gb = g.reshape(lead, ib.shape[1], *x.shape[b + k :])
    for j in range(lead):
        cols = tuple(np.where(ib[j, :, t] < 0, ib[j, :, t] + x.shape[b + t], ib[j, :, t]) for t in range(k))
        np.add.at(xb[j], cols, gb[j])
    return [dx]


register(["GatherElements"], routing(_gather_elements_back, "gather_elements_back"), since=11)


register(["GatherND"], routing(_gather_nd_back, "gather_nd_back"), since=11)


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


register(["Gather"], routing(_gather_back, "gather_back"))


@vjp("ScatterND", since=11)
def scatter_nd(ctx: VjpContext) -> Grads:
    """ScatterND with ``reduction='none'`` (later writes win, as onnxruntime applies them in order)."""
    if str(ctx.attr("reduction", "none")) not in ("none", "add"):
        raise ctx.unsupported(f"ScatterND with reduction='{ctx.attr('reduction')}'")
    data = ctx.x(0)
    idx = np.asarray(ctx.x(1)).astype(np.int64)
    g = ctx.g(0)
    k = idx.shape[-1]
    flat = idx.reshape(-1, k)
    cols = tuple(np.where(flat[:, t] < 0, flat[:, t] + data.shape[t], flat[:, t]) for t in range(k))
    out: Grads = [None] * len(ctx.ins)
    add = str(ctx.attr("reduction", "none")) == "add"
    if ctx.need(0):
        d = g.copy()
        if not add:
            d[cols] = 0
        out[0] = d
    if ctx.has(2) and ctx.need(2):
        upd = ctx.x(2)
        out[2] = g[cols].reshape(upd.shape).astype(upd.dtype, copy=False)
    return out


# -- contributions: NNSlicer -------------------------------------------------------------------------


REGISTRY.register("contributions", ["Gather", "GatherElements", "GatherND"])(routing_contributions)
