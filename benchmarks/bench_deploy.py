"""Deployment benchmark: pruned and quantized models side by side, with latencies measured in one run.

Run ``python benchmarks/bench_deploy.py [--full] [--models resnet8_mnist,efficientnet_lite0]`` from the
repository root (``--quick`` is the default: fewer targets, samples and repeats).

Per model, two tables (every variant of a table is timed in ONE round-robin session set with the
original: each repeat runs all of them in turn; latency = median per-repeat ratio to the original,
onnxruntime CPU, graph optimizations on, 1 intra-op thread, batch 1):

**Pruning** (no fine-tuning): uniform L1 at 30% of prunable parameters with the old default (no
rounding) and the new default (Conv groups rounded to the CPU's kernel block), the SAfER sensitivity
budget (wgrad/linf) at 30% with the new default, and at each latency target T: the latency-aware
knapsack (``prune_to_latency``) with measured damage (``damage_table``) and with data-free L1
importance, the uniform plan (one kept fraction for every group, kernel-aligned counts from the same
latency table, the largest fraction predicted within T), and random channels at the uniform plan's
counts; the latency-aware knapsack also at the uniform plan's predicted latency (equal latency).
MNIST models: the new-default and equal-latency plans again after ``--recover`` steps of distillation
from the original (``onnxslice.train.finetune``, Adam 1e-3, batch 32, on 2,000 unlabelled training
digits disjoint from the evaluation). The rival ``onnxsim``'s ``apply_structured_pruning`` (L2, 30%)
where it runs.

**Quantization** (also on ``mnist_encoder``, a 2-layer transformer encoder over MNIST rows trained
by ``benchmarks/_encoder.py`` and cached; ``bench_deploy_quant.py`` runs this table alone on all three
models): float32; ``onnxruntime.quantization.quantize_static`` with every setting at its default (uniform
int8); ``qdq`` uniform (ours: pre-processing, per-channel, uint8 activations) and ``dynamic`` uniform
(``quantize_dynamic``); their sensitivity plans (the fewest layers, most sensitive first by the measured
int8 oracle, kept float until top-1 agreement on the selection samples reaches 0.99, and the strict
goal 1.0; dynamic plans only where MatMul/Gemm layers are the majority); a random plan with as many float
layers; weight-only int8; ``fp16``; MatMulNBits where the model has MatMul weights; the rival
``onnxsim``'s ``apply_mixed_precision_quantization`` where it runs. The quantization data come from
``quant_datasets`` (calibration, selection and evaluation disjoint; EfficientNet-Lite0 on photos of
``benchmarks/_images.py``), with a 95% Wilson interval on the agreement.

Fidelity on data disjoint from the calibration data: top-1 agreement with the original, KL, accuracy
(MNIST: 1,000 / 300 test digits; EfficientNet-Lite0: the 20 ``builtin:samples-imagenet`` images plus
random crops of scikit-learn's sample photos; accuracy on the 20 labelled ones). Results:
``benchmarks/results/deploy.json`` and ``deploy.png`` (latency vs top-1 agreement).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import onnx  # noqa: E402

import onnxslice as osl  # noqa: E402
from onnxslice.console import format_table  # noqa: E402
from onnxslice.data import Dataset  # noqa: E402
from onnxslice.latency import latency_table, load_average, median_ratios, timed_sessions  # noqa: E402
from onnxslice.model import Model  # noqa: E402
from onnxslice.rewrite import formats, plan_pruning, prune  # noqa: E402
from onnxslice.rewrite.channel_scores import group_scores, select_channels  # noqa: E402
from onnxslice.rewrite.fidelity import compare_outputs, run_outputs  # noqa: E402
from onnxslice.rewrite.groups import discover_groups  # noqa: E402
from onnxslice.rewrite.latency_plan import damage_table, prune_to_latency  # noqa: E402
from onnxslice.rewrite.prune_plan import PrunePlan, sensitivity_scores  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def sample_crops(n: int, seed: int, size: int = 224) -> np.ndarray:
    """``n`` random ``size`` crops of scikit-learn's two sample photos, [0, 1] NCHW."""
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    imgs = [np.asarray(im, dtype=np.float32) / 255.0 for im in load_sample_images().images]
    out = []
    for i in range(n):
        im = imgs[i % len(imgs)]
        y, x = rng.integers(0, im.shape[0] - size), rng.integers(0, im.shape[1] - size)
        out.append(im[y : y + size, x : x + size].transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


def datasets(name: str, quick: bool) -> tuple[Dataset, Dataset]:
    """(calibration, evaluation): disjoint."""
    if name == "efficientnet_lite0":
        imnet = osl.load_data("builtin:samples-imagenet")
        crops = sample_crops(8 if quick else 20, seed=7)
        x = np.concatenate([imnet.x.astype(np.float32), crops])
        labels = np.concatenate([np.asarray(imnet.labels), np.full(len(crops), -1)])
        return (Dataset({"x": sample_crops(16, seed=1)}, None, "16 sklearn crops"),
                Dataset({"x": x}, labels, f"samples-imagenet (20) + {len(crops)} other crops"))
    train = osl.load_data("builtin:mnist?split=train")
    test = osl.load_data("builtin:mnist?split=test")
    return train.subset(slice(0, 64)), test.subset(slice(0, 300 if quick else 1000))


def fid_row(ref: list[np.ndarray], m: Model, ev: Dataset, out: list[np.ndarray] | None = None) -> dict[str, Any]:
    out = run_outputs(m, ev) if out is None else out
    agree = compare_outputs(ref, out)
    labels = ev.labels
    acc = None
    if labels is not None:
        keep = labels >= 0
        acc = compare_outputs([r[keep] for r in ref], [o[keep] for o in out], labels[keep]).accuracy
    return {"agreement": agree.top1_agreement, "kl": agree.kl, "accuracy": acc}


def timed(model: Model, variants: dict[str, Model], batch: dict[str, np.ndarray], repeats: int) -> dict[str, float]:
    protos = [model.proto, *[v.proto for v in variants.values()]]
    ms, ratios = median_ratios(timed_sessions(protos, "cpu", 1), batch, repeats)
    out = {"original": 1.0, "original_ms": ms[0]}
    out.update({k: r for k, r in zip(variants, ratios[1:], strict=True)})
    return out


def uniform_counts(table: Any, target: float) -> tuple[dict[str, int], float]:
    """One kept fraction for all groups (table counts on the block): the largest predicted within target."""
    fracs = sorted({k / table.sizes[g] for g, row in table.groups.items() for k in row
                    if k % table.block == 0 or k == table.sizes[g]}, reverse=True)
    kept: dict[str, int] = {}
    for f in fracs:
        kept = {}
        for g, row in table.groups.items():
            ok = [k for k in row if k % table.block == 0 or k == table.sizes[g]]
            kept[g] = min(ok, key=lambda k, g=g: (abs(k / table.sizes[g] - f), -k))
        if table.predict(kept) <= target:
            return kept, f
    return kept, fracs[-1]


def counts_plan(model: Model, kept: dict[str, int], score: str, seed: int) -> PrunePlan:
    gset = discover_groups(model)
    rng = np.random.default_rng(seed)
    layers = {}
    for g in gset.prunable:
        k = g.size - kept.get(g.leader, g.size)
        layers[g.leader] = {"remove": select_channels(group_scores(model, g, score, rng), k, g.segments).tolist()}
    return PrunePlan("prune", layers, "uniform", {"mode": "structured"})


def pruning(name: str, model: Model, calib: Dataset, ev: Dataset, args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    table = latency_table(model, repeats=15, show_progress=False)
    print(f"  latency table: {time.perf_counter() - t0:.0f} s (cached after the first run)", flush=True)
    t0 = time.perf_counter()
    dmg = damage_table(model, calib, table, samples=len(calib), show_progress=False)
    damage_s = time.perf_counter() - t0
    scores = sensitivity_scores(model, calib, "wgrad", "linf", samples=len(calib), batch_size=16)
    block = table.block
    variants: dict[str, Model] = {}
    info: dict[str, Any] = {}

    def add(label: str, plan: Any, seed: int = 0) -> None:
        variants[label] = prune(model, plan, seed=seed)
        info[label] = {"params": variants[label].num_params / model.num_params,
                       "achieved_ratio": plan.meta.get("achieved_ratio")}

    add("uniform-l1@0.3 (no rounding, old default)", plan_pruning(model, 0.3, "uniform", round_to=1))
    add(f"uniform-l1@0.3 (convs round {block}, new default)",
        plan_pruning(model, 0.3, "uniform", round_to=block, round_convs_only=True))
    add(f"sensitivity(wgrad)@0.3 (convs round {block})",
        plan_pruning(model, 0.3, "sensitivity", scores=scores, round_to=block, round_convs_only=True))
    feed = {model.input_names[0]: calib.x[:1]}
    for t in args.targets:
        kept, frac = uniform_counts(table, t)
        same = round(table.predict(kept), 4)  # the uniform plan's predicted latency: compare at equal latency
        add(f"uniform-l1@{t} (predicted {same})", counts_plan(model, kept, "l1", 0))
        info[f"uniform-l1@{t} (predicted {same})"]["fraction"] = frac
        add(f"random@{t} (uniform counts)", counts_plan(model, kept, "random", 0))
        for label, target, kw in ((f"latency-aware(damage)@{same} (= uniform)", same, {"damage": dmg}),
                                  (f"latency-aware(damage)@{t}", t, {"damage": dmg}),
                                  (f"latency-aware(l1)@{t}", t, {})):
            try:
                res = prune_to_latency(model, target, table, feed=feed, repeats=20, **kw)
            except osl.OnnxSliceError as e:
                info[label] = {"error": str(e)}
                continue
            variants[label] = res.model
            info[label] = {"params": res.model.num_params / model.num_params, "rounds": res.rounds,
                           "achieved_ratio": res.plan.meta["achieved_ratio"], "met": res.met}
    if args.recover and name != "efficientnet_lite0":
        from onnxslice.train import finetune

        train = osl.load_data("builtin:mnist?split=train").subset(slice(1000, 3000))
        unlabelled = Dataset({"x": train.x}, None, "mnist train 1000:3000, unlabelled")
        for label in [k for k in list(variants) if "new default" in k or "(= uniform)" in k
                      or (k.startswith("uniform-l1@0.") and "predicted" in k)]:
            t0 = time.perf_counter()
            res = finetune(variants[label], unlabelled, steps=args.recover, loss="distill", teacher=model,
                           lr=1e-3, batch_size=32, progress=False)
            new = f"{label} + recover {args.recover}"
            variants[new] = res.model
            info[new] = {**info[label], "recover_seconds": time.perf_counter() - t0}
    try:
        from onnxsim.pruning import apply_structured_pruning

        t0 = time.perf_counter()
        proto = apply_structured_pruning(model.proto, sparsity=0.3)
        rival = osl.load(proto) if not isinstance(proto, Model) else proto
        variants["onnxsim apply_structured_pruning L2 @0.3"] = rival
        info["onnxsim apply_structured_pruning L2 @0.3"] = {"params": rival.num_params / model.num_params,
                                                            "seconds": time.perf_counter() - t0}
    except Exception as e:  # the rival's scope: MatMul/Gemm and simple Conv chains
        info["onnxsim apply_structured_pruning L2 @0.3"] = {"error": str(e)[:200]}
    lat = timed(model, variants, {model.input_names[0]: ev.x[:1]}, args.repeats)
    ref = run_outputs(model, ev)
    rows = [{"variant": "original", "params": 1.0, "latency": 1.0, **fid_row(ref, model, ev)}]
    for label, m in variants.items():
        rows.append({"variant": label, "params": round(info[label]["params"], 4), "latency": round(lat[label], 4),
                     **fid_row(ref, m, ev)})
    return {"rows": rows, "info": info, "original_ms": lat["original_ms"], "damage_seconds": damage_s,
            "latency_table": table.to_dict()}


def quant_datasets(name: str, quick: bool) -> tuple[Dataset, Dataset, Dataset]:
    """(calibration, selection, evaluation) for the quantization tables, pairwise disjoint.

    EfficientNet-Lite0: 64 crops of the calibration photos of ``benchmarks/_images.py`` (calibration and
    selection: the plan's accuracy goal is judged on them), evaluation on the 20 labelled
    ``builtin:samples-imagenet`` images plus 180 (quick: 80) crops of other photos. MNIST models: 64 training
    digits calibrate, training digits 1000:2000 select, 1,000 (quick: 500) test digits evaluate.
    """
    if name == "efficientnet_lite0":
        import _images

        imnet = osl.load_data("builtin:samples-imagenet")
        cal = _images.crops(_images.CALIBRATION, 64, seed=1)
        crops = _images.crops(_images.EVALUATION, 80 if quick else 180, seed=100)
        x = np.concatenate([imnet.x.astype(np.float32), crops])
        labels = np.concatenate([np.asarray(imnet.labels), np.full(len(crops), -1)])
        calib = Dataset({"x": cal}, None, f"64 crops of {_images.describe(_images.CALIBRATION)}")
        return calib, calib, Dataset({"x": x}, labels, f"samples-imagenet (20) + {len(crops)} crops of "
                                                       f"{_images.describe(_images.EVALUATION)}")
    train = osl.load_data("builtin:mnist?split=train")
    test = osl.load_data("builtin:mnist?split=test")
    return (train.subset(slice(0, 64)), train.subset(slice(1000, 2000)),
            test.subset(slice(0, 500 if quick else 1000)))


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    c = (p + z * z / (2 * n)) / (1 + z * z / n)
    h = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, c - h)), float(min(1.0, c + h))


