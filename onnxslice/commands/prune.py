"""``onnxslice prune MODEL --ratio R --budget B --out P.onnx``: plan and apply pruning, report before/after."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from onnxslice.commands import DEQUANTIZE_HELP, criterion_or_fd, emit_json, load_for_rewrite, warn
from onnxslice.commands._types import (
    fraction_half_open01,
    fraction_open01,
    fraction_open_closed01,
    nonneg_int,
    positive_float,
    positive_int,
    repeats_help,
)
from onnxslice.console import format_table
from onnxslice.errors import PlanError

NAME = "prune"
HELP = "prune a model (structured: really removes channels; unstructured: masks) and report size/speed/fidelity"
ORDER = 60


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="path to an .onnx file")
    p.add_argument("--out", "-o", required=True, help="where to write the pruned model (never MODEL itself)")
    p.add_argument("--ratio", type=fraction_half_open01, default=None,
                   help="planned ratio in [0, 1) (fraction of prunable params; no default)")
    p.add_argument("--budget", choices=("uniform", "sensitivity", "slice"), default="uniform",
                   help="how the ratio is shared among layers (default uniform)")
    p.add_argument("--mode", choices=("structured", "unstructured"), default="structured",
                   help="remove channels (structured, default) or mask weights (unstructured)")
    p.add_argument("--criterion", default="wgrad",
                   help="SAfER criterion for --budget sensitivity and --channel-score criterion (default wgrad; "
                        "needs --data; 'weight' is data-free)")
    p.add_argument("--reduction", default="linf", help="reduction of the sensitivity criterion (default linf)")
    p.add_argument("--scores", help="LayerScores JSON to use for --budget sensitivity instead of computing them")
    p.add_argument("--channel-score", choices=("l1", "l2", "random", "criterion"), default="l1",
                   help="which channels of a group go: L1/L2 norm of the filters, random, or --criterion's "
                        "relevance reduced per channel")
    p.add_argument("--round-to", type=positive_int, default=None,
                   help="structured --ratio: keep a multiple of this many channels per group (default: the kernel "
                        "block of --device for Conv groups: 16 on AVX-512 CPUs, 8 on AVX2 and CUDA; Gemm/MatMul groups "
                        "unrounded; 1 turns rounding off) so that the speedup follows the FLOPs")
    p.add_argument("--latency", type=fraction_open_closed01, default=None,
                   help="plan for a latency target instead of --ratio: fraction of the original's measured latency "
                        "(e.g. 0.7; with --ratio, the plan also removes at least that ratio of parameters, choosing "
                        "where they go so that latency falls most); a knapsack against the measured latency table "
                        "(cached) of the measured damage of each candidate channel count on --data (without --data: "
                        "--channel-score importance); the "
                        "pruned model is measured and the plan tightened if it misses (default: off)")
    p.add_argument("--search", choices=("knapsack", "greedy"), default="knapsack",
                   help="how --latency chooses the cuts: knapsack over each channel count's damage measured alone "
                        "(default), or greedy: one cut at a time, re-measuring the damage of the cuts made so far on "
                        "--data (sees interactions; one forward pass of up to 64 samples per group and step; needs "
                        "--data, not with --ratio)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="onnxruntime execution provider the latency is measured and planned for (default cpu)")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="intra-op threads of every latency measurement (default 1)")
    p.add_argument("--cache", default=None,
                   help="folder of cached latency tables (default $ONNXSLICE_CACHE or ~/.cache/onnxslice)")
    p.add_argument("--report", default=None, help="also write the before/after report as JSON here (default: none)")
    p.add_argument("--recover", type=nonneg_int, default=0, metavar="STEPS",
                   help="fine-tune the pruned model for STEPS updates by distillation from the original's outputs on "
                        "--data's samples after the first --samples (those stay held out for fidelity), with "
                        "onnxslice's own gradients (default 0: off)")
    p.add_argument("--reconstruct", choices=("lsq", "bn", "lsq+bn"), default=None,
                   help="repair the pruned model without backprop before any --recover, on --data's samples after the "
                        "first --samples: lsq re-fits every layer that lost input channels to the original layer's "
                        "outputs by least squares (layer by layer), bn re-estimates BatchNormalization statistics "
                        "(default: off)")
    p.add_argument("--reconstruct-samples", type=positive_int, default=64,
                   help="calibration samples of --reconstruct (default 64)")
    p.add_argument("--recover-lr", type=positive_float, default=1e-3,
                   help="Adam learning rate of --recover (default 1e-3)")
    p.add_argument("--recover-batch", type=positive_int, default=32, help="batch size of --recover (default 32)")
    p.add_argument("--slice", dest="slice_file", help="Slice .npz (from `onnxslice slice`) for --budget slice")
    p.add_argument("--target", "-t", action="append", default=None,
                   help="for --budget sensitivity: the criterion's target (default pred; class:K, loss, output-norm, "
                        "value:NAME[idx]); for --budget slice without --slice: target classes (class:K, class:K1,K2; "
                        "repeatable), the slice is computed over --data's samples of these classes")
    p.add_argument("--output", default=None, help="the model output the target reads (default: the first output)")
    p.add_argument("--theta", type=fraction_open01, default=0.3,
                   help="NNSlicer theta when computing the slice (default 0.3)")
    p.add_argument("--plan", help="apply this plan JSON instead of planning (writes nothing else)")
    p.add_argument("--save-plan", help="also write the plan as JSON here (default: not written)")
    p.add_argument("--data", "-d", help="data for fidelity (agreement with the original), the criterion and the slice")
    p.add_argument("--samples", type=positive_int, default=256,
                   help="samples of --data used for fidelity, the criterion and the slice (default 256)")
    p.add_argument("--repeats", type=positive_int, default=20, help=repeats_help(20))
    p.add_argument("--latency-batch", type=positive_int, default=1, help="batch size of the latency runs (default 1)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of tables")
    p.add_argument("--dequantize", action="store_true", help=DEQUANTIZE_HELP)


def _scores(args: argparse.Namespace, model: Any, data: Any) -> Any:
    from onnxslice.plans.prune_plan import sensitivity_scores
    from onnxslice.sensitivity import LayerScores

    if args.scores:
        scores = LayerScores.load(args.scores)
        scores.check_model(model, args.scores)
        return scores
    if data is None and args.criterion != "weight":
        raise PlanError(f"--budget sensitivity with criterion '{args.criterion}' needs --data (or --scores FILE)")
    extra = {"output": args.output} if args.output else {}
    crit = criterion_or_fd("prune", model, args.criterion, args.output) if args.criterion != "weight" else "weight"
    return sensitivity_scores(model, data, crit, args.reduction, samples=args.samples,
                              target=args.target[0] if args.target else "pred", **extra)


def _slice(args: argparse.Namespace, model: Any, data: Any) -> Any:
    from onnxslice.plans.prune_plan import class_slice
    from onnxslice.slicing import Slice

    if args.slice_file:
        sl = Slice.load(args.slice_file)
        sl.check_model(model, args.slice_file)
        return sl
    if data is None or not args.target:
        raise PlanError("--budget slice needs --slice S.npz (from `onnxslice slice`) or --data with --target class:K")
    # channels (structured) rank better by NNSlicer's signed CONTRIB, single weights by the count of
    # significant uses (benchmarks/bench_classprune.py; docs/reproduction.md)
    return class_slice(model, data, args.target, samples=args.samples, theta=args.theta,
                       accumulate="signed" if args.mode == "structured" else "abs",
                       **({"output": args.output} if args.output else {}))


def _plan(args: argparse.Namespace, model: Any, data: Any) -> Any:
    from onnxslice.plans import plan_pruning
    from onnxslice.plans.prune_plan import PrunePlan

    if args.plan:
        return PrunePlan.load(args.plan), None
    if args.latency is not None:
        from onnxslice.artifacts import stamp

        plan = _latency_plan(args, model, data)
        stamp(plan.meta, model)
        return plan, None
    if args.ratio is None:
        raise PlanError("give --ratio, --latency (or --plan)")
    calib = data.subset(slice(0, args.samples)) if data is not None else None
    channel_score = _channel_score(args, model, calib)
    scores = _scores(args, model, calib) if args.budget == "sensitivity" else None
    sl = _slice(args, model, data) if args.budget == "slice" else None
    plan = plan_pruning(model, args.ratio, args.budget, scores=scores, slice=sl, channel_score=channel_score,
                        mode=args.mode, round_to=_round_to(args, model), round_convs_only=args.round_to is None)
    from onnxslice.artifacts import stamp

    stamp(plan.meta, model)
    return plan, sl


def _channel_score(args: argparse.Namespace, model: Any, calib: Any) -> Any:
    """--channel-score, with ``criterion`` turned into --criterion's relevance arrays on the calibration data."""
    if args.channel_score != "criterion":
        return args.channel_score
    from onnxslice.sensitivity import relevance

    if calib is None and args.criterion != "weight":
        raise PlanError(f"--channel-score criterion ('{args.criterion}') needs --data")
    return relevance(model, calib, args.criterion, samples=args.samples)


