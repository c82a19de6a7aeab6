"""What ``onnxslice inspect`` reports about a model: I/O, ops, layers and the plugins' coverage of them.

A plain function of the model and the plugin registry, so that the report and the CLI share it.
"""

from __future__ import annotations

from typing import Any

from onnxslice.model import Model
from onnxslice.opsets import REGISTRY
from onnxslice.opsets.coverage import refusals

__all__ = ["coverage", "describe", "partial"]


def coverage(model: Model) -> dict[str, list[str]]:
    """Capability -> op types of this model with no rule for it."""
    out: dict[str, list[str]] = {}
    for cap in REGISTRY.capabilities:
        missing = sorted(
            {
                (f"{n.domain}::{n.op_type}" if n.domain else n.op_type)
                for n in model.nodes
                if not REGISTRY.has(cap, n.op_type, n.domain, n.opset)
            }
        )
        out[cap] = missing
    return out


def partial(model: Model) -> dict[str, dict[str, list[str]]]:
    """Capability -> op type -> the cases its rule refuses for this model's nodes.

    A case that depends on run-time values or options (``granularity='channel'``, ...) is marked
    ``(may refuse)``; the others refuse a node of this model for certain. Op types without a rule are in
    :func:`coverage`, not here.
    """
    out: dict[str, dict[str, list[str]]] = {}
    for cap in REGISTRY.capabilities:
        ops: dict[str, list[str]] = {}
        for n in model.nodes:
            if not REGISTRY.has(cap, n.op_type, n.domain, n.opset):
                continue
            key = f"{n.domain}::{n.op_type}" if n.domain else n.op_type
            for case, certain in refusals(cap, n, model):
                label = case if certain else f"{case} (may refuse)"
                cases = ops.setdefault(key, [])
                if label not in cases:
                    cases.append(label)
        if ops:
            out[cap] = dict(sorted(ops.items()))
    return out


def describe(model: Model) -> dict[str, Any]:
    """Everything ``inspect`` reports, as a JSON-ready dict."""
    return {
        "path": str(model.path) if model.path else None,
        "ir_version": model.skeleton.ir_version,
        "producer": f"{model.skeleton.producer_name} {model.skeleton.producer_version}".strip(),
        "opsets": {d or "ai.onnx": v for d, v in model.opsets.items()},
        "inputs": [{"name": i.name, "type": i.describe()} for i in model.inputs],
        "outputs": [{"name": o.name, "type": o.describe()} for o in model.outputs],
        "nodes": len(model.nodes),
        "params": model.num_params,
        "ops": model.op_histogram(),
        "layers": [
            {"layer": x.name, "op": x.op_type, "weight": x.weight, "params": x.params, "out_channels": x.out_channels}
            for x in model.layers
        ],
        "missing_rules": coverage(model),
        "partial_rules": partial(model),
        "notes": model.notes,
        "fingerprint": model.fingerprint,
    }
