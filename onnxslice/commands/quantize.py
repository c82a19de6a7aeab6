"""``onnxslice quantize MODEL --avg-bits 6 --choices int4,int8 --criterion wgrad --data D --out q.onnx``.

Scores the layers (a SAfER criterion, the measured oracle, or a saved ``LayerScores`` file), plans
the precision per layer under the budget (or takes ``--plan plan.json`` as given), writes the
quantized model and prints per-layer precision, the file size and the fidelity before and after.
"""

from __future__ import annotations

import argparse
import os
from functools import partial
from pathlib import Path
from typing import Any

from onnxslice.commands import DEQUANTIZE_HELP, add_common, criterion_or_fd, emit_json, load_for_rewrite, warn
from onnxslice.commands._types import fraction_closed01, nonneg_int, positive_float, positive_int, repeats_help
from onnxslice.console import format_table
from onnxslice.data import Dataset, load_data
from onnxslice.errors import DataError, PlanError
from onnxslice.model import Model

NAME = "quantize"
HELP = "mixed-precision quantization (int4/int8/fp16 weights, or static QDQ) planned by layer sensitivity"
ORDER = 60


_REDUCE_RANGE: dict[str, bool | None] = {"auto": None, "on": True, "off": False}


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
        default=None,
        help="layer importance: a SAfER criterion (wgrad (the default with a budget), grad, weight, gradcampp, ig, "
        "gig, idgi, smoothgrad, vargrad, hsic, fd), fisher/taylor/hutchinson[:int4|int8], or 'oracle[:int4|int8]', "
        "the measured output error of quantizing each layer alone (one pass over the data per layer; with "
        "--format the default is oracle:int8 on the first 32 samples)",
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
    p.add_argument("--mode", choices=("weight", "static"), default=None,
                   help="with a budget or --plan: weight-only (default) or static QDQ mixed precision")
    p.add_argument("--format", choices=("auto", "qdq", "dynamic", "weight", "nbits", "fp16"), default=None,
                   help="deployment format (default: auto when no --avg-bits/--size-mb/--plan is given): qdq = static "
                        "int8 activations and weights fused into integer kernels, with the most sensitive layers kept "
                        "float until --accuracy-goal is met; dynamic = int8 weights with activations quantized at run "
                        "time (onnxruntime's quantize_dynamic; transformers), sensitive layers kept float likewise; "
                        "weight = weight-only int8 (smaller, not faster); nbits = MatMulNBits int4 MatMul weights; "
                        "fp16 = float16 graph (GPU); auto = the fastest of them on --device that meets "
                        "--accuracy-goal, measured")
    p.add_argument("--calibrate-method", choices=("minmax", "percentile", "entropy"), default="minmax",
                   help="--format qdq: activation range calibration (default minmax)")
    p.add_argument("--reduce-range", choices=("auto", "on", "off"), default="auto",
                   help="--format dynamic: 7-bit weights (default auto: on where this CPU's uint8 x int8 kernels "
                        "saturate, x86 without VNNI, where full-range weights lose several percent)")
    p.add_argument("--accuracy-goal", type=fraction_closed01, default=0.01,
                   help="--format: largest top-1 agreement loss vs the float model on --data (default 0.01)")
    p.add_argument("--max-latency", type=positive_float, default=None,
                   help="--format qdq/dynamic: latency budget (fraction of the float model's) for keeping layers "
                        "float (default: none)")
    p.add_argument("--float-layers", type=nonneg_int, default=None,
                   help="--format qdq/dynamic: keep exactly this many of the most sensitive layers float (default: as "
                        "few as --accuracy-goal needs, at most a quarter); --criterion qdq measures the sensitivity")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="intra-op threads of the latency measurement (default 1)")
    p.add_argument("--repeats", type=positive_int, default=15, help=repeats_help(15))
    p.add_argument("--report", default=None, help="also write the before/after report as JSON here (default: none)")
    p.add_argument("--block-size", type=positive_int, default=32, help="int4 block size (default 32)")
    p.add_argument("--no-matmul-nbits", action="store_true", help="emit int4 MatMul weights as DequantizeLinear")
    p.add_argument("--samples", type=positive_int, default=256,
                   help="samples used for scoring and calibration (default 256); with --format, the next as many "
                        "samples of --data (where it has them) measure the fidelity")
    p.add_argument("--save-plan", help="also write the plan used (JSON; default: not written)")
    p.add_argument("--dequantize", action="store_true", help=DEQUANTIZE_HELP)