def _round_to(args: argparse.Namespace, model: Any) -> int:
    """--round-to, or the kernel block of --device for models with Convs (structured only)."""
    from onnxslice.latency import kernel_block

    if args.round_to is not None:
        return int(args.round_to)
    if args.mode != "structured" or args.budget == "slice" or not any(x.op_type == "Conv" for x in model.layers):
        return 1
    return kernel_block(args.device)


def _latency_plan(args: argparse.Namespace, model: Any, data: Any) -> Any:
    """Latency-aware plan (knapsack against the measured table), checked by measuring the pruned model."""
    from onnxslice.latency import latency_table
    from onnxslice.plans.latency_plan import damage_table, plan_greedy, prune_to_latency

    if args.mode != "structured" or args.budget == "slice":
        raise PlanError("--latency plans structured pruning; drop --mode unstructured / --budget slice")
    if args.search == "greedy" and (data is None or args.ratio is not None):
        raise PlanError("--search greedy re-measures the damage on --data and plans for --latency alone; give "
                        "--data and drop --ratio (or use --search knapsack)")
    calib = data.subset(slice(0, args.samples)) if data is not None else None
    channel_score = _channel_score(args, model, calib)
    scores = _scores(args, model, calib) if args.budget == "sensitivity" else None
    table = latency_table(model, device=args.device, batch=args.latency_batch, threads=args.threads,
                          cache=args.cache)
    damage, planner = None, None
    if args.search == "greedy":
        def planner(goal: float) -> Any:
            return plan_greedy(model, goal, table, calib, channel_score=channel_score, samples=min(args.samples, 64))
    elif calib is not None:  # measured damage of every candidate count on the user's data
        damage = damage_table(model, calib, table, channel_score=channel_score, samples=min(args.samples, 64))
    res = prune_to_latency(model, args.latency, table, channel_score=channel_score, scores=scores, damage=damage,
                           min_ratio=args.ratio, repeats=max(args.repeats, 10), planner=planner)
    if not res.met:
        warn(NAME, f"latency target {args.latency:g} not met: the fastest plan measured {res.measured:.3f} of the "
             "original")
    return res.plan


