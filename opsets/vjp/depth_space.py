"""VJPs of DepthToSpace and SpaceToDepth (DCR and CRD modes): the inverse rearrangement of the cotangent."""

from __future__ import annotations

import numpy as np

from .base import VjpContext, register, routing


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
