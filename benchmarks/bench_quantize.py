"""Mixed-precision quantization planned by layer sensitivity vs uniform, random and onnxruntime's default.

Run: ``python benchmarks/bench_quantize.py [--quick] [--models lenet5,resnet8_mnist,efficientnet_lite0]``.

For each reference model, side by side in one process:

1. Scores: the measured oracle ``oracle:int4`` (output error of quantizing each layer alone) and every
   SAfER criterion of ``onnxslice.sensitivity`` (``--criteria``, default all, reduction ``linf``) on the
   same calibration samples; their Spearman agreement with the oracle (raw scores, and per parameter,
   the quantity ``plan_bits`` ranks by). Scores and timings go to ``benchmarks/results/quantize_agreement.json``
   (``--reuse-scores`` reads them back instead of recomputing).
2. Plans, at each ``--avg-bits`` budget (mixed int4/int8): ``sens:wgrad`` (the default criterion),
   ``sens:<best>`` (the criterion agreeing best with the oracle, when not wgrad), ``sens:oracle``, and
   ``random:<seed>`` (the same greedy fill in a random layer order: random plans of the same size);
   at the size of uniform int8 (choices int4/int8/fp16): the same three and random plans;
   ``uniform-int8``, ``uniform-int4``; ``ort-static-default`` (``onnxruntime.quantization.quantize_static``
   with every setting at its default) and our static QDQ with the wgrad plan at the largest budget.

Fidelity is measured on data disjoint from the calibration/scoring data: top-1 agreement with the
float model and KL(float || quantized), accuracy where there are labels (MNIST), the file size on disk
and the median onnxruntime CPU latency (batch 1, graph optimizations on, one thread). Fidelity is
computed with graph optimizations off (the emitted graph's own arithmetic). Results:
``benchmarks/results/quantize.json`` (written after each model).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxslice import load, load_data  # noqa: E402
from onnxslice.console import format_table  # noqa: E402
from onnxslice.data import Dataset  # noqa: E402
from onnxslice.model import Model  # noqa: E402
from onnxslice.plans.bits_scores import quantization_scores  # noqa: E402
from onnxslice.record import make_session, runtime_proto  # noqa: E402
from onnxslice.rewrite import Plan, plan_bits, quantize  # noqa: E402
from onnxslice.rewrite.bits_plan import plan_cost, uniform_plan  # noqa: E402
from onnxslice.rewrite.fidelity import compare_outputs, run_outputs  # noqa: E402
from onnxslice.rewrite.oracle import spearman  # noqa: E402
from onnxslice.rewrite.precision import quantizable_layers  # noqa: E402
from onnxslice.rewrite.static_quant import FeedReader  # noqa: E402
from onnxslice.sensitivity import criteria_names  # noqa: E402
from onnxslice.sensitivity.scores import LayerScores  # noqa: E402


def model_path(name: str, models_dir: Path | None) -> Path:
    """The reference model's file: from ``models.zoo`` when present, else ``models_dir/<name>.onnx``."""
    if models_dir is not None:
        return models_dir / f"{name}.onnx"
    try:
        zoo = importlib.import_module("models.zoo")
    except ImportError:
        return ROOT / "models" / f"{name}.onnx"
    return Path(zoo.ensure(name))


