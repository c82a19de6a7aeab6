"""Pruning benchmark: budgets side by side, NNSlicer class-focused pruning vs magnitude, latency vs FLOPs.

Run ``python benchmarks/bench_prune.py [--quick] [--model NAME ...]`` from the repository root. The
models come from ``models.zoo`` (lenet5, resnet8_mnist, efficientnet_lite0). No fine-tuning anywhere.

1. **Budgets** at global ratios 0.1/0.2/0.3/0.5 (planned ratio = fraction of prunable parameters):
   SAfER sensitivity budget (``wgrad`` reduced by ``linf``, from ``onnxslice.sensitivity``) vs uniform
   L1 (Torch-Pruning's default) vs uniform random channels (median over seeds). MNIST models: accuracy
   and top-1 agreement on ``builtin:mnist?split=test`` (calibration: 256 samples of ``split=train``).
   EfficientNet-Lite0: top-1 agreement with the original on ``builtin:samples-imagenet`` plus random
   224 crops of scikit-learn's ``load_sample_images`` photos, and accuracy on the 20 labelled ImageNet
   samples (calibration: other crops of the same photos).
2. **NNSlicer class-focused pruning** (paper Figure 3): per-layer synapse ratios 0.2-0.55, unstructured,
   from the Slice of the criterion (I_T, O_T) (target-class samples of ``split=train``, target output
   neurons) vs weight magnitude; target-class accuracy on ``split=test`` (argmax over all classes and
   over the target classes), for several target-class subsets.
3. **Latency vs FLOPs**: for the sensitivity and uniform-L1 plans, plus uniform L1 with ``round_to=16``
   (every group keeps a multiple of 16 channels: onnxruntime's NCHWc Conv kernels on AVX-512 pad the
   output channels to blocks of 16, so other counts save less time than FLOPs). Timing: onnxruntime
   CPU, graph optimizations on, 1 thread, batch 1 and 32; the original and every pruned model are
   timed round-robin (each repeat runs all of them in turn) and the median per model is reported, so
   load on the shared machine hits them alike.

Results go to ``benchmarks/results/prune.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnxslice as osl  # noqa: E402
from models import zoo  # noqa: E402
from onnxslice.console import format_table  # noqa: E402
from onnxslice.flops import count_macs  # noqa: E402
from onnxslice.plans import plan_pruning  # noqa: E402
from onnxslice.plans.prune_plan import class_slice, sensitivity_scores  # noqa: E402
from onnxslice.rewrite import prune  # noqa: E402
from onnxslice.rewrite.fidelity import compare_outputs, run_outputs  # noqa: E402
from onnxslice.rewrite.measure import paired_latency_ms  # noqa: E402

MNIST_MODELS = ("lenet5", "resnet8_mnist")
TARGET_SUBSETS = ([0, 1], [3, 8], [4, 9])


def sample_crops(n: int, seed: int, size: int = 224) -> np.ndarray:
    """``n`` random square crops of scikit-learn's two sample photos, resized to ``size``, [0,1] NCHW."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    images = load_sample_images().images
    out = []
    for k in range(n):
        img = images[k % len(images)]
        h, w = img.shape[:2]
        s = int(rng.integers(size, min(h, w)))
        y0, x0 = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        crop = Image.fromarray(img[y0 : y0 + s, x0 : x0 + s]).resize((size, size), Image.BILINEAR)
        out.append((np.asarray(crop, np.float32) / 255.0).transpose(2, 0, 1))
    return np.stack(out)


def eval_sets(name: str, model: osl.Model, quick: bool) -> tuple[Any, Any, np.ndarray | None, np.ndarray]:
    """(calibration data, evaluation inputs, labels or None, which evaluation samples the labels cover)."""
    if name in MNIST_MODELS or zoo.get(name).data == "builtin:mnist?split=test":
        calib = osl.load_data("builtin:mnist?split=train").subset(slice(0, 64 if quick else 256))
        test = osl.load_data("builtin:mnist?split=test").subset(slice(0, 300 if quick else 1000))
        assert test.labels is not None
        return calib, test.bind(model)[model.input_names[0]], test.labels, np.ones(len(test), bool)
    imnet = osl.load_data("builtin:samples-imagenet")
    crops = sample_crops(4 if quick else 20, seed=0)
    x = np.concatenate([imnet.x.astype(np.float32), crops])
    labelled = np.arange(len(x)) < len(imnet)
    assert imnet.labels is not None
    labels = np.concatenate([imnet.labels, np.full(len(crops), -1)])
    return sample_crops(4 if quick else 16, seed=1), x, labels, labelled