def _order(model: Model, b: Any, calib: Dataset, criterion: str) -> tuple[list[str], str]:
    """Layers of builder ``b``, most sensitive first, by ``criterion`` (or the measured QDQ/dynamic gain)."""
    from onnxslice.rewrite.bits_scores import quantization_scores

    if criterion != "measured":
        try:
            sc = quantization_scores(model, calib, criterion, samples=min(32, len(calib)), batch_size=16).scores
            return sorted([n for n in b.layers if n in sc], key=lambda n: -sc[n]), criterion
        except osl.OnnxSliceError:  # no VJP rule for an op: the measured sensitivity instead
            pass
    sens = formats.qdq_sensitivity(b)
    return sorted(sens, key=lambda n: -sens[n]), f"measured {b.fmt} KL gain"


def quantization(name: str, model: Model, calib: Dataset, ev: Dataset, args: argparse.Namespace) -> dict[str, Any]:
    """The quantization table of one model (``calib``/``ev`` are replaced by :func:`quant_datasets`)."""
    from onnxruntime.quantization import quantize_static

    from onnxslice.rewrite.static_quant import FeedReader

    calib, select, ev = quant_datasets(name, not getattr(args, "full", False))
    criterion = getattr(args, "order_by", "oracle:int8")
    variants: dict[str, Model] = {}
    info: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        onnx.save(model.proto, str(src))
        t0 = time.perf_counter()
        quantize_static(str(src), str(dst), FeedReader({model.input_names[0]: calib.x}, 16))
        variants["ort quantize_static defaults (uniform int8)"] = osl.load(onnx.load(str(dst)))
        info["ort quantize_static defaults (uniform int8)"] = {"seconds": time.perf_counter() - t0}
    mm = sum(x.op_type in ("MatMul", "Gemm") for x in model.layers) * 2 >= len(model.layers)
    orders: dict[str, tuple[list[str], str]] = {}
    for fmt in ("qdq", "dynamic"):
        # calibrate on calib; the plan's accuracy goal and the measured sensitivity are judged on select
        b: Any = (formats.QdqBuilder(model, calib, selection=select, samples=1000) if fmt == "qdq"
                  else formats.DynamicBuilder(model, select, samples=1000))
        try:
            try:
                variants[f"{fmt} uniform int8 (ours)"] = formats.convert(model, fmt, builder=b)
            except osl.OnnxSliceError as e:
                info[f"{fmt} uniform int8 (ours)"] = {"error": str(e)}
                continue
            if fmt == "dynamic" and not mm:  # integer convolutions run slower: plans only where MatMuls dominate
                continue
            t0 = time.perf_counter()
            if criterion not in orders or criterion == "measured":
                orders[criterion] = _order(model, b, calib, criterion)
            order, by = orders[criterion]
            order = [n for n in order if n in b.layers]
            for goal in sorted({getattr(args, "goal", 0.99), 1.0}):
                qp = formats.plan_float_layers(b, order, goal=goal)
                label = f"{fmt} sensitivity plan @{goal} ({by}, {len(qp.exclude)} float)"
                variants[label] = formats.convert(model, fmt, exclude=qp.exclude, proto=qp.proto)
                info[label] = {"float_layers": qp.exclude, "trials": qp.trials, "seconds": time.perf_counter() - t0,
                               "order_by": by, "goal": goal, "goal_met_on_selection": qp.met}
                if qp.exclude and f"{fmt} random plan (same count)" not in variants:
                    rng = np.random.default_rng(0)
                    rnd = [b.layers[i] for i in rng.permutation(len(b.layers))[: len(qp.exclude)]]
                    variants[f"{fmt} random plan (same count)"] = formats.convert(model, fmt, exclude=rnd, builder=b)
                    info[f"{fmt} random plan (same count)"] = {"float_layers": rnd}
        finally:
            b.close()
    variants["weight-only int8"] = formats.convert(model, "weight", calib)
    variants["fp16 (for GPU)"] = formats.convert(model, "fp16")
    try:
        variants["nbits (MatMulNBits int4)"] = formats.convert(model, "nbits", calib)
    except osl.OnnxSliceError as e:
        info["nbits (MatMulNBits int4)"] = {"error": str(e)}
    try:
        from onnxsim.mixed_precision import apply_mixed_precision_quantization

        t0 = time.perf_counter()
        proto = apply_mixed_precision_quantization(model.proto, [{model.input_names[0]: calib.x[:8]}])
        variants["onnxsim mixed precision (int4/int8 weights)"] = osl.load(proto)
        info["onnxsim mixed precision (int4/int8 weights)"] = {"seconds": time.perf_counter() - t0}
    except Exception as e:
        info["onnxsim mixed precision (int4/int8 weights)"] = {"error": str(e)[:200]}
    lat = timed(model, variants, {model.input_names[0]: ev.x[:1]}, args.repeats)
    ref = run_outputs(model, ev)
    p = np.exp(ref[0] - ref[0].max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    top2 = np.sort(p, 1)[:, -2:]
    confident = (top2[:, 1] - top2[:, 0]) >= 0.05  # fp32's top-1 leads its runner-up by 5 points or more
    n = len(ev)
    rows = [{"variant": "float32", "bytes": model.proto.ByteSize(), "latency": 1.0, **fid_row(ref, model, ev),
             "agree_95ci": "1", "agree_confident": 1.0}]
    for label, m in variants.items():
        out = run_outputs(m, ev, formats.eval_batch(label.split(" ")[0]))  # dynamic: batch 1, as timed
        same = out[0].argmax(1) == ref[0].argmax(1)
        lo, hi = wilson(int(same.sum()), n)
        rows.append({"variant": label, "bytes": m.proto.ByteSize(), "latency": round(lat[label], 4),
                     **fid_row(ref, m, ev, out), "agree_95ci": f"{lo:.3f}-{hi:.3f}",
                     "agree_confident": round(float(same[confident].mean()), 4)})
    goal = getattr(args, "goal", 0.99)
    auto = (f"qdq sensitivity plan @{goal} ", f"dynamic sensitivity plan @{goal} ", "weight-only",
            "nbits")  # what --format auto builds on CPU at its default accuracy goal
    cands = [{"format": r["variant"], "latency": r["latency"], "top1_agreement": r["agreement"], "kl": r["kl"],
              "rel_error": 0.0} for r in rows if r["variant"].startswith(auto)]
    chosen, met = formats.pick([{"format": "fp32", "latency": 1.0, "top1_agreement": 1.0, "kl": 0.0,
                                 "rel_error": 0.0}, *cands], 0.01)
    return {"rows": rows, "info": info, "original_ms": lat["original_ms"], "calibration": calib.name,
            "selection": select.name, "evaluation": f"{ev.name} ({n})", "confident": int(confident.sum()),
            "order_by": criterion, "auto_pick_on_evaluation": {"format": chosen, "goal_met": met}}


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(results["models"])
    fig, axes = plt.subplots(len(models), 2, figsize=(13, 4.5 * len(models)), squeeze=False)
    for i, name in enumerate(models):
        for j, part in enumerate(("pruning", "quantization")):
            ax = axes[i][j]
            for r in results["models"][name][part].get("rows", []):
                ax.scatter(r["latency"], r["agreement"] if r["agreement"] is not None else 0.0, s=30)
                ax.annotate(r["variant"][:38], (r["latency"], r["agreement"] or 0.0), fontsize=6)
            ax.axvline(1.0, color="grey", lw=0.5)
            ax.set_xlabel("latency / original (CPU, 1 thread, batch 1)")
            ax.set_ylabel("top-1 agreement with original")
            ax.set_title(f"{name}: {part}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", default=True, help="small run (default)")
    p.add_argument("--full", action="store_true", help="more targets, samples and repeats")
    p.add_argument("--models", default="resnet8_mnist,efficientnet_lite0")
    p.add_argument("--out", type=Path, default=RESULTS / "deploy.json")
    p.add_argument("--recover", type=int, default=60,
                   help="distillation steps of the recovery rows (MNIST models; 0: none; default 60)")
    args = p.parse_args()
    quick = not args.full
    args.targets = [0.9] if quick else [0.9, 0.8, 0.7]
    args.repeats = 20 if quick else 40
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    old = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results: dict[str, Any] = {"machine": {"load_average_start": load_average(), "cpu_count": os.cpu_count(),
                                           "note": "shared machine (8 helpers on 2 cores); ratios from one "
                                                   "round-robin run, absolute times are noisy"},
                               "quick": quick, "models": dict(old.get("models", {}))}
    for name in args.models.split(","):
        print(f"== {name}", flush=True)
        if name == "mnist_encoder":
            from _encoder import encoder_model

            model = osl.load(encoder_model())
        else:
            model = osl.load(ROOT / "models" / f"{name}.onnx")
        calib, ev = datasets(name, quick)
        entry: dict[str, Any] = {"calibration": calib.name, "evaluation": f"{ev.name} ({len(ev)})",
                                 "load_average": load_average()}
        if name == "mnist_encoder":
            entry["pruning"] = {"rows": [], "skipped": "quantization only (the encoder is a stand-in for the formats)"}
        else:
            entry["pruning"] = pruning(name, model, calib, ev, args)
            print(format_table(entry["pruning"]["rows"], title=f"{name}: pruning (latency / original, one run)"))
        entry["quantization"] = quantization(name, model, calib, ev, args)
        print(format_table(entry["quantization"]["rows"], title=f"{name}: quantization (latency / float32, one run)"))
        results["models"][name] = entry
        results["machine"]["load_average_end"] = load_average()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1, default=str))
    plot(results, args.out.with_suffix(".png"))
    print(f"saved {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
