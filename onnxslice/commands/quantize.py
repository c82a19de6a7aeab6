"""``onnxslice quantize MODEL --avg-bits 6 --choices int4,int8 --criterion wgrad --data D --out q.onnx``.

Scores the layers (a SAfER criterion, the measured oracle, or a saved ``LayerScores`` file), plans
the precision per layer under the budget (or takes ``--plan plan.json`` as given), writes the
quantized model and prints per-layer precision, the file size and the fidelity before and after.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from onnxslice.commands import DEQUANTIZE_HELP, add_common, criterion_or_fd, emit_json, load_for_rewrite
from onnxslice.commands._types import positive_float, positive_int
from onnxslice.data import Dataset, load_data
from onnxslice.errors import DataError, PlanError
from onnxslice.model import Model
from onnxslice.table import format_table

NAME = "quantize"
HELP = "mixed-precision quantization (int4/int8/fp16 weights, or static QDQ) planned by layer sensitivity"
ORDER = 60


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p, data=False)
    p.add_argument("--data", "-d", help="data for scoring, calibration and fidelity (file.npz, folder, builtin:NAME)")
    p.add_argument("--out", "-o", required=True, help="where to write the quantized model (.onnx)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--avg-bits", type=positive_float,
                        help="budget: mean bits per weight of the quantizable layers (no default)")
    budget.add_argument("--size-mb", type=positive_float,
                        help="budget: estimated file size in MB (10^6 bytes; no default)")
    p.add_argument("--choices", default="int4,int8", help="precisions to choose from (int4,int8,fp16,fp32)")
    p.add_argument(
        "--criterion",
        default="wgrad",
        help="layer importance: a SAfER criterion (wgrad (default), grad, weight, gradcampp, ig, gig, idgi, "
        "smoothgrad, vargrad, hsic, fd) or 'oracle[:int4|int8]', the measured output error of quantizing "
        "each layer alone (one pass over the data per layer)",
    )
    p.add_argument("--reduction", default="linf", help="SAfER reduction for --criterion (default linf)")
    p.add_argument("--target", "-t", default="pred",
                   help="the SAfER criterion's target: pred (default), class:K, loss, output-norm, value:NAME[idx] "
                        "(see docs/targets.md)")
    p.add_argument("--output", default=None, help="the model output the target reads (default: the first output)")
    p.add_argument("--steps", type=positive_int, default=16,
                   help="ig/gig/idgi path steps, smoothgrad/vargrad noise draws (default 16)")
    p.add_argument("--scores", help="a saved LayerScores JSON file instead of --criterion")
    p.add_argument("--plan", help="a JSON plan (layer -> precision) that overrides the computed one")
    p.add_argument("--mode", choices=("weight", "static"), default="weight", help="weight-only or static QDQ")
    p.add_argument("--block-size", type=positive_int, default=32, help="int4 block size (default 32)")
    p.add_argument("--no-matmul-nbits", action="store_true", help="emit int4 MatMul weights as DequantizeLinear")
    p.add_argument("--samples", type=positive_int, default=256,
                   help="samples used for scoring and calibration (default 256)")
    p.add_argument("--save-plan", help="also write the plan used (JSON; default: not written)")
    p.add_argument("--dequantize", action="store_true", help=DEQUANTIZE_HELP)


def _scores(args: argparse.Namespace, model: Model, ds: Dataset | None) -> Any:
    from onnxslice.rewrite.bits_scores import is_oracle, quantization_scores
    from onnxslice.sensitivity.scores import LayerScores

    if args.scores:
        scores = LayerScores.load(args.scores)
        scores.check_model(model, args.scores)
        return scores
    if ds is None and args.criterion != "weight":
        raise DataError(
            f"planning by '{args.criterion}' needs --data (or use --criterion weight, --scores FILE or --plan FILE)"
        )
    calib = ds.subset(slice(0, args.samples)) if ds is not None else None
    crit = args.criterion if is_oracle(args.criterion) else criterion_or_fd("quantize", model, args.criterion,
                                                                              args.output)
    options: dict[str, Any] = {} if is_oracle(args.criterion) else {
        "steps": args.steps, "noise_samples": args.steps, "target": args.target,
        **({"output": args.output} if args.output else {})}
    return quantization_scores(
        model, calib, crit, args.reduction, samples=args.samples, block_size=args.block_size,
        use_matmul_nbits=not args.no_matmul_nbits, **options,
    )


def _plan(args: argparse.Namespace, model: Model, ds: Dataset | None) -> Any:
    from onnxslice.artifacts import stamp
    from onnxslice.rewrite import Plan, plan_bits

    if args.plan:
        return Plan.load(args.plan)
    if args.avg_bits is None and args.size_mb is None:
        raise PlanError("give a budget (--avg-bits or --size-mb) or a plan (--plan FILE)")
    plan = plan_bits(
        _scores(args, model, ds), model, args.choices, args.avg_bits, args.size_mb, block_size=args.block_size
    )
    stamp(plan.meta, model)
    return plan


def _planned_by(args: argparse.Namespace, plan: Any) -> str:
    if args.plan:
        return f"user plan {args.plan}"
    crit, red = plan.meta.get("criterion", ""), plan.meta.get("reduction", "")
    return f"{crit}/{red}" if red and not crit.startswith("oracle") else str(crit)


def _layer_rows(model: Model, decisions: dict[str, str], block_size: int) -> list[dict[str, Any]]:
    from onnxslice.rewrite.precision import layer_bytes, quantizable_layers

    rows = []
    for layer in quantizable_layers(model):
        p = decisions.get(layer.name, "fp32")
        rows.append(
            {
                "layer": layer.name,
                "op": layer.op_type,
                "weights": int(model.initializer(layer.weight).size),
                "precision": p,
                "KB before": layer_bytes(model, layer, "fp32", block_size) / 1e3,
                "KB after": layer_bytes(model, layer, p, block_size) / 1e3,
            }
        )
    return rows


def run(args: argparse.Namespace) -> int:
    from onnxslice.outputs import Outputs
    from onnxslice.rewrite import quantize
    from onnxslice.rewrite.bits_plan import plan_cost
    from onnxslice.rewrite.fidelity import compare_outputs, run_outputs
    from onnxslice.rewrite.quantize import check_plan

    outs = Outputs(NAME)
    outs.reads_model(args.model)
    outs.reads_data(args.data)
    outs.reads(args.scores, "--scores")
    outs.reads(args.plan, "--plan")
    out = outs.writes(args.out, "--out")
    plan_path = outs.writes(args.save_plan, "--save-plan")
    assert out is not None  # --out is required
    model = load_for_rewrite(args.model, "quantize", args.dequantize)
    ds = load_data(args.data) if args.data else None
    plan = _plan(args, model, ds)
    decisions = check_plan(model, plan)  # a bad plan stops here: nothing is written
    calib = ds.subset(slice(0, args.samples)) if ds is not None else None
    q = quantize(
        model, plan, calib, mode=args.mode, block_size=args.block_size, use_matmul_nbits=not args.no_matmul_nbits
    )
    path = out
    size_before = os.path.getsize(model.path) if model.path else model.proto.ByteSize()
    size_after = q.proto.ByteSize()
    cost = plan_cost(model, decisions, args.block_size)
    summary: dict[str, Any] = {
        "out": str(path),
        "mode": args.mode,
        "planned_by": _planned_by(args, plan),
        "avg_bits": round(cost.avg_bits, 3),
        "size_bytes_before": size_before,
        "size_bytes_after": size_after,
    }
    if ds is not None:
        ref = run_outputs(model, ds)
        summary["fidelity_before"] = compare_outputs(ref, ref, ds.labels).to_dict()
        summary["fidelity_after"] = compare_outputs(ref, run_outputs(q, ds), ds.labels).to_dict()
    outs.defer(out, q.save)
    outs.defer(plan_path, plan.save)
    outs.commit()
    size_after = summary["size_bytes_after"] = os.path.getsize(path)
    rows = _layer_rows(model, decisions, args.block_size)
    if args.json:
        emit_json({**summary, "plan": plan.to_dict(), "layers": rows})
        return 0
    print(format_table(rows, title=f"{args.mode} quantization of {model.path.name if model.path else 'model'}"))
    print(f"\nplanned by: {summary['planned_by']}")
    print(f"average bits per weight: {cost.avg_bits:.3f}")
    print(f"file size: {size_before:,} -> {size_after:,} bytes ({size_after / size_before:.3f}x)")
    if ds is not None:
        keys = ("accuracy", "top1_agreement", "kl", "rel_error")
        before, after = summary["fidelity_before"], summary["fidelity_after"]
        frows = [{"fidelity": k, "before": before[k], "after": after[k]} for k in keys if after[k] is not None]
        print(format_table(frows, title=f"\nfidelity on {ds.name} ({len(ds)} samples, against the float model)"))
    print(f"\nsaved {path}")
    return 0