def _recover(args: argparse.Namespace, model: Any, pruned: Any, data: Any) -> dict[str, Any]:
    """Distil the original's outputs into the pruned model on the samples after the first --samples."""
    import time

    from onnxslice.data import Dataset
    from onnxslice.train import finetune

    if data is None:
        raise PlanError("--recover needs --data (unlabelled samples to distil the original's outputs on)")
    if args.recover < 0:
        raise PlanError(f"--recover takes a number of steps >= 0, got {args.recover}")
    rest = data.subset(slice(args.samples, None))
    if len(rest) == 0:
        raise PlanError(f"--recover needs more samples in --data than --samples ({args.samples}): the first "
                        "--samples are held out for fidelity")
    unlabelled = Dataset({k: v for k, v in rest.bind(model).items()}, None, f"{rest.name} (unlabelled)")
    t0 = time.perf_counter()
    res = finetune(pruned, unlabelled, steps=args.recover, lr=args.recover_lr, batch_size=args.recover_batch,
                   loss="distill", teacher=model, progress=True)
    return {"model": res.model, "unrecovered": pruned, "steps": args.recover, "lr": args.recover_lr,
            "samples": len(rest), "seconds": round(time.perf_counter() - t0, 1),
            "loss_first": float(res.losses[0]), "loss_last": float(np.mean(res.losses[-10:]))}


