"""Suffix models: the part of a graph downstream of a layer, run on cached prefix values.

Perturbing layer ``l`` (its weights, or its output activation) changes only the nodes downstream of
it. :class:`Suffix` extracts those nodes into a model whose graph inputs are the *boundary* values
(values the suffix reads that the unperturbed prefix computes: the layer's inputs, skip connections,
shape tensors...), records the boundary once per batch with one session of the full model, and runs
the suffix in ONE onnxruntime session with the perturbed weights fed as inputs. Nothing here edits
the caller's model. Nodes with subgraphs (If/Loop/Scan) that read outer-scope values implicitly are
not followed: such models should be cut by hand or run whole.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from onnxslice.model import Model
from onnxslice.record import Device, Recorder, fixed_batch_of
from onnxslice.walk import descendants

__all__ = ["Suffix", "suffix_nodes"]


def suffix_nodes(model: Model, layer: str, at: str = "weights") -> list[str]:
    """Node names downstream of ``layer``, in model order.

    Args:
        model: the model.
        layer: a node name.
        at: ``"weights"`` (the layer node itself and its descendants) or ``"activations"`` (only the
            descendants of the layer's output).
    """
    node = model.node(layer)
    names = descendants(model, [o for o in node.outputs if o])
    if at == "weights":
        names.add(node.name)
    return [n.name for n in model.nodes if n.name in names]


@dataclass
class Suffix:
    """One layer's suffix model with its own (reused) session.

    Attributes:
        layer: the layer (node) name.
        at: ``"weights"`` or ``"activations"``.
        boundary: the suffix's graph inputs (values computed by the unperturbed prefix).
        outputs: the model outputs the suffix recomputes (the others cannot change).
        weight_inputs: initializers fed per run (swappable).
        nodes: how many nodes the suffix holds (its share of the model's cost).
    """

    layer: str
    at: str
    boundary: list[str]
    outputs: list[str]
    weight_inputs: list[str]
    nodes: int
    recorder: Recorder | None
    sample_key: str = ""

    @classmethod
    def build(
        cls, model: Model, layer: str, at: str = "weights", weight_inputs: Sequence[str] = (), device: Device = "cpu",
        extra_outputs: Sequence[str] = (),
    ) -> Suffix:
        """Cut ``model`` below ``layer`` and open the suffix's session.

        ``extra_outputs`` are intermediate values to return too when the suffix computes them (the
        logits before a final Softmax, for instance).
        """
        keep = set(suffix_nodes(model, layer, at))
        nodes = [n for n in model.nodes if n.name in keep]
        if not nodes:  # an output layer's activation: the perturbed value is the model output itself
            out = model.node(layer).outputs[0]
            outputs = [out] if out in model.output_names or out in extra_outputs else []
            return cls(layer, at, [out], outputs, [], 0, None)
        produced = {o for n in nodes for o in n.outputs if o}
        boundary: list[str] = []
        for n in nodes:
            for v in n.inputs:
                if v and v not in produced and not model.is_initializer(v) and v not in boundary:
                    boundary.append(v)
        outputs = [o for o in [*model.output_names, *extra_outputs] if o in produced]
        outputs = list(dict.fromkeys(outputs))
        inits = {v for n in nodes for v in n.inputs if v and model.is_initializer(v)}
        g = model.graph
        protos = {n.name: n for n in g.node}
        vis = {vi.name: vi for vi in [*g.value_info, *g.input, *g.output]}

        def info(name: str) -> onnx.ValueInfoProto:
            vi = vis.get(name)
            if vi is not None and vi.type.HasField("tensor_type"):
                # unknown shape: boundary values may be batch-sized or batch-free (shape tensors)
                return helper.make_tensor_value_info(name, vi.type.tensor_type.elem_type, None)
            return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)

        graph = helper.make_graph(
            [protos[n.name] for n in nodes],
            f"suffix_{layer}",
            [info(b) for b in boundary],
            [vis[o] if o in vis else helper.make_empty_tensor_value_info(o) for o in outputs],
            [t for t in g.initializer if t.name in inits],
        )
        proto = helper.make_model(
            graph, opset_imports=list(model.skeleton.opset_import), ir_version=model.skeleton.ir_version
        )
        sub = model.with_proto(proto)  # detached weights stay arrays
        missing = [w for w in weight_inputs if w not in inits]
        if missing:
            raise ValueError(f"weights {missing} are not read by the suffix of '{layer}'")
        rec = Recorder(sub, values=None, device=device, weight_inputs=list(weight_inputs))
        rec.fixed_batch = fixed_batch_of(model)  # the boundary's shapes are unknown: the full model's batch holds
        return cls(layer, at, boundary, outputs, list(weight_inputs), len(nodes), rec, model.input_names[0])

    def run(
        self, cache: Mapping[str, np.ndarray], weights: Mapping[str, np.ndarray] | None = None,
        replace: Mapping[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run the suffix on cached boundary values; ``replace`` overrides some of them (activations)."""
        feed = {b: (replace[b] if replace and b in replace else cache[b]) for b in self.boundary}
        if self.recorder is None:
            return {o: feed[o] for o in self.outputs}
        n = len(cache[self.sample_key]) if self.sample_key in cache and np.ndim(cache[self.sample_key]) else None
        return self.recorder.run(feed, validated=True, weights=weights, samples=n)