def _scores(args: argparse.Namespace, model: Model, ds: Dataset | None) -> Any:
    from onnxslice.plans.bits_scores import is_oracle, quantization_scores
    from onnxslice.scores import LayerScores

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


def _order(args: argparse.Namespace, model: Model, calib: Any, builder: Any) -> tuple[list[str], str]:
    """Layers, most sensitive first, for keeping QDQ/dynamic layers float.

    By default the measured int8 oracle on at most 32 samples: the output error of each layer's int8 weights
    alone (on EfficientNet-Lite0 the first layers it ranks, kept float, bring the QDQ model's KL 6x down).
    """
    import copy

    from onnxslice.rewrite.formats import qdq_sensitivity

    if args.criterion == "qdq":
        sens = qdq_sensitivity(builder)
        return sorted(sens, key=lambda n: -sens[n]), f"{builder.fmt} (measured KL gain of keeping each layer float)"
    if args.criterion is None and not args.scores:
        args = copy.copy(args)
        args.criterion, args.samples = "oracle:int8", min(args.samples, 32)
    scores = _scores(args, model, calib).scores
    names = [n for n in builder.layers if n in scores]
    return sorted(names, key=lambda n: -float(scores[n])), str(args.criterion or f"scores {args.scores}")


def _run_format(args: argparse.Namespace, model: Model, ds: Dataset | None, outs: Any, out: Path,
                report: Path | None) -> int:
    from onnxslice.io import save_json
    from onnxslice.rewrite import formats

    fmt = args.format or "auto"
    device = formats.device_of(args.device)
    if fmt in ("auto", "qdq") and ds is None:
        raise DataError(f"--format {fmt} needs --data (calibration and the accuracy goal)")
    calib = ds.subset(slice(0, args.samples)) if ds is not None else None
    tried = formats.default_formats(device) if fmt == "auto" else (fmt,)
    if fmt == "auto" and not formats.matmul_dominated(model):
        tried = tuple(f for f in tried if f != "dynamic")  # integer convolutions are the slow kind on CPU
    variants: dict[str, Model] = {}
    info: dict[str, Any] = {}
    for f in tried:
        if f in ("qdq", "dynamic"):
            builder: Any = (formats.QdqBuilder(model, calib, samples=args.samples,
                                               calibrate_method=args.calibrate_method) if f == "qdq"
                            else formats.DynamicBuilder(model, calib, samples=args.samples,
                                                   reduce_range=_REDUCE_RANGE[args.reduce_range]))
            key = "" if f == "qdq" else "dynamic_"
            try:
                exclude: list[str] = []
                if calib is not None and (args.float_layers is not None or args.max_latency is not None
                                          or args.accuracy_goal < 1):
                    order, by = _order(args, model, calib, builder)
                    if args.float_layers is not None:
                        exclude = order[: args.float_layers]
                    else:
                        qp = formats.plan_float_layers(builder, order, goal=1.0 - args.accuracy_goal,
                                                       max_latency=args.max_latency, device=device,
                                                       threads=args.threads)
                        exclude, info[f"{key or 'qdq_'}trials"] = qp.exclude, qp.trials
                    info[f"{key}float_layers"], info[f"{key}sensitivity"] = exclude, by
                variants[f] = formats.convert(model, f, calib, exclude=exclude, builder=builder)
                if f == "dynamic":
                    info["dynamic_reduce_range"] = builder.reduce_range
            except PlanError:
                if fmt != "auto":
                    raise
            finally:
                builder.close()
        else:
            try:
                variants[f] = formats.convert(model, f, calib, block_size=args.block_size)
            except PlanError:
                if fmt != "auto":
                    raise
    # fidelity on held-out samples (after the first --samples) where --data has them, else on the calibration ones
    held = ds is not None and len(ds) > args.samples
    probe = (ds.subset(slice(args.samples, 2 * args.samples)) if held and ds is not None
             else calib if calib is not None else _zeros(model))
    info["fidelity_on"] = (f"{len(probe)} held-out samples of --data" if held
                           else "the calibration samples" if calib is not None else "zeros (no --data)")
    rows = formats.compare(model, variants, probe, device=device, threads=args.threads, repeats=args.repeats)
    chosen, met = (formats.pick(rows, args.accuracy_goal) if fmt == "auto" else (fmt, True))
    if chosen == "fp32":
        warn(NAME, "no format was measured faster than the float model here; writing the fastest quantized one")
        chosen = min((r for r in rows if r["format"] != "fp32"), key=lambda r: r["latency"])["format"]
    elif not met:
        warn(NAME, f"no format met the accuracy goal ({args.accuracy_goal}); chose the most faithful fast one, "
             f"{chosen}")
    row = next(r for r in rows if r["format"] == chosen)
    if row["latency"] > 1.03:
        warn(NAME, f"the {chosen} model is measured SLOWER than the float model ({row['latency']:.2f}x on "
             f"{device}); {'--format qdq' if device == 'cpu' else '--format fp16'} is the fast one")
    result = {"out": str(out), "format": chosen, "device": device, "threads": args.threads, "rows": rows,
              "accuracy_goal": args.accuracy_goal, "goal_met": met, **info}
    _stamp_report(variants[chosen], {"format": chosen, "device": device, "before": rows[0], "after": row,
                                     "accuracy_goal": args.accuracy_goal, "goal_met": met,
                                     "fidelity_on": info["fidelity_on"]})
    outs.defer(out, lambda p: variants[chosen].save(p))
    outs.defer(report, lambda p: save_json(p, result))
    outs.commit()
    if args.json:
        emit_json(result)
        return 0
    title = f"formats of {Path(args.model).name} on {device} ({args.threads} thread, batch 1; fidelity on " + \
        f"{info['fidelity_on']})"
    print(format_table([{k: v for k, v in r.items() if k != "rel_error"} for r in rows], title=title))
    for key, label in (("", "qdq"), ("dynamic_", "dynamic")):
        if info.get(f"{key}float_layers") is not None:
            print(f"\n{label} float layers ({info[f'{key}sensitivity']}): "
                  f"{', '.join(info[f'{key}float_layers']) or 'none'}")
    if info.get("dynamic_reduce_range") and args.reduce_range == "auto":
        print("\ndynamic: weights quantized to 7 bits, since this CPU's uint8 x int8 kernels saturate (x86 without "
              "VNNI); --reduce-range off keeps 8 bits for a CPU with VNNI")
    print(f"\nchosen: {chosen}; saved {out}")
    return 0