def _reconstruct(args: argparse.Namespace, model: Any, pruned: Any, plan: Any, data: Any) -> dict[str, Any]:
    """Least-squares / BN repair on the samples after the first --samples (those stay held out for fidelity)."""
    from onnxslice.rewrite.reconstruct import reconstruct

    if data is None:
        raise PlanError("--reconstruct needs --data (unlabelled calibration samples)")
    if plan.meta.get("mode", "structured") != "structured":
        raise PlanError("--reconstruct repairs structured pruning; drop --mode unstructured")
    rest = data.subset(slice(args.samples, args.samples + args.reconstruct_samples))
    if len(rest) == 0:
        raise PlanError(f"--reconstruct needs more samples in --data than --samples ({args.samples}): the first "
                        "--samples are held out for fidelity")
    res = reconstruct(model, pruned, plan, rest, method=args.reconstruct, samples=len(rest))
    return {"model": res.model, "unrepaired": pruned, **res.to_dict()}


#: A pruned model measured above this latency ratio counts as slower than its input (timing noise below).
SLOWER = 1.03


def _default_plan(args: argparse.Namespace, plan: Any) -> bool:
    """Whether the plan came from --ratio with the default kernel rounding (the default must never be slower)."""
    return (args.plan is None and args.latency is None and args.round_to is None and args.mode == "structured"
            and args.budget in ("uniform", "sensitivity") and plan.meta.get("mode", "structured") == "structured")


def _fallback(args: argparse.Namespace, model: Any, plan: Any, pruned: Any, lat: list[float], lat_ratio: list[float],
              batch: dict[str, np.ndarray]) -> tuple[Any, Any, list[float], list[float], dict[str, Any]]:
    """The default plan measured slower than its input: round every group (Gemm/MatMul too) to the kernel block,
    measure both against the input round-robin, keep the faster; refuse (nothing written) if both are slower."""
    from onnxslice.artifacts import stamp
    from onnxslice.latency import kernel_block, median_ratios, timed_sessions
    from onnxslice.plans import plan_pruning
    from onnxslice.rewrite import prune

    block = kernel_block(args.device)
    first = lat_ratio[1]
    alt_plan = plan_pruning(model, args.ratio, "uniform", channel_score=args.channel_score, mode="structured",
                            round_to=block, round_convs_only=False) \
        if args.budget == "uniform" and args.channel_score != "criterion" else None
    alt = None if alt_plan is None else prune(model, alt_plan)
    protos = [model.proto, pruned.proto] + ([] if alt is None else [alt.proto])
    ms, ratios = median_ratios(timed_sessions(protos, args.device, args.threads), batch, max(2 * args.repeats, 6))
    best = min(range(1, len(ratios)), key=lambda i: ratios[i])
    if ratios[best] > SLOWER:
        raise PlanError(f"the pruned model measures {first:.2f}x (again {ratios[1]:.2f}x) the input's latency on "
                        f"{args.device}, batch {args.latency_batch}"
                        + (f", and {ratios[2]:.2f}x with every group rounded to {block} channels" if alt else "")
                        + "; nothing written: plan for speed with --latency, or give --round-to to write it anyway")
    info: dict[str, Any] = {"first_measured": round(first, 4), "remeasured": round(ratios[1], 4)}
    if best == 2 and alt is not None and alt_plan is not None:
        stamp(alt_plan.meta, model)
        info.update({"used": f"every group rounded to {block}", "measured": round(ratios[2], 4)})
        return alt_plan, alt, [ms[0], ms[2]], [1.0, ratios[2]], info
    info["used"] = "the plan as it was (the first measurement was noise)"
    return plan, pruned, [ms[0], ms[1]], [1.0, ratios[1]], info