def budgets(name: str, model: osl.Model, ratios: list[float], seeds: int, quick: bool) -> dict[str, Any]:
    """Accuracy / agreement per budget and ratio; the pruned models of the L1 and sensitivity budgets."""
    calib, x, labels, labelled = eval_sets(name, model, quick)
    t0 = time.perf_counter()
    scores = sensitivity_scores(model, calib, "wgrad", "linf", samples=len(calib), batch_size=16)
    score_s = time.perf_counter() - t0
    print(f"   wgrad/linf on {len(calib)} samples: {score_s:.1f} s", flush=True)
    ref = run_outputs(model, x)
    ref_fid = compare_outputs([r[labelled] for r in ref], [r[labelled] for r in ref], labels[labelled])
    base_macs, base_params = count_macs(model).total, model.num_params
    rows: list[dict[str, Any]] = []
    kept: dict[str, osl.Model] = {}
    for ratio in ratios:
        variants: list[tuple[str, dict[str, Any]]] = [("sensitivity(wgrad)", {"budget": "sensitivity",
                                                                            "scores": scores}),
                                                       ("uniform-l1", {"budget": "uniform"})]
        variants.append(("uniform-l1/round16", {"budget": "uniform", "round_to": 16}))
        variants += [(f"random#{s}", {"budget": "uniform", "channel_score": "random", "seed": s}) for s in range(seeds)]
        for label, kw in variants:
            plan = plan_pruning(model, ratio, **kw)
            pruned = prune(model, plan, seed=kw.get("seed", 0))
            out = run_outputs(pruned, x)
            agree = compare_outputs(ref, out)
            fid = compare_outputs([r[labelled] for r in ref], [o[labelled] for o in out], labels[labelled])
            rows.append({
                "model": name, "ratio": ratio, "budget": label,
                "achieved": round(plan.meta["achieved_ratio"], 4),
                "params": round(pruned.num_params / base_params, 4),
                "flops": round(count_macs(pruned).total / base_macs, 4),
                "accuracy": fid.accuracy, "agreement": agree.top1_agreement, "kl": agree.kl,
            })
            if not label.startswith("random"):
                kept[f"{label}@{ratio}"] = pruned
            print("   ", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in rows[-1].items()}, flush=True)
    return {"rows": summarise_random(rows), "raw": rows, "kept": kept, "x": x,
            "reference_accuracy": ref_fid.accuracy, "eval_samples": len(x), "labelled_samples": int(labelled.sum()),
            "calibration_samples": len(calib), "wgrad_seconds": score_s}