def _stamp_report(q: Model, report: dict[str, Any]) -> None:
    """Store the before/after summary in the quantized model's ``metadata_props`` (``onnxslice.quantize_report``)."""
    import json

    from onnxslice.rewrite.emit import _set_meta

    _set_meta(q.skeleton, {"onnxslice.quantize_report": json.dumps(report, default=str)})


def _latency(args: argparse.Namespace, model: Model, q: Model, ds: Dataset | None) -> dict[str, Any]:
    """Median latency of the float and the quantized model, round-robin, on --device."""
    from onnxslice.latency import median_ratios, timed_sessions
    from onnxslice.record import as_feed, validate_inputs
    from onnxslice.rewrite.formats import device_of

    device = device_of(args.device)
    probe = validate_inputs(model, as_feed(model, ds)) if ds is not None else _zeros(model)
    x = {k: v[:1] for k, v in probe.items()}
    ms, ratios = median_ratios(timed_sessions([model.proto, q.proto], device, args.threads), x, args.repeats)
    return {"device": device, "latency_ms_before": ms[0], "latency_ms_after": ms[1], "latency_ratio": ratios[1]}


def _zeros(model: Model) -> Any:
    import numpy as np

    return {v.name: np.zeros([d if isinstance(d, int) and d > 0 else 1 for d in (v.shape or [1])],
                             dtype=v.dtype or np.float32) for v in model.inputs}


