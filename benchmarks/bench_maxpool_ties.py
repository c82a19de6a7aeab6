"""What the MaxPool tie rule changes: LeNet-5 slices on MNIST before and after the one-rule decision.

The contributions rule of MaxPool used to send a window's CONTRIB to every input equal to the window's
maximum; it now sends it to the first one (row-major window order), as the VJP and PyTorch's and
onnxruntime's own MaxPool gradients do (``docs/maxpool_ties.md``). A slice cannot be computed with the old
rule any more, so the comparison runs in two steps on two checkouts:

    python benchmarks/bench_maxpool_ties.py --save /tmp/before.npz             # on the commit before
    python benchmarks/bench_maxpool_ties.py --compare /tmp/before.npz \\
        --out benchmarks/results/maxpool_ties.json                             # on this commit

It also measures, on the same samples, how often MaxPool windows tie (every MaxPool input of LeNet-5
follows a Relu, so a window of four zeros is a tie), which does not depend on the rule. The default
(quick) slices 64 test samples with a profile of 1000 training samples; ``--full`` 500 and 5000.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from onnxslice.opsets.geometry import gather_windows, node_windows

import onnxslice as osl

ROOT = Path(__file__).resolve().parents[1]


def tie_stats(model: osl.Model, x: np.ndarray) -> dict[str, Any]:
    """Per MaxPool node: windows, windows whose maximum is held by several inputs, all-zero windows."""
    pools = [n for n in model.nodes if n.op_type == "MaxPool"]
    trace = osl.record(model, x, values=[n.inputs[0] for n in pools] + [n.outputs[0] for n in pools], device="cpu")
    out: dict[str, Any] = {}
    for n in pools:
        xin, y = trace[n.inputs[0]], trace[n.outputs[0]]
        idx = node_windows(n, xin.shape[2:], y.shape[2:], tuple(n.attr("kernel_shape")))
        cols = gather_windows(xin, idx, fill=-np.inf)  # (B, C, P, K)
        hits = (cols == y.reshape(*y.shape[:2], -1, 1)).sum(axis=-1)
        out[n.name] = {
            "windows": int(hits.size),
            "tied": float((hits > 1).mean()),
            "all_zero": float((cols.max(axis=-1) == 0).mean() if (cols >= 0).all() else np.nan),
            "inputs_at_max": float(hits.mean()),
        }
    return out


def diff(before: dict[str, np.ndarray], after: dict[str, np.ndarray]) -> dict[str, Any]:
    """How two CONTRIB tables (value or weight -> array) differ: entries, and slice membership (non-zero)."""
    rows: dict[str, Any] = {}
    tot = {"entries": 0, "changed": 0, "membership_changed": 0, "in_before": 0, "in_after": 0}
    for name in sorted(set(before) & set(after)):
        a, b = before[name], after[name]
        r = {
            "entries": int(a.size),
            "changed": int((a != b).sum()),
            "membership_changed": int(((a != 0) != (b != 0)).sum()),
            "in_before": int((a != 0).sum()),
            "in_after": int((b != 0).sum()),
        }
        rows[name] = r
        for k in tot:
            tot[k] += r[k]
    return {"total": tot, "per_value": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true", help="500 slice samples, profile of 5000 (default: 64 and 1000)")
    ap.add_argument("--save", type=Path, help="write this run's slice here (.npz; default: not written)")
    ap.add_argument("--compare", type=Path, help="a slice saved by --save on the other rule (default: none)")
    ap.add_argument("--out", type=Path, help="results JSON (default: printed only)")
    args = ap.parse_args()
    n_slice, n_profile = (500, 5000) if args.full else (64, 1000)
    model = osl.load(ROOT / "models" / "lenet5.onnx")
    train = osl.load_data("builtin:mnist?split=train")
    test = osl.load_data("builtin:mnist?split=test")
    t0 = time.perf_counter()
    prof = osl.profile(model, train.subset(slice(0, n_profile)).bind(model), device="cpu", show_progress=False)
    feed = test.subset(slice(0, n_slice)).bind(model)
    sl = osl.slice(model, prof, feed, "pred", 0.3, workers=1, device="cpu")
    seconds = time.perf_counter() - t0
    if args.save:
        sl.save(args.save)
    res: dict[str, Any] = {
        "model": "lenet5", "data": "builtin:mnist", "slice_samples": n_slice, "profile_samples": n_profile,
        "theta": 0.3, "target": "pred", "seconds": round(seconds, 1),
        "ties": tie_stats(model, next(iter(feed.values()))),
    }
    if args.compare:
        before = osl.Slice.load(args.compare)
        res["neurons"] = diff(before.neurons, sl.neurons)
        res["synapses"] = diff(before.synapses, sl.synapses)
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
