"""``onnxslice prune MODEL --ratio R --budget B --out P.onnx``: plan and apply pruning, report before/after."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from onnxslice.commands import emit_json
from onnxslice.errors import OnnxSliceError, PlanError
from onnxslice.model import load
from onnxslice.table import format_table

NAME = "prune"
HELP = "prune a model (structured: really removes channels; unstructured: masks) and report size/speed/fidelity"
ORDER = 60


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="path to an .onnx file")
    p.add_argument("--out", "-o", required=True, help="where to write the pruned model (never MODEL itself)")
    p.add_argument("--ratio", type=float, default=None, help="planned ratio in [0, 1) (fraction of prunable params)")
    p.add_argument("--budget", choices=("uniform", "sensitivity", "slice"), default="uniform")
    p.add_argument("--mode", choices=("structured", "unstructured"), default="structured")
    p.add_argument("--criterion", default="weight",
                   help="sensitivity criterion for --budget sensitivity (needs onnxslice.sensitivity; 'weight' "
                        "is data-free)")
    p.add_argument("--reduction", default="linf", help="reduction of the sensitivity criterion")
    p.add_argument("--scores", help="LayerScores JSON to use for --budget sensitivity instead of computing them")
    p.add_argument("--channel-score", choices=("l1", "l2", "random"), default="l1")
    p.add_argument("--plan", help="apply this plan JSON instead of planning (writes nothing else)")
    p.add_argument("--save-plan", help="also write the plan as JSON here")
    p.add_argument("--data", "-d", help="data for fidelity (agreement with the original) and the criterion")
    p.add_argument("--samples", type=int, default=256, help="samples of --data used (default 256)")
    p.add_argument("--repeats", type=int, default=20, help="latency repeats (median)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of tables")


def _scores(args: argparse.Namespace, model: Any, data: Any) -> Any:
    from onnxslice.sensitivity import LayerScores

    if args.scores:
        return LayerScores.load(args.scores)
    import onnxslice.sensitivity as sens

    if not hasattr(sens, "sensitivity"):
        raise OnnxSliceError("this build has no onnxslice.sensitivity(); pass --scores FILE (LayerScores JSON)")
    if data is None and args.criterion != "weight":
        raise OnnxSliceError(f"criterion '{args.criterion}' needs --data")
    return sens.sensitivity(model, data, args.criterion, args.reduction)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from onnxslice.data import load_data
    from onnxslice.rewrite import plan_pruning, prune
    from onnxslice.rewrite.measure import model_stats, predictions
    from onnxslice.rewrite.prune_plan import PrunePlan

    src = Path(args.model)
    if Path(args.out).resolve() == src.resolve():
        raise OnnxSliceError(f"refusing to overwrite the input model '{src}'; choose another --out")
    model = load(src)
    data = load_data(args.data).subset(slice(0, args.samples)) if args.data else None
    if args.plan:
        plan = PrunePlan.load(args.plan)
    else:
        if args.ratio is None:
            raise PlanError("give --ratio (or --plan)")
        if args.budget == "slice":
            raise OnnxSliceError("--budget slice needs a Slice; use the Python API (plan_pruning(..., slice=...))")
        scores = _scores(args, model, data) if args.budget == "sensitivity" else None
        plan = plan_pruning(model, args.ratio, args.budget, scores=scores, channel_score=args.channel_score,
                            mode=args.mode)
    pruned = prune(model, plan)
    out = pruned.save(args.out)
    if args.save_plan:
        plan.save(args.save_plan)
    feed = data.bind(model) if data is not None else {
        v.name: np.zeros([1 if not isinstance(d, int) else d for d in (v.shape or [1])], dtype=v.dtype or np.float32)
        for v in model.inputs
    }
    one = {k: v[:1] for k, v in feed.items()}
    before, after = model_stats(model, one, args.repeats), model_stats(pruned, one, args.repeats)
    result: dict[str, Any] = {"out": str(out), "plan": plan.to_dict(), "before": vars(before), "after": vars(after),
                              "ratio": before.ratio(after)}
    if data is not None:
        p0, p1 = predictions(model, feed), predictions(pruned, feed)
        result["agreement"] = float((p0 == p1).mean())
        if data.labels is not None:
            result["accuracy_before"] = float((p0 == data.labels).mean())
            result["accuracy_after"] = float((p1 == data.labels).mean())
    if args.json:
        emit_json(result)
        return 0
    rows: list[dict[str, Any]] = [
        {"measure": "parameters", "before": before.params, "after": after.params},
        {"measure": "MACs / sample", "before": before.macs, "after": after.macs},
        {"measure": "bytes", "before": before.bytes, "after": after.bytes},
        {"measure": "latency ms (median, batch 1)", "before": round(before.latency_ms, 4),
         "after": round(after.latency_ms, 4)},
    ]
    if "accuracy_before" in result:
        rows.append({"measure": "accuracy", "before": round(result["accuracy_before"], 4),
                     "after": round(result["accuracy_after"], 4)})
    if "agreement" in result:
        rows.append({"measure": "top-1 agreement with original", "before": 1.0, "after": round(result["agreement"], 4)})
    for r in rows:
        b, a = r["before"], r["after"]
        r["after/before"] = round(a / b, 4) if b else ""
    print(format_table(rows, title=f"prune {src.name} ({plan.budget}, {plan.meta.get('mode', 'structured')})"))
    left = plan.meta.get("left_alone") or {}
    if left:
        print("\nleft alone:")
        for layer, why in left.items():
            print(f"  {layer}: {why}")
    print(f"\nsaved {out}")
    return 0