def _fidelity_rows(model: Any, pruned: Any, data: Any, classes: list[int]) -> dict[str, Any]:
    from onnxslice.rewrite.fidelity import compare_outputs, run_outputs

    ref = run_outputs(model, data)
    fid = compare_outputs(ref, run_outputs(pruned, data), data.labels)
    out: dict[str, Any] = {"fidelity": fid.to_dict()}
    if classes and data.labels is not None:
        keep = np.isin(data.labels, classes)
        if keep.any():
            sub = data.subset(np.flatnonzero(keep))
            out["target_fidelity"] = compare_outputs([r[keep] for r in ref], run_outputs(pruned, sub),
                                                     sub.labels).to_dict()
            out["target_classes"] = classes
    return out


def _check_tensor_outputs(model: Any) -> None:
    """Pruning rewrites tensor graphs: a map or sequence output (ZipMap, say) is unsupported (exit 3)."""
    from onnxslice.errors import UnsupportedOpError

    for o in model.graph.output:
        if not o.type.HasField("tensor_type"):
            node = model.producer(o.name)
            op, dom, opset, name = (node.op_type, node.domain, node.opset, node.name) if node else ("?", "", 0, "")
            raise UnsupportedOpError(op, dom, opset, "prune", name,
                                     hint=f"the model output '{o.name}' is not a tensor; prune rewrites tensor graphs "
                                          "only (export without it, e.g. skl2onnx options={'zipmap': False})")


