"""``onnxslice faults MODEL --data D --on both --rate 1e-5 --bits any --trials 20``: bit-flip fault campaigns.

By default every chosen layer is faulted alone (its measured vulnerability: the loss of accuracy, or of
top-1 agreement with the fault-free model when the data has no labels, with a 95% interval over the
trials); ``--together`` faults all chosen layers at once. See :mod:`onnxslice.apps.faults`.
"""

from __future__ import annotations

import argparse
from typing import Any

from onnxslice.commands import add_common, emit_json
from onnxslice.commands._types import nonneg_int, positive_int
from onnxslice.console import format_table
from onnxslice.record import Device

NAME = "faults"
HELP = "random bit-flip fault campaigns in the weights and activations of chosen layers"
ORDER = 72


def add_fault_arguments(p: argparse.ArgumentParser) -> None:
    """The fault-model flags, shared with ``guard --max-loss``."""
    p.add_argument("--on", choices=("weights", "activations", "both"), default="both",
                   help="what the flips hit (default: both)")
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--rate", type=float, default=None,
                      help="bit-error rate in (0, 1): each bit of the class flips with this probability "
                           "(default: 1e-5 unless --flips is given)")
    rate.add_argument("--flips", type=positive_int, default=None,
                      help="exactly this many flips per layer and inference "
                                                              "instead of a rate (default: off)")
    p.add_argument("--bits", choices=("any", "sign", "exponent", "mantissa"), default="any",
                   help="bit class flipped (default: any)")
    p.add_argument("--trials", type=positive_int, default=20, help="independent trials per fault set (default: 20)")
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="parallel executor (default: local)")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="worker processes (local) or CPUs (ray) (default: in-process for local)")
    p.add_argument("--address", default=None,
                   help="Ray cluster address to join, with --backend ray (default: start a local one)")


def fault_model(args: argparse.Namespace) -> Any:
    """The validated :class:`~onnxslice.apps.faults.FaultModel` of the parsed flags."""
    from onnxslice.apps.faults import FaultModel

    rate = args.rate if args.rate is not None or args.flips is not None else 1e-5
    return FaultModel(args.on, rate, args.flips, args.bits).check()


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p, data=True)
    p.add_argument("--layers", "-l", default="all",
                   help="comma-separated layer (node) names, or 'all' (default: all)")
    p.add_argument("--together", action="store_true",
                   help="fault all chosen layers at once instead of one at a time (default: off)")
    add_fault_arguments(p)
    p.add_argument("--samples", type=positive_int, default=256,
                   help="samples of --data used (the first ones; default: 256)")
    p.add_argument("--batch-size", type=positive_int, default=256, help="samples per onnxruntime run (default: 256)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="campaign seed (default: 0)")
    p.add_argument("--out", "-o", help="write the campaign as JSON here (default: not written)")


def run(args: argparse.Namespace) -> int:
    from onnxslice.apps.faults import fault_layers, run_campaign
    from onnxslice.errors import DataError
    from onnxslice.io import save_json
    from onnxslice.model import load
    from onnxslice.outputs import Outputs

    fm = fault_model(args)
    if args.trials < 1:
        raise DataError(f"--trials must be at least 1, got {args.trials}")
    outs = Outputs(NAME)
    outs.reads(args.model, "MODEL")
    out = outs.writes(args.out, "--out")
    model = load(args.model)
    known = [x.name for x in fault_layers(model)]
    names = known if args.layers == "all" else [s.strip() for s in args.layers.split(",") if s.strip()]
    sets = [names] if args.together else [[n] for n in names]
    device: Device = "cpu" if args.device == "auto" else args.device
    camp = run_campaign(model, args.data, sets, fm, trials=args.trials, samples=args.samples,
                        batch_size=args.batch_size, seed=args.seed, backend=args.backend, workers=args.workers,
                        address=args.address, device=device)
    report = {"model": str(args.model), **camp.to_dict()}
    rows: list[dict[str, Any]] = []
    for s in camp.sets:
        mean, half = s.mean_ci(camp.metric)
        rows.append({"layers": ", ".join(s.layers) if len(s.layers) < 4 else f"{len(s.layers)} layers",
                     "flips/trial": round(sum(s.flips) / len(s.flips), 1), camp.metric: round(mean, 4),
                     "ci95": round(half, 4), "loss (points)": round(100 * (camp.clean - mean), 2)})
    report["table"] = rows
    outs.defer(out, lambda p: save_json(p, report))
    outs.commit()
    if args.json:
        emit_json(report)
        return 0
    what = f"{fm.on}, " + (f"BER {fm.rate:g}" if fm.rate is not None else f"{fm.flips} flips/layer/inference")
    print(format_table(rows, title=f"bit-flip faults ({what}, {fm.bits} bits, {args.trials} trials, "
                                   f"{camp.meta['samples']} samples): clean {camp.metric} {camp.clean:.4f}"))
    if out is not None:
        print(f"\nsaved {out}")
    return 0
