"""VJPs of Resize and Upsample: the transpose of the separable interpolation (``dX = dY ×_a M_a^T``).

For fixed scales or sizes the op is linear in ``X``, so its VJP is exact for every mode (nearest with each
``nearest_mode``, linear, cubic) and coordinate transformation mode; ``roi``, ``scales`` and ``sizes`` carry
no gradient. The matrices (:mod:`onnxslice.opsets.resize`) are checked against the recorded output first:
a configuration they do not reproduce is refused, never differentiated wrongly. ``antialias=1`` is refused.
"""

from __future__ import annotations

from ..resize import apply, axis_matrices, check, declare_refusals
from ..resize import coord_dtype as _coord_dtype
from .base import Grads, VjpContext, vjp


def resize(ctx: VjpContext) -> Grads:
    """Resize / Upsample: ``dX = dY ×_a M_a^T`` over the resized axes."""
    out: Grads = [None] * len(ctx.ins)
    if not ctx.need(0):
        return out
    x, y = ctx.x(0), ctx.y(0)
    mats = axis_matrices(ctx.node, ctx.ins, tuple(x.shape), tuple(y.shape), dtype=_coord_dtype(x))
    check(ctx.node, x, y, mats, "vjp")
    out[0] = apply(ctx.g(0), mats, transpose=True).astype(x.dtype, copy=False)
    return out


vjp("Resize", since=10)(resize)
vjp("Upsample", since=7)(resize)
declare_refusals("vjp")
