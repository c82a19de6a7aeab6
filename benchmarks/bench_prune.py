"""Pruning benchmark: budgets side by side, NNSlicer class-focused pruning vs magnitude, latency vs FLOPs.

Run ``python benchmarks/bench_prune.py [--quick] [--model NAME=PATH ...]``. Without ``--model`` the
reference models come from ``models.zoo`` (lenet5, resnet8_mnist, efficientnet_lite0). No fine-tuning.

1. **Budgets** at global ratios 0.1/0.2/0.3/0.5 (planned ratio = fraction of prunable parameters):
   SAfER sensitivity budget vs uniform L1 (Torch-Pruning's default) vs uniform random channels.
   MNIST models: accuracy on ``builtin:mnist?split=test``; EfficientNet-Lite0: top-1 agreement with the
   original on ``builtin:samples-imagenet`` and scikit-learn's ``load_sample_images``. The layer scores
   come from ``onnxslice.sensitivity(model, data, "wgrad", "linf")`` when this build has it, else from
   the data-free ``weight`` criterion (|w| reduced by linf, computed here) and are labelled so.
2. **NNSlicer class-focused pruning** (paper Figure 3): per-layer synapse ratios 0.2-0.55 on target-class
   subsets of MNIST, unstructured, from a Slice's CONTRIB vs weight magnitude; target-class accuracy
   (argmax over all classes and over the target classes). Needs ``onnxslice.slice``.
3. **Latency vs FLOPs**: onnxruntime optimized session, batch 1 and 32, median of repeats, before and after.

Results go to ``benchmarks/results/prune.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnxslice as osl  # noqa: E402
from onnxslice.flops import count_macs  # noqa: E402
from onnxslice.rewrite import plan_pruning, prune  # noqa: E402
from onnxslice.rewrite.measure import latency_ms, predictions  # noqa: E402
from onnxslice.sensitivity import LayerScores  # noqa: E402


def natural_images(size: int = 224) -> np.ndarray:
    """The built-in ImageNet samples plus scikit-learn's sample photos (random 224 crops), [0,1] NCHW."""
    xs = [osl.load_data("builtin:samples-imagenet").x.astype(np.float32)]
    try:
        from PIL import Image
        from sklearn.datasets import load_sample_images

        rng = np.random.default_rng(0)
        for img in load_sample_images().images:
            for _ in range(10):
                h, w = img.shape[:2]
                s = int(rng.integers(224, min(h, w)))
                y0, x0 = int(rng.integers(0, h - s)), int(rng.integers(0, w - s))
                crop = Image.fromarray(img[y0 : y0 + s, x0 : x0 + s]).resize((size, size))
                xs.append((np.asarray(crop, np.float32) / 255.0).transpose(2, 0, 1)[None])
    except ImportError:
        pass
    x = np.concatenate(xs)
    if x.max() > 1.5:
        x = x / 255.0
    return x.astype(np.float32)


def weight_scores(model: osl.Model) -> LayerScores:
    """The data-free SAfER ``weight`` criterion with the linf reduction: max |w| per layer."""
    return LayerScores({x.name: float(np.abs(model.initializer(x.weight)).max()) for x in model.layers},
                       "weight", "linf", {"computed_by": "bench_prune (data-free)"})


def layer_scores(model: osl.Model, x: np.ndarray) -> LayerScores:
    """wgrad/linf from onnxslice.sensitivity when available, else the labelled weight criterion."""
    import onnxslice.sensitivity as sens

    if hasattr(sens, "sensitivity"):
        return sens.sensitivity(model, x[:64], "wgrad", "linf")
    return weight_scores(model)


