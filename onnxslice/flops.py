"""Multiply-accumulate counts (MACs) per node, from the shapes shape inference gives.

Counts the ops that dominate inference cost: Conv, ConvTranspose, Gemm and MatMul (one MAC per weight
use per output element). A symbolic batch axis counts as ``batch`` (1 by default: MACs per sample).
Other symbolic dimensions (dynamic spatial sizes) are unknown from the graph alone: pass ``shapes``, the
shapes recorded on real data (``rewrite.measure.model_stats`` does), to count them. FLOPs are reported
as ``2 * MACs``. Nothing here runs the model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from onnxslice.model import Model, Node

__all__ = ["MacCount", "count_macs", "node_macs"]


def _dims(model: Model, value: str, batch: int, shapes: Mapping[str, Sequence[int]] | None = None) -> list[int] | None:
    if model.is_initializer(value):
        return [int(d) for d in model.initializer(value).shape]
    if shapes is not None and value in shapes:
        return [int(d) for d in shapes[value]]
    vi = model.value_info.get(value)
    if vi is None or vi.shape is None:
        return None
    out = []
    for k, d in enumerate(vi.shape):
        if isinstance(d, int) and d > 0:
            out.append(d)
        elif k == 0:
            out.append(batch)
        else:
            return None
    return out


def node_macs(
    model: Model, node: Node, batch: int = 1, shapes: Mapping[str, Sequence[int]] | None = None
) -> int | None:
    """MACs of one node (0 for ops that are not counted, None when its shapes are unknown).

    ``shapes`` (value -> recorded shape) overrides the declared shapes (for dynamic spatial sizes).
    """
    op = node.op_type
    if node.domain or op not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
        return 0
    out = _dims(model, node.outputs[0], batch, shapes)
    if out is None:
        return None
    if op == "Conv":
        w = _dims(model, node.input(1), batch, shapes)
        return None if w is None else math.prod(out) * math.prod(w[1:])
    if op == "ConvTranspose":
        x, w = _dims(model, node.inputs[0], batch, shapes), _dims(model, node.input(1), batch, shapes)
        if x is None or w is None:
            return None
        return math.prod(x) * math.prod(w[1:])
    a = _dims(model, node.inputs[0], batch, shapes)
    if a is None:
        return None
    if op == "Gemm":
        k = a[0] if node.attr("transA", 0) else a[1]
        return math.prod(out) * k
    k = a[-1] if len(a) > 1 else a[0]
    return math.prod(out) * k


@dataclass
class MacCount:
    """MACs of a model.

    Attributes:
        total: MACs of every counted node with known shapes.
        per_node: node name -> MACs (counted ops only).
        unknown: counted nodes whose shapes are unknown (not in ``total``).
        batch: the batch size the symbolic batch axis stood for.
    """

    total: int
    per_node: dict[str, int] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)
    batch: int = 1

    @property
    def flops(self) -> int:
        """``2 * total``."""
        return 2 * self.total

    def __repr__(self) -> str:
        extra = f", {len(self.unknown)} unknown" if self.unknown else ""
        return f"MacCount({self.total:,} MACs over {len(self.per_node)} nodes, batch {self.batch}{extra})"


def count_macs(model: Model, batch: int = 1, shapes: Mapping[str, Sequence[int]] | None = None) -> MacCount:
    """MACs of Conv/ConvTranspose/Gemm/MatMul nodes of ``model`` for a batch of ``batch``.

    With ``shapes`` (value -> shape recorded on data of ``batch`` samples) dynamic dimensions count too.
    """
    per: dict[str, int] = {}
    unknown: list[str] = []
    for node in model.nodes:
        m = node_macs(model, node, batch, shapes)
        if m is None:
            unknown.append(node.name)
        elif m:
            per[node.name] = m
    return MacCount(sum(per.values()), per, unknown, batch)
