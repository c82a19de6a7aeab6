"""``onnxslice inspect MODEL``: opsets, inputs/outputs, op histogram, layers, plugin coverage."""

from __future__ import annotations

import argparse

from onnxslice.commands import add_common, emit_json
from onnxslice.console import format_table
from onnxslice.describe import describe
from onnxslice.model import load

NAME = "inspect"
HELP = "describe a model: inputs, outputs, ops, layers, and which ops lack plugins per capability"
ORDER = 10


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p)


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