def sample_crops(n: int, size: int = 224, seed: int = 0) -> np.ndarray:
    """Random ``size`` x ``size`` crops (RGB, [0, 1], NCHW) of scikit-learn's two bundled photos."""
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    imgs = [np.asarray(im, dtype=np.float32) / 255.0 for im in load_sample_images().images]
    out = []
    for i in range(n):
        im = imgs[i % len(imgs)]
        y, x = rng.integers(0, im.shape[0] - size), rng.integers(0, im.shape[1] - size)
        out.append(im[y : y + size, x : x + size].transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


def datasets(name: str, args: argparse.Namespace) -> tuple[Dataset, Dataset]:
    """(calibration/scoring data, evaluation data), disjoint."""
    if name == "efficientnet_lite0":
        n = args.eff_samples
        crops = sample_crops(n + args.eff_eval_crops)
        calib = Dataset({"x": crops[:n]}, None, f"{n} sklearn-sample crops")
        imnet = load_data("builtin:samples-imagenet")
        ev = Dataset({"x": np.concatenate([imnet.x, crops[n:]])}, None,
                     f"samples-imagenet ({len(imnet)}) + {args.eff_eval_crops} other sklearn crops")
        return calib, ev
    train = load_data("builtin:mnist?split=train")
    test = load_data("builtin:mnist?split=test")
    return train.subset(slice(0, args.samples)), test.subset(slice(0, 300 if args.quick else 1000))


def calibration_settings(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Scoring settings: samples, path steps and path (ig/gig/idgi), noise draws (smoothgrad/vargrad)."""
    if name == "efficientnet_lite0":
        return {"samples": args.eff_samples, "steps": args.eff_steps, "noise_samples": args.eff_steps,
                "path": args.eff_path}
    return {"samples": args.samples, "steps": args.steps, "noise_samples": args.steps, "path": "layer"}


def all_scores(name: str, model: Model, calib: Dataset, args: argparse.Namespace) -> dict[str, Any]:
    """Oracle and criterion scores with their timings (or the ones saved by an earlier run)."""
    if args.reuse_scores and args.agreement_out.is_file():
        saved = json.loads(args.agreement_out.read_text()).get("models", {}).get(name)
        if saved is not None:
            print(f"  reusing scores from {args.agreement_out}", flush=True)
            return saved
    cfg = calibration_settings(name, args)
    out: dict[str, Any] = {"settings": {**cfg, "data": calib.name}, "scores": {}, "seconds": {}}
    t = time.perf_counter()
    o = quantization_scores(model, calib, "oracle:int4", samples=cfg["samples"], batch_size=16, show_progress=True)
    out["seconds"]["oracle:int4"] = time.perf_counter() - t
    out["scores"]["oracle:int4"] = o.to_dict()
    names = args.criteria.split(",") if args.criteria != "all" else criteria_names()
    for c in names:
        t = time.perf_counter()
        s = quantization_scores(model, calib, c, "linf", samples=cfg["samples"], batch_size=16,
                                steps=cfg["steps"], noise_samples=cfg["noise_samples"], path=cfg["path"])
        out["seconds"][c] = time.perf_counter() - t
        out["scores"][c] = s.to_dict()
        print(f"  {c}: {out['seconds'][c]:.1f} s", flush=True)
    return out


def scores_of(d: dict[str, Any]) -> LayerScores:
    return LayerScores({k: float(v) for k, v in d["scores"].items()}, d["criterion"], d.get("reduction", ""),
                       d.get("meta", {}))


def latency(proto: Any, x: np.ndarray, repeats: int) -> float:
    """Median seconds of one batch-1 run (onnxruntime CPU, graph optimizations on)."""
    sess = make_session(runtime_proto(proto), "cpu", optimize=True, threads=1)
    name = sess.get_inputs()[0].name
    feed = {name: x[:1]}
    sess.run(None, feed)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def ort_static_default(model: Model, calib: Dataset, tmp: Path) -> Model:
    """onnxruntime's quantize_static with every setting at its default."""
    from onnxruntime.quantization import quantize_static

    src, dst = tmp / "float.onnx", tmp / "ort_static.onnx"
    import onnx

    onnx.save_model(runtime_proto(model.proto), str(src))
    quantize_static(str(src), str(dst), FeedReader(calib.bind(model), 16))
    return load(dst)


def evaluate(name: str, q: Model, plan: Plan | None, ref: list[np.ndarray], ev: Dataset, tmp: Path,
             repeats: int, model: Model) -> dict[str, Any]:
    path = q.save(tmp / f"{name.replace('/', '_').replace(' ', '_')}.onnx")
    f = compare_outputs(ref, run_outputs(q, ev, 32), ev.labels)
    row: dict[str, Any] = {
        "plan": name,
        "avg_bits": round(plan_cost(model, plan.layers).avg_bits, 3) if plan is not None else None,
        "size_kb": path.stat().st_size / 1e3,
        "top1_agree": f.top1_agreement,
        "kl": f.kl,
        "rel_error": f.rel_error,
        "latency_ms": 1e3 * latency(q.proto, ev.x, repeats),
    }
    if f.accuracy is not None:
        row["accuracy"] = f.accuracy
    return row


def random_plans(model: Model, names: list[str], seeds: int, label: str, **budget: Any) -> dict[str, Plan]:
    """Random layer orders filled greedily under the same budget (same size as the sensitivity plans)."""
    out = {}
    for seed in range(seeds):
        r = np.random.default_rng(1000 + seed).permutation(len(names)).astype(float)
        rs = LayerScores(dict(zip(names, r.tolist(), strict=True)), f"random:{seed}")
        out[f"random:{seed} {label}"] = plan_bits(rs, model, per_parameter=False, **budget)
    return out


def verdicts(rows: list[dict[str, Any]], plans: dict[str, dict[str, Any]], key: str, families: list[str],
             labels: list[str]) -> list[dict[str, Any]]:
    """Each sensitivity plan against every random plan (and uniform int8) at the same budget.

    A random plan that makes the same decisions as the sensitivity plan is the same model: it is
    counted as ``same`` and left out of the strict comparison, which runs over the *distinct* plans.
    """
    by = {r["plan"]: r for r in rows}
    out = []
    for label in labels:
        rand = [r for r in rows if r["plan"].startswith("random:") and r["plan"].endswith(label)]
        uni = [by["uniform-int8"]] if label == "@int8-size" else []
        for fam in families:
            name = f"sens:{fam} {label}"
            r = by.get(name)
            if r is None:
                continue
            mine = plans[name]["layers"]
            others = [x for x in rand + uni if plans[x["plan"]]["layers"] != mine]
            worse_kl = [x for x in others if r["kl"] < x["kl"]]
            out.append({
                "budget": label, "plan": fam, "avg_bits": r["avg_bits"], key: r[key], "kl": r["kl"],
                "same_plans": len(rand) + len(uni) - len(others), "distinct_plans": len(others),
                "distinct_with_lower_kl": [x["plan"].split(" ")[0] for x in others if x["kl"] <= r["kl"]],
                "best_distinct_kl": min((x["kl"] for x in others), default=None),
                "kl_below_all_distinct": len(worse_kl) == len(others),
                "strictly_better": bool(others) and all(r["kl"] < x["kl"] and r[key] >= x[key] for x in others),
            })
    return out


def summarize(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Recompute the verdict table of one model's saved result."""
    labels = list(dict.fromkeys(r["plan"].split(" ", 1)[1] for r in result["rows"]
                                if r["plan"].startswith("sens:") and "static" not in r["plan"]))
    families = list(dict.fromkeys(r["plan"].split(" ")[0][5:] for r in result["rows"]
                                  if r["plan"].startswith("sens:") and "static" not in r["plan"]))
    return verdicts(result["rows"], result["plans"], "top1_agree", families, labels)


def bench_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    model = load(model_path(name, args.models_dir))
    calib, ev = datasets(name, args)
    print(f"\n== {name}: {model} | calibration {len(calib)} ({calib.name}), evaluation {len(ev)} ({ev.name})",
          flush=True)
    ref = run_outputs(model, ev, 32)
    sc = all_scores(name, model, calib, args)
    save_agreement(args, name, sc)
    oracle = scores_of(sc["scores"]["oracle:int4"])
    crit = {c: scores_of(d) for c, d in sc["scores"].items() if c != "oracle:int4"}
    agreement = sorted(
        ({"criterion": c, "spearman": spearman(s, oracle),
          "spearman_per_param": spearman(s, oracle, per_parameter=model), "seconds": sc["seconds"][c]}
         for c, s in crit.items()),
        key=lambda r: -np.nan_to_num(r["spearman"], nan=-2.0),
    )
    best = agreement[0]["criterion"]
    families = {"wgrad": crit["wgrad"], best: crit[best], "oracle": oracle}
    layer_names = [x.name for x in quantizable_layers(model)]
    plans: dict[str, Plan] = {}
    labels = []
    for b in args.budgets:
        label = f"@{b:g}"
        labels.append(label)
        for fam, s in families.items():
            plans[f"sens:{fam} {label}"] = plan_bits(s, model, ("int4", "int8"), b)
        plans.update(random_plans(model, layer_names, args.random, label, choices=("int4", "int8"), avg_bits=b))
    plans["uniform-int8"] = uniform_plan(model, "int8")
    plans["uniform-int4"] = uniform_plan(model, "int4")
    int8_mb = plan_cost(model, plans["uniform-int8"].layers).size_mb
    labels.append("@int8-size")
    for fam, s in families.items():
        plans[f"sens:{fam} @int8-size"] = plan_bits(s, model, ("int4", "int8", "fp16"), size_mb=int8_mb)
    plans.update(random_plans(model, layer_names, args.random, "@int8-size", choices=("int4", "int8", "fp16"),
                              size_mb=int8_mb))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-quant-") as d:
        tmp = Path(d)
        rows.append(evaluate("float32", model, None, ref, ev, tmp, args.repeats, model))
        for pname, plan in plans.items():
            rows.append(evaluate(pname, quantize(model, plan, calib), plan, ref, ev, tmp, args.repeats, model))
            print(f"  {pname}: done", flush=True)
        rows.append(evaluate("ort-static-default", ort_static_default(model, calib, tmp), None, ref, ev, tmp,
                             args.repeats, model))
        sp = plans[f"sens:wgrad @{args.budgets[-1]:g}"]
        st = quantize(model, sp, calib, mode="static")
        rows.append(evaluate(f"sens:wgrad static QDQ @{args.budgets[-1]:g}", st, sp, ref, ev, tmp, args.repeats,
                             model))
    base_lat = rows[0]["latency_ms"]
    for r in rows:
        r["latency_x"] = r["latency_ms"] / base_lat
    plan_dicts = {k: v.to_dict() for k, v in plans.items()}
    verdict = verdicts(rows, plan_dicts, "top1_agree", list(families), labels)
    cols = ["plan", "avg_bits", "size_kb", "top1_agree", "kl", "rel_error", "latency_ms", "latency_x"]
    if "accuracy" in rows[0]:
        cols.insert(3, "accuracy")
    print(format_table(rows, cols, title=f"{name}: fidelity on {ev.name} (avg-bits budgets {args.budgets})"))
    print(format_table(agreement, title=f"{name}: Spearman of each criterion with the int4 oracle "
                                        f"({sc['settings']})"))
    print(format_table(verdict, title=f"{name}: sensitivity plans vs random (and uniform) plans of the same size"))
    return {"model": name, "calibration": sc["settings"], "rows": rows, "agreement": agreement,
            "best_criterion": best, "oracle_seconds": sc["seconds"]["oracle:int4"], "verdict": verdict,
            "plans": plan_dicts}


def save_agreement(args: argparse.Namespace, name: str, sc: dict[str, Any]) -> None:
    """Add one model's scores to the agreement JSON (kept across runs and models)."""
    from onnxslice.io import save_json

    old = json.loads(args.agreement_out.read_text()) if args.agreement_out.is_file() else {}
    models = old.get("models", {})
    models[name] = sc
    oracle = scores_of(sc["scores"]["oracle:int4"])
    table = {c: {"spearman": spearman(scores_of(d), oracle), "seconds": sc["seconds"][c]}
             for c, d in sc["scores"].items() if c != "oracle:int4"}
    summary = old.get("spearman", {})
    summary[name] = table
    save_json(args.agreement_out, {"note": "Spearman of each SAfER criterion (reduction linf) with the measured "
                                   "int4 oracle; timings on a shared, loaded machine", "spearman": summary,
                                   "models": models})


def quantizer_aware(name: str, model: Model, calib: Dataset, probes: int) -> dict[str, Any]:
    """Spearman of the quantizer-aware criteria and of onnxsim's Fisher/Taylor with the int4 oracle, with costs.

    The oracle runs with onnxruntime's graph optimizations on. onnxsim's estimators quantize int4 per
    output channel (its own quantizer; ours is block-wise, as ``quantize`` emits) through its own torch
    executor, ``label_mode="sample"`` (its default), on the same samples.
    """
    from onnxslice.plans.quant_criteria import perturbation_errors

    n = len(calib)
    out: dict[str, Any] = {"samples": n, "spearman": {}, "spearman_per_parameter": {}, "seconds": {}}
    t = time.perf_counter()
    oracle = quantization_scores(model, calib, "oracle:int4", samples=n, batch_size=16)
    out["seconds"]["oracle:int4 (optimized)"] = time.perf_counter() - t
    for method, k in (("fisher", probes), ("taylor", 1), ("hutchinson", probes)):
        t = time.perf_counter()
        err = perturbation_errors(model, calib, method, ("int4",), samples=n, probes=k, batch_size=16)
        label = f"onnxslice {method}" + (f" ({k} probe{'s' if k > 1 else ''})" if method != "taylor" else "")
        out["seconds"][label] = time.perf_counter() - t
        s = LayerScores({n_: e["int4"] for n_, e in err.items()}, method)
        out["spearman"][label] = spearman(s, oracle)
        out["spearman_per_parameter"][label] = spearman(s, oracle, per_parameter=model)
    try:
        from onnxsim import quant_sensitivity as qs

        x = {model.input_names[0]: calib.x[:n]}
        t = time.perf_counter()
        rep = qs.rank(model.proto, calib=x, kind="weights", bits=4, methods=("fisher", "taylor"), n_samples=n)
        total = time.perf_counter() - t
        for m in ("fisher", "taylor"):
            if m not in rep.scores:
                continue
            s = LayerScores({g: float(v) for g, v in zip(rep.groups, rep.scores[m], strict=True)
                             if g in oracle.scores and np.isfinite(v)}, m)
            out["spearman"][f"onnxsim {m}"] = spearman(s, oracle)
            out["spearman_per_parameter"][f"onnxsim {m}"] = spearman(s, oracle, per_parameter=model)
            out["seconds"][f"onnxsim {m}"] = rep.seconds.get(m, total)
    except Exception as e:  # the rival's executor lacks an op, or its API changed
        out["onnxsim_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    rows = [{"criterion": k, "spearman": round(v, 3), "per parameter": round(out["spearman_per_parameter"][k], 3),
             "seconds": round(out["seconds"][k], 1)} for k, v in out["spearman"].items()]
    rows.append({"criterion": "oracle:int4 (optimized)", "spearman": 1.0, "per parameter": 1.0,
                 "seconds": round(out["seconds"]["oracle:int4 (optimized)"], 1)})
    print(format_table(rows, title=f"{name}: quantizer-aware criteria vs the int4 oracle ({n} samples)"), flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quantizer-aware", action="store_true",
                   help="only compare fisher/taylor/hutchinson and onnxsim's Fisher/Taylor with the oracle "
                        "(results: benchmarks/results/quantize_criteria.json)")
    p.add_argument("--probes", type=int, default=1, help="random probes of fisher and hutchinson (default 1)")
    p.add_argument("--quick", action="store_true", help="fewer samples, seeds and repeats (a smoke run)")
    p.add_argument("--models", default="lenet5,resnet8_mnist,efficientnet_lite0")
    p.add_argument("--models-dir", type=Path, help="folder holding <name>.onnx (default: models.zoo)")
    p.add_argument("--avg-bits", default="4.5,5,6,7.5", help="avg-bits budgets for the mixed int4/int8 plans")
    p.add_argument("--random", type=int, default=None, help="random plans per model (default 5, quick 2)")
    p.add_argument("--criteria", default="all", help="SAfER criteria to score with (comma list or 'all')")
    p.add_argument("--samples", type=int, default=64, help="calibration/scoring samples, MNIST models")
    p.add_argument("--steps", type=int, default=8, help="path steps and noise draws, MNIST models")
    p.add_argument("--eff-samples", type=int, default=16, help="calibration/scoring crops, EfficientNet-Lite0")
    p.add_argument("--eff-steps", type=int, default=2, help="path steps and noise draws, EfficientNet-Lite0")
    p.add_argument("--eff-path", choices=("layer", "global"), default="global",
                   help="ig/gig/idgi path on EfficientNet-Lite0: per layer (L x steps passes) or global (steps)")
    p.add_argument("--eff-eval-crops", type=int, default=12, help="evaluation crops besides samples-imagenet")
    p.add_argument("--summarize", action="store_true", help="only print the verdicts of the saved --out JSON")
    p.add_argument("--reuse-scores", action="store_true", help="read scores from --agreement-out if there")
    p.add_argument("--agreement-out", type=Path, default=ROOT / "benchmarks" / "results" / "quantize_agreement.json")
    p.add_argument("--repeats", type=int, default=None, help="latency repeats (default 50, quick 5)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quantize.json")
    args = p.parse_args()
    args.budgets = [float(b) for b in args.avg_bits.split(",") if b]
    args.random = args.random if args.random is not None else (2 if args.quick else 5)
    args.repeats = args.repeats if args.repeats is not None else (5 if args.quick else 50)
    if args.summarize:
        for r in json.loads(args.out.read_text())["models"]:
            print(format_table(summarize(r), title=f"{r['model']}: sensitivity plans vs distinct random/uniform "
                                                   "plans of the same budget (fidelity: top-1 agreement, KL)"))
        return 0
    if args.quick:
        args.samples, args.steps, args.eff_samples, args.eff_steps, args.eff_eval_crops = 16, 2, 4, 1, 4
    from onnxslice.io import save_json

    if args.quantizer_aware:
        crit_out = ROOT / "benchmarks" / "results" / "quantize_criteria.json"
        res: dict[str, Any] = {"note": "seconds on a shared 2-core machine under load (8 helpers)", "models": {}}
        for m in [m for m in args.models.split(",") if m]:
            calib, _ = datasets(m, args)
            res["models"][m] = quantizer_aware(m, load(model_path(m, args.models_dir)), calib, args.probes)
            save_json(crit_out, res)
        print(f"saved {crit_out}")
        return 0

    old = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results = {r["model"]: r for r in old.get("models", [])}
    for m in [m for m in args.models.split(",") if m]:
        results[m] = bench_model(m, args)
        results[m]["quick"] = args.quick
        save_json(args.out, {"avg_bits": args.budgets, "models": list(results.values()),
                             "note": "timings on a shared, loaded machine unless rerun on a quiet one"})
        print(f"\nsaved {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
