"""Mod contributions: ``y = x - q * d`` with a piecewise-constant ``q``, a weighted sum with weights 1 and ``-q``.

Integer Mod (shape arithmetic in exports) holds no neurons and is never dispatched; float Mod follows the
broadcasting weighted-sum template of :mod:`.binary`.
"""

from __future__ import annotations

import numpy as np

from ..registry import REGISTRY
from .base import ContribContext
from .binary import binary_rule


def _mod(ctx: ContribContext, i: int) -> np.ndarray | float:
    if i == 0:
        return 1.0
    x, d = ctx.x[0], ctx.x[1]
    assert x is not None and d is not None
    q = np.trunc(x / d) if int(ctx.node.attr("fmod", 0)) else np.floor(x / d)
    return -q.astype(np.float64)


REGISTRY.register("contributions", "Mod", since=10)(binary_rule(_mod))
