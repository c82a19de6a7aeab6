"""``onnxslice rank MODEL --data D --criterion wgrad --reduction linf``: SAfER layer ranking.

With ``--ground-truth N:weights`` (or ``U:activations``, ``D:weights``, several comma-separated) it also
measures the perturbation ground truth on this model and reports, for every criterion, its agreement
with it: which criterion to trust on *this* model. A gradient criterion on a model whose ops have no
VJP rule falls back to the black-box ``fd`` criterion, and says so.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from onnxslice.commands import add_common, emit_json, warn
from onnxslice.commands import gradient_failure as _gradient_failure
from onnxslice.commands._types import fraction_open_closed01, nonneg_int, positive_int
from onnxslice.console import format_table
from onnxslice.errors import DataError

NAME = "rank"
HELP = "rank layers by a SAfER sensitivity criterion (optionally checked against a perturbation ground truth)"
ORDER = 40


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p, data=True)
    p.add_argument("--criterion", "-c", default="wgrad",
                   help="weight, grad, wgrad, gradcampp, ig, gig, idgi, smoothgrad, vargrad, hsic, fd")
    p.add_argument("--reduction", "-r", default="linf", help="mean, percentile, l1, l2, linf")
    p.add_argument("--target", default="pred",
                   help="pred (default), class:K, loss, output-norm, value:NAME[idx] (see docs/targets.md)")
    p.add_argument("--output", default=None, help="the model output the target reads (default: the first output)")
    p.add_argument("--samples", type=positive_int, default=256,
                   help="calibration samples (the first ones; default 256)")
    p.add_argument("--steps", type=positive_int, default=16, help="path steps (ig, gig, idgi; default 16)")
    p.add_argument("--noise-samples", type=positive_int, default=16,
                   help="noise draws (smoothgrad, vargrad; default 16)")
    p.add_argument("--path", choices=("layer", "global"), default="layer",
                   help="path criteria: per-layer path (SAfER, default) or one global path for all layers")
    p.add_argument("--seed", type=nonneg_int, default=0, help="random seed (default 0)")
    p.add_argument("--batch-size", type=positive_int, default=128,
                   help="samples per run (default 128; gradient runs are lowered to fit 1 GB of forward values and "
                        "cotangents)")
    p.add_argument("--ground-truth", "-g", metavar="NOISE:ON[,...]",
                   help="also measure the ground truth (U|N|D:weights|activations) and score every criterion")
    p.add_argument("--magnitude", type=fraction_open_closed01, default=0.5,
                   help="ground-truth perturbation magnitude in (0, 1] (default 0.5)")
    p.add_argument("--draws", type=positive_int, default=8, help="ground-truth draws per layer (default 8)")
    p.add_argument("--gt-data", help="data for the ground truth (default: --data)")
    p.add_argument("--out", "-o", help="write the chosen criterion's LayerScores (JSON; default: not written)")


def _score(model: Any, args: argparse.Namespace, name: str, reduction: str, data: Any) -> Any:
    from onnxslice.sensitivity import sensitivity

    return sensitivity(model, data, name, reduction, args.target, samples=args.samples, steps=args.steps,
                       noise_samples=args.noise_samples, seed=args.seed, batch_size=args.batch_size,
                       device=args.device, path=args.path, **({"output": args.output} if args.output else {}))


def _parse_truths(text: str) -> list[tuple[str, str]]:
    out = []
    for part in text.split(","):
        noise, _, on = part.partition(":")
        on = on or "weights"
        on = {"w": "weights", "W": "weights", "act": "activations", "a": "activations"}.get(on, on)
        if noise not in ("U", "N", "D") or on not in ("weights", "activations"):
            raise DataError(
                f"ground truth '{part}' is not NOISE:ON with NOISE in U, N, D and ON in weights, activations"
            )
        out.append((noise, on))
    return out


def _announce(model: Any, args: argparse.Namespace, chosen: str, truths: list[tuple[str, str]], data: Any) -> None:
    """Say before starting when the ranking will take minutes (an estimate from samples x layers)."""
    from onnxslice.console import warn_if_long
    from onnxslice.sensitivity import criteria_names
    from onnxslice.sensitivity.cost import criterion_passes, forward_seconds, groundtruth_passes

    layers = len(model.layers)
    names = criteria_names() if truths else [chosen]
    passes = sum(criterion_passes(n, layers, steps=args.steps, noise_samples=args.noise_samples, path=args.path)
                 for n in names) + len(truths) * groundtruth_passes(layers, args.draws)
    if passes < 4:
        return
    unit = forward_seconds(model, data, args.samples)
    warn_if_long(passes * unit, f"rank ({', '.join(names)}{' + ground truth' if truths else ''}) on "
                 f"{args.samples} samples x {layers} layers", "lower --samples, --steps or --draws")


def run(args: argparse.Namespace) -> int:
    from onnxslice.model import load
    from onnxslice.sensitivity import agreement, criteria_names, get_criterion, perturbation_importance
    from onnxslice.sensitivity.criteria import GRADIENT_CRITERIA
    from onnxslice.sensitivity.reductions import REDUCTIONS, check_name

    check_name("reduction", args.reduction, list(REDUCTIONS))
    if args.criterion not in GRADIENT_CRITERIA:
        get_criterion(args.criterion)  # unknown names fail before any work
    truths = _parse_truths(args.ground_truth) if args.ground_truth else []
    from onnxslice.artifacts import stamp
    from onnxslice.outputs import Outputs

    outs = Outputs(NAME)
    outs.reads_model(args.model)
    outs.reads_data(args.data)
    outs.reads_data(args.gt_data, "--gt-data")
    out_path = outs.writes(args.out, "--out")
    model = load(args.model, dequantize=True)  # a pre-quantized model is ranked on its float view
    from onnxslice.data import load_data
    from onnxslice.record import validate_inputs

    ds = load_data(args.data)  # checked even for the data-free 'weight' criterion: bad data is an error
    validate_inputs(model, ds.subset(slice(0, 1)).bind(model))
    gt_ds = load_data(args.gt_data) if args.gt_data else ds
    if gt_ds is not ds:
        validate_inputs(model, gt_ds.subset(slice(0, 1)).bind(model))
    notes: list[str] = []
    chosen = args.criterion
    why = _gradient_failure(chosen, model, args.output)
    if why is not None:
        notes.append(f"criterion '{chosen}' needs gradients, which are unavailable ({why}); falling back to 'fd'")
        warn(NAME, notes[-1])
        chosen = "fd"
    _announce(model, args, chosen, truths, ds)
    scores = _score(model, args, chosen, args.reduction, ds)
    scores.meta["requested_criterion"] = args.criterion
    stamp(scores.meta, model)
    bad = [k for k, v in scores.scores.items() if not np.isfinite(v)]
    if bad:
        raise DataError(f"criterion '{chosen}' gives layer '{bad[0]}' a non-finite score; check the data's scale")
    if scores.scores and not any(float(v) for v in scores.scores.values()):
        notes.append(f"every layer's score is zero (zero gradient of target '{args.target}': a dead output or "
                     "saturated activations on these samples); try another --target, --output or more --samples")
        warn(NAME, notes[-1])
    outs.defer(out_path, scores.save)
    report: dict[str, Any] = {"model": str(args.model), "criterion": chosen, "reduction": args.reduction,
                              "notes": notes, "scores": scores.to_dict(), "ranking": scores.ranking()}
    rows: list[dict[str, Any]] = []
    if truths:
        gts = [perturbation_importance(model, gt_ds, n, on, args.magnitude, args.draws,
                                       samples=args.samples, seed=args.seed, device=args.device) for n, on in truths]
        report["ground_truth"] = [g.to_dict() for g in gts]
        for name in criteria_names():
            reason = _gradient_failure(name, model, args.output)
            if reason is not None:
                rows.append({"criterion": name, "note": f"skipped: {reason.splitlines()[0][:80]}"})
                continue
            s = scores if name == chosen else _score(model, args, name, args.reduction, ds)
            row: dict[str, Any] = {"criterion": name, "seconds": round(float(s.meta["seconds"]), 3)}
            for g in gts:
                a = agreement(s, g)
                tag = g.criterion.split(":", 1)[1]
                row[f"{tag} exact"] = a["exact"]
                row[f"{tag} spearman"] = a["spearman"]
                row[f"{tag} kendall"] = a["kendall"]
            rows.append(row)
        key = f"{gts[0].criterion.split(':', 1)[1]} spearman"
        rows.sort(key=lambda r: -(r.get(key, float("-inf")) if r.get(key) == r.get(key) else -2.0))
        report["agreement"] = rows
    outs.commit()
    if args.json:
        emit_json(report)
        return 0
    for note in notes:
        print(f"note: {note}")
    print(scores.table())
    if truths:
        for g in gts:
            print()
            print(g.table())
        print()
        print(format_table(rows, title=f"which criterion to trust on {Path(args.model).name} "
                           f"({args.reduction}; sorted by Spearman with {gts[0].criterion})"))
    if args.out:
        print(f"\nsaved {args.out}")
    return 0
