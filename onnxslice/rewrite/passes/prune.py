"""``ChannelCut``: the structured-pruning edit on the graph IR (channels out of every initializer of a
group, channel counts in attributes and constant inputs shrunk, stale shapes re-inferred)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from onnxslice.rewrite.groups import GroupSet
from onnxslice.rewrite.passes.base import Pass, PassResult, replace_values, to_ir, to_proto

__all__ = ["ChannelCut", "reinfer_shapes"]


def _delete(arr: np.ndarray, axes: Mapping[int, set[int]]) -> np.ndarray:
    for axis, idx in axes.items():
        arr = np.delete(arr, sorted(idx), axis=axis)
    return arr


class ChannelCut(Pass):
    """Remove the chosen channels of every prunable group.

    Args:
        chosen: group leader -> channels it loses (from :func:`onnxslice.rewrite.prune.resolve_channels`).
        groups: the model's channel groups (what each cut touches).
        report: what to record for the pass.
    """

    name = "channel-cut"

    def __init__(self, chosen: Mapping[str, np.ndarray], groups: GroupSet,
                 report: Mapping[str, Any] | None = None) -> None:
        self.chosen = dict(chosen)
        self.groups = groups
        self.report = dict(report or {})

    def call(self, model: ir.Model) -> PassResult:
        removed: dict[str, dict[int, set[int]]] = {}
        counts: dict[tuple[str, str, str, int, int], int] = {}
        for g in self.groups.prunable:
            chans = self.chosen.get(g.leader)
            if chans is None or chans.size == 0:
                continue
            for name, ref in g.cuts:
                removed.setdefault(name, {}).setdefault(ref.axis, set()).update(ref.indices(chans).tolist())
            for node_name, edit in g.counts:
                key = (node_name, edit.kind, edit.name, edit.index, edit.position)
                counts[key] = counts.get(key, 0) + int(chans.size) * edit.per_channel
        if not removed and not counts:
            return PassResult(model, False, self.report)
        graph = model.graph
        inits = graph.initializers
        replace_values(graph, {name: _delete(inits[name].const_value.numpy(), axes)  # type: ignore[union-attr]
                               for name, axes in removed.items()})
        nodes = {n.name: n for n in graph}
        for (node_name, kind, attr, index, position), amount in counts.items():
            node = nodes[node_name]
            if kind == "attr":
                node.attributes[attr] = ir.AttrInt64(attr, node.attributes[attr].as_int() - amount)
            else:
                src = node.inputs[index]
                assert src is not None and src.const_value is not None  # groups only count constant inputs
                values = np.array(src.const_value.numpy(), copy=True)
                values[position] -= amount
                new = ir.Value(name=f"onnxslice/{node_name}/input{index}", shape=ir.Shape(values.shape),
                               type=ir.TensorType(ir.DataType.from_numpy(values.dtype)),
                               const_value=ir.tensor(values, name=f"onnxslice/{node_name}/input{index}"))
                graph.register_initializer(new)
                node.replace_input_with(index, new)
                if not src.uses() and src.name in inits and not src.is_graph_output():
                    inits.pop(src.name)  # type: ignore[arg-type]
                    if src.is_graph_input():
                        graph.inputs.remove(src)
        return PassResult(to_ir(reinfer_shapes(to_proto(model))), True, self.report)


def reinfer_shapes(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` with every intermediate shape inferred afresh (a cut leaves the old ones stale)."""
    del proto.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(proto, strict_mode=True, data_prop=True)