def _save_json_to(obj: Any, path: Path) -> None:
    from onnxslice.io import save_json

    save_json(path, obj)


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
    report = outs.writes(args.report, "--report")
    assert out is not None  # --out is required
    model = load_for_rewrite(args.model, "quantize", args.dequantize)
    ds = load_data(args.data) if args.data else None
    if args.format is not None or (args.avg_bits is None and args.size_mb is None and not args.plan
                                   and args.mode is None):
        if args.format is not None and (args.avg_bits is not None or args.size_mb is not None or args.plan):
            raise PlanError("--format chooses a whole-model format; drop --avg-bits/--size-mb/--plan (or --format)")
        return _run_format(args, model, ds, outs, out, report)
    args.mode = args.mode or "weight"
    args.criterion = args.criterion or "wgrad"
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
        "float_params_before": model.num_params,
        "float_params_after": q.num_params,
        "size_bytes_before": size_before,
        "size_bytes_after": size_after,
    }
    summary.update(_latency(args, model, q, ds))
    if ds is not None:
        ref = run_outputs(model, ds)
        summary["fidelity_before"] = compare_outputs(ref, ref, ds.labels).to_dict()
        summary["fidelity_after"] = compare_outputs(ref, run_outputs(q, ds), ds.labels).to_dict()
    _stamp_report(q, summary)
    outs.defer(out, q.save)
    outs.defer(plan_path, plan.save)
    outs.defer(report, partial(_save_json_to, {**summary, "plan": plan.to_dict()}))
    outs.commit()
    size_after = summary["size_bytes_after"] = os.path.getsize(path)
    rows = _layer_rows(model, decisions, args.block_size)
    if args.json:
        emit_json({**summary, "plan": plan.to_dict(), "layers": rows})
        return 0
    print(format_table(rows, title=f"{args.mode} quantization of {model.path.name if model.path else 'model'}"))
    print(f"\nplanned by: {summary['planned_by']}")
    print(f"average bits per weight: {cost.avg_bits:.3f}")
    print(f"float parameters: {summary['float_params_before']:,} -> {summary['float_params_after']:,} "
          "(the rest are stored quantized)")
    print(f"file size: {size_before:,} -> {size_after:,} bytes ({size_after / size_before:.3f}x)")
    print(f"latency (median, round-robin, {summary['device']}, {args.threads} thread, batch 1): "
          f"{summary['latency_ms_before']:.4g} -> {summary['latency_ms_after']:.4g} ms "
          f"({summary['latency_ratio']:.3f}x)")
    if summary["latency_ratio"] > 1.03:
        warn(NAME, f"the quantized model is measured SLOWER than the float model "
              f"({summary['latency_ratio']:.2f}x); weight-only formats dequantize at run time: --format qdq is "
              "the fast one on CPU")
    if ds is not None:
        keys = ("accuracy", "top1_agreement", "kl", "rel_error")
        before, after = summary["fidelity_before"], summary["fidelity_after"]
        frows = [{"fidelity": k, "before": before[k], "after": after[k]} for k in keys if after[k] is not None]
        print(format_table(frows, title=f"\nfidelity on {ds.name} ({len(ds)} samples, against the float model)"))
    print(f"\nsaved {path}")
    return 0