def budgets(model: osl.Model, x: np.ndarray, labels: np.ndarray | None, ratios: list[float],
            repeats: int) -> list[dict[str, Any]]:
    """Accuracy (or agreement) per budget and ratio, with MACs and latency of each pruned model."""
    feed = {model.input_names[0]: x}
    ref = predictions(model, feed)
    scores = layer_scores(model, x)
    one = {model.input_names[0]: x[:1]}
    base_lat = latency_ms(model, one, repeats)
    base_macs = count_macs(model).total
    rows = []
    for ratio in ratios:
        for name, kw in (("sensitivity", {"budget": "sensitivity", "scores": scores}),
                         ("uniform-l1", {"budget": "uniform"}),
                         ("random", {"budget": "uniform", "channel_score": "random"})):
            t0 = time.perf_counter()
            plan = plan_pruning(model, ratio, **kw)
            pruned = prune(model, plan)
            pred = predictions(pruned, feed)
            row = {
                "ratio": ratio, "budget": name, "criterion": scores.criterion if name == "sensitivity" else "",
                "achieved": round(plan.meta["achieved_ratio"], 4),
                "params": pruned.num_params, "agreement": float((pred == ref).mean()),
                "mac_ratio": count_macs(pruned).total / base_macs,
                "latency_ratio": latency_ms(pruned, one, repeats) / base_lat,
                "seconds": round(time.perf_counter() - t0, 2),
            }
            if labels is not None:
                row["accuracy"] = float((pred == labels).mean())
            rows.append(row)
            print("   ", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    return rows


def class_focused(model: osl.Model, ds: Any, targets: list[int], ratios: list[float], n: int) -> list[dict[str, Any]]:
    """NNSlicer class-focused pruning vs magnitude on the target classes (unstructured, per-layer ratio r)."""
    if not hasattr(osl, "slice") or not hasattr(osl, "profile"):
        print("    skipped: this build has no onnxslice.slice (branch 'slice' not merged)")
        return []
    keep = np.isin(ds.labels, targets)
    tx, ty = ds.x[keep][:n], ds.labels[keep][:n]
    prof = osl.profile(model, ds, 256)
    sl = osl.slice(model, prof, tx, targets=ty)  # CONTRIB per synapse, criterion (I_T, O_T)
    feed = {model.input_names[0]: tx}
    rows = []
    for r in ratios:
        for name, kw in (("nnslicer", {"budget": "slice", "slice": sl}), ("magnitude", {"budget": "uniform"})):
            pruned = prune(model, plan_pruning(model, r, mode="unstructured", **kw))
            logits = osl.record(pruned, feed, values=pruned.output_names).values[pruned.output_names[0]]
            rows.append({"ratio": r, "method": name,
                         "acc_all": float((logits.argmax(1) == ty).mean()),
                         "acc_targets": float((np.asarray(targets)[logits[:, targets].argmax(1)] == ty).mean())})
            print("   ", rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="LeNet-5 only, ratio 0.3, few samples and repeats")
    ap.add_argument("--model", action="append", default=[], help="NAME=PATH (default: models.zoo)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "prune.json"))
    args = ap.parse_args()
    ratios = [0.3] if args.quick else [0.1, 0.2, 0.3, 0.5]
    repeats = 5 if args.quick else 30
    if args.model:
        paths = dict(m.split("=", 1) for m in args.model)
    else:
        from models import zoo

        names = ["lenet5"] if args.quick else ["lenet5", "resnet8_mnist", "efficientnet_lite0"]
        paths = {n: str(zoo.path(n)) for n in names}
    mnist = osl.load_data("builtin:mnist?split=test")
    results: dict[str, Any] = {"machine_note": "shared 2-core machine; timings are noisy", "budgets": {},
                               "class_focused": {}}
    for name, path in paths.items():
        model = osl.load(path)
        print(f"== {name}: {model}", flush=True)
        if "efficientnet" in name:
            x, labels = natural_images(), None
            x = x[:12] if args.quick else x
        else:
            n = 300 if args.quick else 1000
            x, labels = mnist.bind(model)[model.input_names[0]][:n], mnist.labels[:n]
        results["budgets"][name] = budgets(model, x, labels, ratios, repeats)
        if labels is not None:
            fig3 = [0.2, 0.55] if args.quick else [0.2, 0.3, 0.4, 0.55]
            results["class_focused"][name] = class_focused(model, mnist, [0, 1], fig3, 100 if args.quick else 500)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
