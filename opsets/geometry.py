"""Window geometry shared by every capability: how Conv and pooling nodes resolve their padding.

ONNX gives the padding either explicitly (``pads`` = begins then ends) or as ``auto_pad``
(``SAME_UPPER`` puts the odd extra cell at the end, ``SAME_LOWER`` at the beginning, ``VALID`` none).
Pure functions of attribute values and sizes; nothing here reads a graph.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["same_pads", "window_pads"]

Attr = Callable[[str, Any], Any]


def same_pads(total: int, mode: str) -> tuple[int, int]:
    """(begin, end) split of ``total`` padding cells for ``auto_pad`` SAME_UPPER / SAME_LOWER."""
    half = total // 2
    return (half, total - half) if mode == "SAME_UPPER" else (total - half, half)


def window_pads(
    attr: Attr, in_sp: Sequence[int], out_sp: Sequence[int], kernel: Sequence[int]
) -> tuple[list[int], list[int]]:
    """Begin and end pads of a Conv / pooling window, from ``pads`` or ``auto_pad`` and the output size.

    Args:
        attr: the node's attribute getter, ``attr(name, default)`` (``Node.attr`` or a rule context's).
        in_sp: spatial input size.
        out_sp: spatial output size (resolves ``auto_pad``).
        kernel: spatial kernel size.
    """
    r = len(in_sp)
    strides = [int(s) for s in attr("strides", [1] * r)]
    dil = [int(d) for d in attr("dilations", [1] * r)]
    mode = attr("auto_pad", "NOTSET")
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        both = [
            same_pads(max(0, (o - 1) * s + (k - 1) * d + 1 - i), mode)
            for i, o, k, s, d in zip(in_sp, out_sp, kernel, strides, dil, strict=True)
        ]
        return [b for b, _ in both], [e for _, e in both]
    if mode == "VALID":
        return [0] * r, [0] * r
    pads = [int(p) for p in attr("pads", [0] * (2 * r))]
    return pads[:r], pads[r:]
