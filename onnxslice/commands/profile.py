"""``onnxslice profile MODEL --data D --out P.npz``: mean activation of every neuron."""

from __future__ import annotations

import argparse

from onnxslice.commands import add_common, emit_json
from onnxslice.commands._types import positive_int
from onnxslice.console import format_table
from onnxslice.data import load_data
from onnxslice.model import load
from onnxslice.outputs import Outputs
from onnxslice.profile import profile

NAME = "profile"
HELP = "profile mean activations of every neuron over a data set (NNSlicer phase 1)"
ORDER = 20


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p, data=True)
    p.add_argument("--out", "-o", required=True, help="where to write the profile (.npz; the suffix is added)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="samples per onnxruntime run (default 64)")


def run(args: argparse.Namespace) -> int:
    outs = Outputs(NAME)
    outs.reads_model(args.model)
    outs.reads_data(args.data)
    path = outs.writes(args.out, "--out", suffix=".npz")
    model = load(args.model, dequantize=True)  # a pre-quantized model is analysed on its float view
    ds = load_data(args.data)
    prof = profile(model, ds, args.batch_size, device=args.device)
    outs.defer(path, prof.save)
    outs.commit()
    rows = [
        {
            "value": r["value"],
            "shape": r["shape"],
            "neurons": int(prof.mean[r["value"]].size),
            "mean": r["mean"],
            "active": r["active"],
        }
        for r in prof.summary()
    ]
    if args.json:
        emit_json({"out": str(path), "samples": prof.count, "fingerprint": prof.fingerprint, "values": rows})
        return 0
    print(format_table(rows, title=f"profile of {len(rows)} values over {prof.count} samples of {ds.name}"))
    print(f"\nsaved {path}")
    return 0
