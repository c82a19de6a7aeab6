"""``onnxslice inspect MODEL``: opsets, inputs/outputs, op histogram, layers, plugin coverage."""

from __future__ import annotations

import argparse
from typing import Any

from onnxslice.commands import add_common, emit_json
from onnxslice.console import format_table
from onnxslice.model import Model, load

NAME = "inspect"
HELP = "describe a model: inputs, outputs, ops, layers, and which ops lack plugins per capability"
ORDER = 10


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p)


def coverage(model: Model) -> dict[str, list[str]]:
    """Capability -> op types of this model with no rule for it."""
    from onnxslice.opsets import REGISTRY

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
    from onnxslice.opsets import REGISTRY
    from onnxslice.opsets.coverage import refusals

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
        "ir_version": model.proto.ir_version,
        "producer": f"{model.proto.producer_name} {model.proto.producer_version}".strip(),
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


def run(args: argparse.Namespace) -> int:
    from onnxslice.outputs import Outputs

    Outputs(NAME).reads_model(args.model)
    d = describe(load(args.model))
    if args.json:
        emit_json(d)
        return 0
    print(f"{d['path']}  (IR {d['ir_version']}, opsets {d['opsets']}, producer '{d['producer']}')")
    print(f"{d['nodes']} nodes, {len(d['layers'])} layers, {d['params']:,} parameters")
    for note in d["notes"]:
        print(f"  note: {note}")
    print()
    print(format_table(d["inputs"] + d["outputs"], ["name", "type"], "inputs / outputs"))
    print()
    print(format_table([{"op": k, "count": v} for k, v in d["ops"].items()], title="ops"))
    print()
    print(format_table(d["layers"], title="layers"))
    print()
    print("plugin coverage (op types with no rule; partial: rules that refuse some of this model's nodes):")
    for cap, ops in d["missing_rules"].items():
        part = d["partial_rules"].get(cap, {})
        print(f"  {cap:<14} {', '.join(ops) if ops else ('all covered' if not part else 'all have a rule')}")
        for op, cases in part.items():
            print(f"  {'':<14} partial: {op} refuses {'; '.join(cases)}")
    return 0