def summarise_random(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Random seeds collapsed into one row (medians; min-max of accuracy/agreement alongside)."""
    out: list[dict[str, Any]] = []
    rand: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in rows:
        if r["budget"].startswith("random#"):
            rand.setdefault((r["model"], r["ratio"]), []).append(r)
        else:
            out.append(dict(r))
    for (model, ratio), rs in rand.items():
        row: dict[str, Any] = {"model": model, "ratio": ratio, "budget": f"random (median of {len(rs)})"}
        for k in ("achieved", "params", "flops", "accuracy", "agreement", "kl"):
            vals = [r[k] for r in rs if r[k] is not None]
            row[k] = float(np.median(vals)) if vals else None
        for k in ("accuracy", "agreement"):
            vals = [r[k] for r in rs if r[k] is not None]
            row[f"{k}_range"] = f"{min(vals):.3f}-{max(vals):.3f}" if vals else None
        out.append(row)
    return sorted(out, key=lambda r: (r["ratio"], r["budget"]))


def runtime_layout(model: osl.Model) -> dict[str, int]:
    """Node counts of onnxruntime's optimized CPU graph: Convs that stay in its NCHWc layout, other Convs, reorders."""
    import tempfile

    import onnx
    import onnxruntime as ort

    from onnxslice.record import runtime_proto

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        so.log_severity_level = 3
        ort.InferenceSession(runtime_proto(model.proto).SerializeToString(), so, providers=["CPUExecutionProvider"])
        nodes = onnx.load(so.optimized_model_filepath).graph.node
    conv = ("Conv", "FusedConv")
    return {"nchwc_conv": sum(n.domain == "com.microsoft.nchwc" and n.op_type == "Conv" for n in nodes),
            "plain_conv": sum(n.domain != "com.microsoft.nchwc" and n.op_type in conv for n in nodes),
            "reorders": sum(n.op_type.startswith("Reorder") for n in nodes)}


def latency(name: str, model: osl.Model, kept: dict[str, osl.Model], x: np.ndarray, batches: list[int],
            repeats: int) -> list[dict[str, Any]]:
    """Round-robin medians of the original and every kept pruned model at each batch size."""
    names = ["original", *kept]
    models = [model, *kept.values()]
    macs = [count_macs(m).total for m in models]
    layouts = [runtime_layout(m) for m in models]
    rows = []
    for b in batches:
        xb = np.concatenate([x] * -(-b // len(x)))[:b]
        reps = repeats if b == 1 else max(5, repeats // 3)
        ms = paired_latency_ms(models, {model.input_names[0]: xb}, reps, warmup=2)
        for n, m, t, lay in zip(names, macs, ms, layouts, strict=True):
            rows.append({"model": name, "variant": n, "batch": b, "latency_ms": round(t, 4),
                         "latency_ratio": round(t / ms[0], 4), "flops_ratio": round(m / macs[0], 4),
                         "repeats": reps, **lay})
        print(format_table([r for r in rows if r["batch"] == b], title=f"{name}: latency, batch {b}"), flush=True)
    return rows


def class_focused(name: str, model: osl.Model, subsets: list[list[int]], ratios: list[float], n_slice: int,
                  ) -> list[dict[str, Any]]:
    """NNSlicer class-focused pruning vs magnitude (unstructured, every layer loses the fraction r)."""
    train = osl.load_data("builtin:mnist?split=train")
    test = osl.load_data("builtin:mnist?split=test")
    assert test.labels is not None
    rows = []
    for targets in subsets:
        t0 = time.perf_counter()
        sl = class_slice(model, train, targets, samples=n_slice, profile_samples=1000)
        slice_s = time.perf_counter() - t0
        keep = np.flatnonzero(np.isin(test.labels, targets))
        sub = test.subset(keep)
        assert sub.labels is not None
        ref = run_outputs(model, sub)[0]
        base = {"all": float((ref.argmax(1) == sub.labels).mean()),
                "targets": float((np.asarray(targets)[ref[:, targets].argmax(1)] == sub.labels).mean())}
        for r in ratios:
            for method, kw in (("nnslicer", {"budget": "slice", "slice": sl}), ("magnitude", {"budget": "uniform"})):
                pruned = prune(model, plan_pruning(model, r, mode="unstructured", **kw))
                y = run_outputs(pruned, sub)[0]
                rows.append({"model": name, "targets": targets, "ratio": r, "method": method,
                             "acc_all": float((y.argmax(1) == sub.labels).mean()),
                             "acc_targets": float((np.asarray(targets)[y[:, targets].argmax(1)] == sub.labels).mean()),
                             "original_acc_all": base["all"], "original_acc_targets": base["targets"],
                             "slice_samples": sl.count, "test_samples": len(sub), "slice_seconds": round(slice_s, 1)})
                print("   ", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in rows[-1].items()}, flush=True)
    return rows


def class_focused_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean over target subsets per model, ratio and method."""
    keys = sorted({(r["model"], r["ratio"], r["method"]) for r in rows})
    out = []
    for model, ratio, method in keys:
        rs = [r for r in rows if (r["model"], r["ratio"], r["method"]) == (model, ratio, method)]
        out.append({"model": model, "ratio": ratio, "method": method, "subsets": len(rs),
                    "acc_all": round(float(np.mean([r["acc_all"] for r in rs])), 4),
                    "acc_targets": round(float(np.mean([r["acc_targets"] for r in rs])), 4),
                    "original_acc_all": round(float(np.mean([r["original_acc_all"] for r in rs])), 4)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="LeNet-5 only, ratio 0.3, few samples and repeats")
    ap.add_argument("--model", action="append", default=[], help="zoo model names (default: the three above)")
    ap.add_argument("--repeats", type=int, default=30, help="latency repeats at batch 1 (a third at batch 32)")
    ap.add_argument("--skip-class-focused", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "prune.json"))
    args = ap.parse_args()
    ratios = [0.3] if args.quick else [0.1, 0.2, 0.3, 0.5]
    repeats = 5 if args.quick else args.repeats
    names = args.model or (["lenet5"] if args.quick else ["lenet5", "resnet8_mnist", "efficientnet_lite0"])
    load0 = os.getloadavg()
    t_start = time.perf_counter()
    results: dict[str, Any] = {"command": "python " + " ".join(["benchmarks/bench_prune.py", *sys.argv[1:]]),
                               "machine": {"cpus": os.cpu_count(), "loadavg_start": load0},
                               "budgets": [], "budgets_raw": [], "latency": [], "class_focused": [], "models": {}}
    for name in names:
        model = osl.load(zoo.path(name))
        print(f"== {name}: {model}", flush=True)
        res = budgets(name, model, ratios, 1 if args.quick else 3, args.quick)
        results["budgets"] += res["rows"]
        results["budgets_raw"] += res["raw"]
        results["models"][name] = {k: res[k] for k in ("reference_accuracy", "eval_samples", "labelled_samples",
                                                       "calibration_samples", "wgrad_seconds")}
        results["models"][name].update(params=model.num_params, macs=count_macs(model).total)
        print(format_table(res["rows"], title=f"{name}: budgets (no fine-tuning)"), flush=True)
        results["latency"] += latency(name, model, res["kept"], res["x"], [1, 32], repeats)
        if name in MNIST_MODELS and not args.skip_class_focused:
            subsets = [list(TARGET_SUBSETS[0])] if args.quick else [list(t) for t in TARGET_SUBSETS]
            fig3 = [0.2, 0.55] if args.quick else [0.2, 0.3, 0.4, 0.55]
            n_slice = 50 if args.quick else (200 if name == "lenet5" else 100)
            results["class_focused"] += class_focused(name, model, subsets, fig3, n_slice)
    results["class_focused_summary"] = class_focused_summary(results["class_focused"])
    if results["class_focused_summary"]:
        print(format_table(results["class_focused_summary"], title="class-focused pruning (mean over target subsets)"))
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["seconds"] = round(time.perf_counter() - t_start, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2, default=float))
    tmp.replace(out)
    print(f"saved {out} ({results['seconds']} s; load average {load0} -> {results['machine']['loadavg_end']})")


if __name__ == "__main__":
    main()