def run(args: argparse.Namespace) -> int:
    from onnxslice.data import load_data
    from onnxslice.io import save_json
    from onnxslice.latency import kernel_block, load_average, median_ratios, timed_sessions
    from onnxslice.outputs import Outputs
    from onnxslice.rewrite import prune
    from onnxslice.rewrite.measure import model_stats

    src = Path(args.model)
    outs = Outputs(NAME)
    outs.reads_model(args.model)
    outs.reads_data(args.data)
    outs.reads(args.scores, "--scores")
    outs.reads(args.slice_file, "--slice")
    outs.reads(args.plan, "--plan")
    if args.plan:
        outs.reads(f"{args.plan}.npz", "--plan's masks")
    out = outs.writes(args.out, "--out")
    plan_path = outs.writes(args.save_plan, "--save-plan")
    if plan_path is not None:
        outs.writes(f"{plan_path}.npz", "--save-plan")  # unstructured plans keep their masks beside the JSON
    report = outs.writes(args.report, "--report")
    model = load_for_rewrite(src, "prune", args.dequantize)
    _check_tensor_outputs(model)
    data = load_data(args.data) if args.data else None
    plan, sl = _plan(args, model, data)
    pruned = prune(model, plan)
    fid_data = data.subset(slice(0, args.samples)) if data is not None else None
    if fid_data is not None:
        feed = fid_data.bind(model)
    else:
        feed = {v.name: np.zeros([d if isinstance(d, int) else 1 for d in (v.shape or [1])],
                                 dtype=v.dtype or np.float32) for v in model.inputs}
    fixed = model.inputs[0].shape[0] if model.inputs and model.inputs[0].shape else None
    if isinstance(fixed, int) and fixed > 0 and fixed != args.latency_batch:
        args.latency_batch = fixed  # the model's batch is fixed: time it at that batch
    batch = {k: np.concatenate([v] * -(-args.latency_batch // len(v)))[: args.latency_batch] for k, v in feed.items()}
    # the latency is measured before any repair: --reconstruct / --recover change weights, never the graph
    lat, lat_ratio = median_ratios(timed_sessions([model.proto, pruned.proto], args.device, args.threads), batch,
                                   max(args.repeats, 3))
    fallback = None
    if lat_ratio[1] > SLOWER and _default_plan(args, plan):
        plan, pruned, lat, lat_ratio, fallback = _fallback(args, model, plan, pruned, lat, lat_ratio, batch)
    repair = _reconstruct(args, model, pruned, plan, data) if args.reconstruct else None
    if repair is not None:
        pruned = repair.pop("model")
    recovery = _recover(args, model, pruned, data) if args.recover else None
    if recovery is not None:
        pruned = recovery.pop("model")
    before, after = model_stats(model, batch, latency=lat[0]), model_stats(pruned, batch, latency=lat[1])
    result: dict[str, Any] = {"out": str(out), "plan": plan.to_dict(), "before": vars(before), "after": vars(after),
                              "ratio": {**before.ratio(after), "latency": lat_ratio[1]},
                              "latency_batch": args.latency_batch, "device": args.device, "threads": args.threads,
                              "load_average": load_average()}
    if fallback is not None:
        result["fallback"] = fallback
    if lat_ratio[1] > SLOWER:
        result["slower_than_input"] = True
        warn(NAME, f"the pruned model is measured SLOWER than its input ({lat_ratio[1]:.2f}x latency on "
             f"{args.device}, batch {args.latency_batch}); plan with --latency, or --round-to "
             f"{kernel_block(args.device)}")
    if fid_data is not None:
        classes = [int(k) for t in (sl.targets if sl is not None else []) if t.startswith("class:")
                   for k in t.split(":", 1)[1].split(",") if k.strip().lstrip("-").isdigit()]
        result.update(_fidelity_rows(model, pruned, fid_data, classes))
    outs.defer(out, pruned.save)
    outs.defer(plan_path, plan.save)
    if recovery is not None:
        from onnxslice.rewrite.fidelity import fidelity

        unrecovered = recovery.pop("unrecovered")
        result["recovery"] = {**recovery, "fidelity_before_recovery": fidelity(unrecovered, model, fid_data).to_dict()}
    if repair is not None:
        from onnxslice.rewrite.fidelity import fidelity

        unrepaired = repair.pop("unrepaired")
        result["reconstruct"] = {**repair, "fidelity_before_reconstruct":
                                 fidelity(unrepaired, model, fid_data).to_dict() if fid_data is not None else None}
    outs.defer(report, lambda p: save_json(p, result))
    outs.commit()
    if args.json:
        emit_json(result)
        return 0
    print(_table(result, src.name, plan))
    left = plan.meta.get("left_alone") or {}
    if left:
        print("\nleft alone:")
        for layer, why in left.items():
            print(f"  {layer}: {why}")
    print(f"\nsaved {out}")
    return 0


def _table(result: dict[str, Any], name: str, plan: Any) -> str:
    before, after = result["before"], result["after"]
    rows: list[dict[str, Any]] = [
        {"measure": "parameters", "before": before["params"], "after": after["params"]},
        {"measure": "FLOPs / sample", "before": 2 * before["macs"], "after": 2 * after["macs"]},
        {"measure": "bytes", "before": before["bytes"], "after": after["bytes"]},
        {"measure": f"latency ms (median, batch {result['latency_batch']})", "before": round(before["latency_ms"], 4),
         "after": round(after["latency_ms"], 4)},
    ]
    for key, label in (("fidelity", ""), ("target_fidelity", " (target classes)")):
        fid = result.get(key)
        if fid is None:
            continue
        if fid["accuracy"] is not None:
            rows.append({"measure": f"accuracy{label}", "before": round(fid["ref_accuracy"], 4),
                         "after": round(fid["accuracy"], 4)})
        if fid["top1_agreement"] is not None:
            rows.append({"measure": f"top-1 agreement with original{label}", "before": 1.0,
                         "after": round(fid["top1_agreement"], 4)})
    rep = result.get("reconstruct")
    if rep is not None and rep["fidelity_before_reconstruct"] and \
            rep["fidelity_before_reconstruct"]["top1_agreement"] is not None:
        rows.append({"measure": f"top-1 agreement before --reconstruct {rep['method']}", "before": 1.0,
                     "after": round(rep["fidelity_before_reconstruct"]["top1_agreement"], 4)})
    rec = result.get("recovery")
    if rec is not None and rec["fidelity_before_recovery"]["top1_agreement"] is not None:
        rows.append({"measure": f"top-1 agreement before --recover {rec['steps']}", "before": 1.0,
                     "after": round(rec["fidelity_before_recovery"]["top1_agreement"], 4)})
    for r in rows:
        b, a = r["before"], r["after"]
        r["after/before"] = round(a / b, 4) if b else ""
    return format_table(rows, title=f"prune {name} ({plan.budget}, {plan.meta.get('mode', 'structured')})")
