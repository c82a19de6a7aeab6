"""Deployment benchmark: pruned and quantized models side by side, with latencies measured in one run.

Run ``python benchmarks/bench_deploy.py [--full] [--models resnet8_mnist,efficientnet_lite0]`` from the
repository root (``--quick`` is the default: fewer targets, samples and repeats).

Per model, two tables (every variant of a table is timed in ONE round-robin session set with the
original: each repeat runs all of them in turn; latency = median per-repeat ratio to the original,
onnxruntime CPU, graph optimizations on, 1 intra-op thread, batch 1):

**Pruning** (no fine-tuning unless said): uniform L1 at 30% of prunable parameters with the old default (no
rounding) and the new default (Conv groups rounded to the CPU's kernel block), the SAfER sensitivity
budget (wgrad/linf) at 30% with the new default; the latency-aware knapsack with measured damage under
both constraints "at least 30% of the parameters" and "latency <= T" (``min_ratio``); at the predicted
latency of the uniform plan at 30% and 50% (equal latency): the knapsack (``prune_to_latency`` with
``damage_table``), the greedy plan with re-measured damage (``plan_greedy``; EfficientNet-Lite0 only
with ``--full``) and random channels at the uniform counts; the knapsack at target T with measured damage
and with data-free L1 importance. ``+ lsq``: the main plans repaired by layer-wise least squares
(``onnxslice.rewrite.reconstruct``, forward runs only) on ``--reconstruct`` unlabelled samples (MNIST
training digits 1000:3000; EfficientNet-Lite0: crops of three photos, disjoint from the evaluation
images); ``+ recover``: MNIST models after ``--recover`` distillation steps (Adam 1e-3, batch 32). Latency
at batch 1 and 32, and the original's and the new default's overhead share (onnxruntime profiler:
per-run time not spent in kernels). The rival ``onnxsim``'s ``apply_structured_pruning`` (L2, 30%)
where it runs. ``--conformance``: the conformance set's conv nets at 30% (see ``conformance_pruning``).

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
import bisect
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
from onnxslice.io import atomic_write_bytes  # noqa: E402
from onnxslice.latency import latency_table, load_average, median_ratios, timed_sessions  # noqa: E402
from onnxslice.model import Model  # noqa: E402
from onnxslice.plans import plan_pruning  # noqa: E402
from onnxslice.plans.latency_plan import damage_table, plan_greedy, prune_to_latency  # noqa: E402
from onnxslice.plans.prune_plan import PrunePlan, sensitivity_scores  # noqa: E402
from onnxslice.rewrite import formats, prune  # noqa: E402
from onnxslice.rewrite.channel_scores import group_scores, select_channels  # noqa: E402
from onnxslice.rewrite.fidelity import compare_outputs, run_outputs  # noqa: E402
from onnxslice.rewrite.groups import discover_groups  # noqa: E402
from onnxslice.rewrite.prune import resolve_channels  # noqa: E402

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


def natural_crops(n: int, seed: int, size: int = 224) -> np.ndarray:
    """``n`` crops of the three natural photos shipped with the installed packages (scikit-learn's china and
    flower, matplotlib's grace_hopper), at random scales (30-100% of the shorter side), resized to ``size``,
    randomly flipped; [0, 1] NCHW. The recovery set of EfficientNet-Lite0 (never the evaluation images)."""
    import matplotlib
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    imgs = [np.asarray(im) for im in load_sample_images().images] + [np.asarray(Image.open(hopper).convert("RGB"))]
    out = []
    for i in range(n):
        im = imgs[i % len(imgs)]
        side = int(min(im.shape[:2]) * rng.uniform(0.3, 1.0))
        y, x = rng.integers(0, im.shape[0] - side + 1), rng.integers(0, im.shape[1] - side + 1)
        crop = Image.fromarray(im[y : y + side, x : x + side]).resize((size, size), Image.BILINEAR)
        arr = np.asarray(crop, dtype=np.float32) / 255.0
        if rng.random() < 0.5:
            arr = arr[:, ::-1]
        out.append(arr.transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(out)).astype(np.float32)


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


def predict_any(table: Any, kept: dict[str, int]) -> float:
    """The table's additive prediction, with counts it did not measure interpolated linearly between the
    nearest measured counts on the kernel block (the uniform plan's counts need not be in the table)."""
    total = 1.0
    for g, k in kept.items():
        row = table.groups.get(g)
        if row is None or k == table.sizes.get(g):
            continue
        if k in row:
            total += row[k] - 1.0
            continue
        ks = sorted(c for c in row if c % table.block == 0 or c == table.sizes[g])
        lo = max([c for c in ks if c <= k], default=ks[0])
        hi = min([c for c in ks if c >= k], default=ks[-1])
        r = row[lo] if hi == lo else row[lo] + (row[hi] - row[lo]) * (k - lo) / (hi - lo)
        total += r - 1.0
    return total


def counts_plan(model: Model, kept: dict[str, int], score: str, seed: int) -> PrunePlan:
    gset = discover_groups(model)
    rng = np.random.default_rng(seed)
    layers = {}
    for g in gset.prunable:
        k = g.size - kept.get(g.leader, g.size)
        layers[g.leader] = {"remove": select_channels(group_scores(model, g, score, rng), k, g.segments).tolist()}
    return PrunePlan("prune", layers, "uniform", {"mode": "structured"})


def overhead(model: Model, feed: dict[str, np.ndarray], runs: int) -> dict[str, Any]:
    """Where a run's time goes (onnxruntime's profiler, optimized session, 1 thread): the run, the summed
    kernel times, the fixed per-run overhead share (run minus kernels), and the five costliest nodes."""
    import onnxruntime as ort

    from onnxslice.record import runtime_proto

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.enable_profiling = True
    so.profile_file_prefix = str(Path(tempfile.gettempdir()) / f"onnxslice-prof-{os.getpid()}")
    sess = ort.InferenceSession(runtime_proto(model.proto).SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    for _ in range(3):
        sess.run(None, feed)
    for _ in range(runs):
        sess.run(None, feed)
    path = sess.end_profiling()
    events = json.loads(Path(path).read_text())
    os.remove(path)
    runs = sorted((e["ts"], e["dur"]) for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
    starts = [r[0] for r in runs]
    kern = np.zeros(len(runs))
    per: dict[str, list[float]] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            i = max(0, bisect.bisect_right(starts, e["ts"]) - 1)
            kern[i] += e["dur"]
            key = f"{e['args'].get('op_name', '?')} {e['name'][: -len('_kernel_time')]}"
            per.setdefault(key, []).append(e["dur"])
    dur = np.array([r[1] for r in runs], dtype=float)
    share = 1.0 - kern[3:] / np.maximum(dur[3:], 1e-9)  # per run (warm-up runs dropped); median over runs
    med = {k: float(np.median(v)) for k, v in per.items()}
    top = sorted(med.items(), key=lambda kv: -kv[1])[:5]
    return {"run_ms": round(float(np.median(dur[3:])) / 1e3, 4),
            "kernels_ms": round(float(np.median(kern[3:])) / 1e3, 4),
            "overhead_share": round(float(np.median(share)), 3), "nodes": len(per),
            "top": {k: round(v / 1e3, 4) for k, v in top}}


def repair_set(name: str, quick: bool) -> Dataset:
    """Unlabelled recovery samples, disjoint from the evaluation and calibration data."""
    if name == "efficientnet_lite0":
        return Dataset({"x": natural_crops(128 if quick else 256, seed=11)}, None, "crops of 3 photos")
    train = osl.load_data("builtin:mnist?split=train").subset(slice(1000, 3000))
    return Dataset({"x": train.x}, None, "mnist train 1000:3000, unlabelled")


def batch_of(x: np.ndarray, n: int) -> np.ndarray:
    return np.concatenate([x] * -(-n // len(x)))[:n]


def pruning(name: str, model: Model, calib: Dataset, ev: Dataset, args: argparse.Namespace) -> dict[str, Any]:
    from onnxslice.rewrite.reconstruct import reconstruct

    t0 = time.perf_counter()
    table = latency_table(model, repeats=15, show_progress=False)
    print(f"  latency table: {time.perf_counter() - t0:.0f} s (cached after the first run)", flush=True)
    t0 = time.perf_counter()
    dmg = damage_table(model, calib, table, samples=len(calib), show_progress=False)
    damage_s = time.perf_counter() - t0
    scores = sensitivity_scores(model, calib, "wgrad", "linf", samples=len(calib), batch_size=16)
    block = table.block
    variants: dict[str, Model] = {}
    plans: dict[str, Any] = {}
    info: dict[str, Any] = {}

    def add(label: str, plan: Any, seed: int = 0) -> None:
        variants[label] = prune(model, plan, seed=seed)
        plans[label] = plan
        info[label] = {"params": variants[label].num_params / model.num_params,
                       "achieved_ratio": plan.meta.get("achieved_ratio")}

    def add_latency(label: str, target: float, **kw: Any) -> None:
        try:
            res = prune_to_latency(model, target, table, feed=feed, repeats=20, **kw)
        except osl.OnnxSliceError as e:
            info[label] = {"error": str(e)}
            return
        variants[label], plans[label] = res.model, res.plan
        info[label] = {"params": res.model.num_params / model.num_params, "rounds": res.rounds,
                       "achieved_ratio": res.plan.meta["achieved_ratio"], "met": res.met,
                       "kept": res.plan.meta["kept_channels"]}

    feed = {model.input_names[0]: calib.x[:1]}
    default = f"uniform-l1@0.3 (convs round {block}, new default)"
    add("uniform-l1@0.3 (no rounding, old default)", plan_pruning(model, 0.3, "uniform", round_to=1))
    add(default, plan_pruning(model, 0.3, "uniform", round_to=block, round_convs_only=True))
    if name == "efficientnet_lite0":
        add(f"uniform-l1@0.2 (convs round {block}, new default)",
            plan_pruning(model, 0.2, "uniform", round_to=block, round_convs_only=True))
    add(f"sensitivity(wgrad)@0.3 (convs round {block})",
        plan_pruning(model, 0.3, "sensitivity", scores=scores, round_to=block, round_convs_only=True))
    for t in args.ratio_targets:  # >= 30% of the parameters, from where latency falls most for the least damage
        add_latency(f"latency-aware(damage) ratio>=0.3 @{t}", t, damage=dmg, min_ratio=0.3)
    if name == "efficientnet_lite0":  # the recovery goal: 20% of the parameters, from where they hurt least
        add_latency("least damage ratio>=0.2 (latency-aware(damage) @1.0)", 1.0, damage=dmg, min_ratio=0.2)
    for r in args.uniform_ratios:  # equal latency: the uniform (default) plan's predicted latency
        pu = plan_pruning(model, r, "uniform", round_to=block, round_convs_only=True)
        chosen, _, gs = resolve_channels(model, pu)
        kept = {g.leader: g.size - (chosen[g.leader].size if g.leader in chosen else 0) for g in gs.prunable}
        exact = predict_any(table, kept)  # the knapsack and the greedy plan get the exact value: equal latency
        same = round(exact, 4)
        lab = f"uniform-l1@{r} (convs round {block})"
        if not any(k.startswith(f"uniform-l1@{r} (convs round") for k in variants):
            add(lab, pu)
        add(f"random@{r} (uniform counts)", counts_plan(model, kept, "random", 0))
        add_latency(f"latency-aware(damage)@{same} (= uniform@{r})", exact, damage=dmg)
        if name != "efficientnet_lite0" or args.full:  # one forward pass per group and step
            t0 = time.perf_counter()
            try:
                add(f"latency-aware(greedy)@{same} (= uniform@{r})",
                    plan_greedy(model, exact, table, calib, samples=len(calib)))
                info[f"latency-aware(greedy)@{same} (= uniform@{r})"]["seconds"] = round(time.perf_counter() - t0, 1)
            except osl.OnnxSliceError as e:
                info[f"latency-aware(greedy)@{same} (= uniform@{r})"] = {"error": str(e)}
    for t in args.targets:
        add_latency(f"latency-aware(damage)@{t}", t, damage=dmg)
        add_latency(f"latency-aware(l1)@{t}", t)
    rec = repair_set(name, not args.full)
    if args.reconstruct:  # least-squares repair (forward runs only) of the main plans
        want = ["new default", "ratio>=0.3", "(= uniform", "(convs round"] if name != "efficientnet_lite0" else \
            ["new default", "ratio>="]
        for label in [k for k in list(variants) if any(w in k for w in want) and not k.startswith("random")]:
            t0 = time.perf_counter()
            r = reconstruct(model, variants[label], plans[label], rec, method="lsq", samples=args.reconstruct)
            new = f"{label} + lsq"
            variants[new] = r.model
            info[new] = {**info[label], "lsq_seconds": round(time.perf_counter() - t0, 1), "lsq_samples": r.samples,
                         "lsq_skipped": r.skipped}
            print(f"  {new}: {time.perf_counter() - t0:.0f} s", flush=True)
    if args.recover and name != "efficientnet_lite0":
        from onnxslice.train import finetune

        for label in [k for k in list(variants) if ("new default" in k or "(= uniform" in k)
                      and not k.endswith("lsq")]:
            t0 = time.perf_counter()
            res = finetune(variants[label], rec, steps=args.recover, loss="distill", teacher=model,
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
    x1 = {model.input_names[0]: ev.x[:1]}
    xb = {model.input_names[0]: batch_of(ev.x, args.big_batch)}
    lat = timed(model, variants, x1, args.repeats)
    latb = timed(model, variants, xb, max(5, args.repeats // 2))
    ref = run_outputs(model, ev)
    held = None
    if name == "efficientnet_lite0":  # the labelled ImageNet samples: natural images the repair never saw
        keep = np.flatnonzero(np.asarray(ev.labels) >= 0)
        held = ev.subset(keep)
        ref_held = [r[keep] for r in ref]

    def row(m: Model) -> dict[str, Any]:
        out = fid_row(ref, m, ev)
        if held is not None:
            out["agreement (imagenet 20)"] = compare_outputs(ref_held, run_outputs(m, held)).top1_agreement
        return out

    rows = [{"variant": "original", "params": 1.0, "latency": 1.0, f"latency b{args.big_batch}": 1.0, **row(model)}]
    for label, m in variants.items():
        rows.append({"variant": label, "params": round(info[label]["params"], 4), "latency": round(lat[label], 4),
                     f"latency b{args.big_batch}": round(latb[label], 4), **row(m)})
    prof = {"original b1": overhead(model, x1, 50), f"original b{args.big_batch}": overhead(model, xb, 5),
            "new default b1": overhead(variants[default], x1, 50),
            f"new default b{args.big_batch}": overhead(variants[default], xb, 5)}
    return {"rows": rows, "info": info, "original_ms": lat["original_ms"],
            f"original_ms_b{args.big_batch}": latb["original_ms"], "damage_seconds": damage_s,
            "overhead": prof, "repair_set": f"{rec.name} ({len(rec)})", "latency_table": table.to_dict()}


CONFORMANCE_CONV = ["light_squeezenet", "keras_mnist", "cnn", "segnet"]
CONFORMANCE_CONV_FULL = ["light_resnet50", "light_inception_v1", "light_densenet121"]


def conformance_pruning(args: argparse.Namespace) -> dict[str, Any]:
    """The conformance set's conv nets at 30% of parameters: the default (Conv groups rounded to the kernel
    block) and the latency-aware plan with ``min_ratio=0.3`` (data-free L1 importance: these nets have random
    weights, so only latency and size are meaningful), timed round-robin with the original (batch 1)."""
    from models.conformance import build

    out: dict[str, Any] = {}
    for name in CONFORMANCE_CONV + (CONFORMANCE_CONV_FULL if args.full else []):
        t0 = time.perf_counter()
        path, spec = build(name)
        model = osl.load(path)
        x = osl.load_data(spec).bind(model)
        x1 = {k: v[:1] for k, v in x.items()}
        table = latency_table(model, repeats=10, fractions=(0.75, 0.5), show_progress=False, feed=x1)
        variants: dict[str, Model] = {}
        info: dict[str, Any] = {}
        plan = plan_pruning(model, 0.3, "uniform", round_to=1)
        variants["uniform-l1@0.3 (no rounding)"] = prune(model, plan)
        info["uniform-l1@0.3 (no rounding)"] = {"achieved_ratio": plan.meta.get("achieved_ratio")}
        plan = plan_pruning(model, 0.3, "uniform", round_to=table.block, round_convs_only=True)
        variants["uniform-l1@0.3 (new default)"] = prune(model, plan)
        info["uniform-l1@0.3 (new default)"] = {"achieved_ratio": plan.meta.get("achieved_ratio")}
        for t in (0.8, 0.9, 1.0):
            try:
                res = prune_to_latency(model, t, table, min_ratio=0.3, feed=x1, repeats=10, rounds=2)
            except osl.OnnxSliceError as e:
                info[f"latency-aware(l1) ratio>=0.3 @{t}"] = {"error": str(e)[:300]}
                continue
            variants[f"latency-aware(l1) ratio>=0.3 @{t}"] = res.model
            info[f"latency-aware(l1) ratio>=0.3 @{t}"] = {"achieved_ratio": res.plan.meta["achieved_ratio"],
                                                          "rounds": res.rounds}
            break
        lat = timed(model, variants, x1, args.repeats)
        rows = [{"variant": "original", "params": 1.0, "achieved ratio": 0.0, "latency": 1.0}]
        for label, m in variants.items():
            rows.append({"variant": label, "params": round(m.num_params / model.num_params, 4),
                         "achieved ratio": round(info[label]["achieved_ratio"] or 0.0, 4),
                         "latency": round(lat[label], 4)})
        out[name] = {"rows": rows, "info": info, "original_ms": lat["original_ms"],
                     "overhead": overhead(model, x1, 30), "seconds": round(time.perf_counter() - t0, 1),
                     "load_average": load_average()}
        print(format_table(rows, title=f"{name}: pruning at 30% (latency / original, batch 1, one run)"), flush=True)
    return out


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
    from onnxslice.plans.bits_scores import quantization_scores

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
    p.add_argument("--reconstruct", type=int, default=256,
                   help="recovery samples of the least-squares repair rows ('+ lsq'; 0: none; default 256)")
    p.add_argument("--conformance", action="store_true",
                   help="also prune the conformance set's conv nets at 30%% (default: off; --full adds the large ones)")
    p.add_argument("--skip-quantization", action="store_true", help="pruning tables only (default: both)")
    p.add_argument("--recover", type=int, default=60,
                   help="distillation steps of the recovery rows (MNIST models; 0: none; default 60)")
    args = p.parse_args()
    quick = not args.full
    args.targets = [0.9] if quick else [0.9, 0.8, 0.7]
    args.ratio_targets = [0.8] if quick else [0.85, 0.8, 0.75]
    args.uniform_ratios = [0.3, 0.5, 0.6]
    args.big_batch = 32
    args.repeats = 20 if quick else 40
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    old = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results: dict[str, Any] = {"machine": {"load_average_start": load_average(), "cpu_count": os.cpu_count(),
                                           "note": "shared machine (8 helpers on 2 cores); ratios from one "
                                                   "round-robin run, absolute times are noisy"},
                               "quick": quick, "models": dict(old.get("models", {}))}
    if "conformance_pruning" in old:
        results["conformance_pruning"] = old["conformance_pruning"]
    if args.conformance:
        results["conformance_pruning"] = conformance_pruning(args)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(args.out, (json.dumps(results, indent=1, default=str)).encode())
    for name in [m for m in args.models.split(",") if m]:
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
        if args.skip_quantization:
            entry["quantization"] = dict(results["models"].get(name, {}).get("quantization", {"rows": []}))
        else:
            entry["quantization"] = quantization(name, model, calib, ev, args)
            print(format_table(entry["quantization"]["rows"],
                               title=f"{name}: quantization (latency / float32, one run)"))
        results["models"][name] = entry
        results["machine"]["load_average_end"] = load_average()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(args.out, (json.dumps(results, indent=1, default=str)).encode())
    plot(results, args.out.with_suffix(".png"))
    print(f"saved {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
