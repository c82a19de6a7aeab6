"""Mixed-precision quantization planned by layer sensitivity vs uniform, random and onnxruntime's default.

Run: ``python benchmarks/bench_quantize.py [--quick] [--models lenet5,resnet8_mnist,efficientnet_lite0]``.

For each reference model, side by side in one process:

- ``sens:<criterion>``: ``plan_bits`` mixed int4/int8 at each ``--avg-bits`` budget (4.5, 5, 6) from its
  scores (the measured oracle ``oracle:int4``, plus every SAfER criterion ``onnxslice.sensitivity``
  provides in this build; a data-free ``weight/linf`` stand-in otherwise);
- ``random``: the same greedy fill in a random layer order (``--random`` seeds), i.e. random plans of
  the same budget;
- ``uniform-int8`` and ``uniform-int4``;
- ``sens:oracle 4/8/16 @int8-size``: choices int4/int8/fp16 at the estimated size of uniform int8;
- ``ort-static-default``: ``onnxruntime.quantization.quantize_static`` with its default settings.

Fidelity is measured on data disjoint from the calibration/scoring data: top-1 agreement with the
float model and KL(float || quantized), accuracy where there are labels (MNIST), the file size on disk
and the median onnxruntime CPU latency (batch 1, graph optimizations on). The Spearman agreement of
each criterion with the oracle is reported too. Results go to ``benchmarks/results/quantize.json``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxslice import load, load_data  # noqa: E402
from onnxslice.data import Dataset  # noqa: E402
from onnxslice.model import Model  # noqa: E402
from onnxslice.record import make_session, runtime_proto  # noqa: E402
from onnxslice.rewrite import Plan, plan_bits, quantize  # noqa: E402
from onnxslice.rewrite.bits_plan import plan_cost, uniform_plan  # noqa: E402
from onnxslice.rewrite.fidelity import compare_outputs, run_outputs  # noqa: E402
from onnxslice.rewrite.oracle import quantization_oracle, spearman  # noqa: E402
from onnxslice.rewrite.precision import quantizable_layers  # noqa: E402
from onnxslice.rewrite.static_quant import FeedReader  # noqa: E402
from onnxslice.sensitivity.scores import LayerScores  # noqa: E402
from onnxslice.table import format_table  # noqa: E402

SAFER = ("weight", "grad", "wgrad", "gradcampp", "ig", "smoothgrad")


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


def datasets(name: str, quick: bool) -> tuple[Dataset, Dataset]:
    """(calibration/scoring data, evaluation data), disjoint."""
    if name == "efficientnet_lite0":
        crops = sample_crops(8 if quick else 24)
        half = len(crops) // 2
        calib = Dataset({"x": crops[:half]}, None, "sklearn-sample-crops[:half]")
        imnet = load_data("builtin:samples-imagenet")
        ev = Dataset({"x": np.concatenate([imnet.x, crops[half:]])}, None, "samples-imagenet + sklearn crops[half:]")
        return calib, ev
    train = load_data("builtin:mnist?split=train")
    test = load_data("builtin:mnist?split=test")
    return train.subset(slice(0, 64 if quick else 256)), test.subset(slice(0, 300 if quick else 1000))


def criteria(model: Model, calib: Dataset, quick: bool) -> dict[str, LayerScores]:
    """SAfER criteria from onnxslice.sensitivity when this build has them, else a data-free stand-in."""
    sens = getattr(importlib.import_module("onnxslice.sensitivity"), "sensitivity", None)
    out: dict[str, LayerScores] = {}
    names = [x.name for x in quantizable_layers(model)]
    if sens is None:
        scores = {x.name: float(np.abs(model.initializer(x.weight)).max()) for x in quantizable_layers(model)}
        out["weight/linf (stand-in)"] = LayerScores(scores, "weight", "linf", {"note": "sensitivity() not in build"})
        return out
    for c in SAFER[:3] if quick else SAFER:
        s = sens(model, calib, c, "linf")
        out[f"{c}/linf"] = LayerScores({n: s.scores[n] for n in names}, s.criterion, s.reduction, s.meta)
    return out


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


def bench_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    model = load(model_path(name, args.models_dir))
    calib, ev = datasets(name, args.quick)
    print(f"\n== {name}: {model} | calibration {len(calib)} ({calib.name}), evaluation {len(ev)} ({ev.name})",
          flush=True)
    ref = run_outputs(model, ev, 32)
    t = time.perf_counter()
    oracle = quantization_oracle(model, calib, "int4", batch_size=16, show_progress=True)
    oracle_s = time.perf_counter() - t
    crit = criteria(model, calib, args.quick)
    agreement = [{"criterion": c, "spearman": spearman(s, oracle),
                  "spearman_per_param": spearman(s, oracle, per_parameter=model)} for c, s in crit.items()]
    layer_names = [x.name for x in quantizable_layers(model)]
    plans: dict[str, Plan] = {}
    for b in args.budgets:
        plans[f"sens:oracle @{b:g}"] = plan_bits(oracle, model, ("int4", "int8"), b)
        for c, sc in crit.items():
            plans[f"sens:{c} @{b:g}"] = plan_bits(sc, model, ("int4", "int8"), b)
        for seed in range(args.random):
            r = np.random.default_rng(1000 + seed).permutation(len(layer_names)).astype(float)
            rs = LayerScores(dict(zip(layer_names, r.tolist(), strict=True)), f"random:{seed}")
            plans[f"random:{seed} @{b:g}"] = plan_bits(rs, model, ("int4", "int8"), b, per_parameter=False)
    plans["uniform-int8"] = uniform_plan(model, "int8")
    plans["uniform-int4"] = uniform_plan(model, "int4")
    int8_mb = plan_cost(model, plans["uniform-int8"].layers).size_mb
    plans["sens:oracle 4/8/16 @int8-size"] = plan_bits(oracle, model, ("int4", "int8", "fp16"), size_mb=int8_mb)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-quant-") as d:
        tmp = Path(d)
        rows.append(evaluate("float32", model, None, ref, ev, tmp, args.repeats, model))
        for pname, plan in plans.items():
            rows.append(evaluate(pname, quantize(model, plan, calib), plan, ref, ev, tmp, args.repeats, model))
            print(f"  {pname}: done", flush=True)
        rows.append(evaluate("ort-static-default", ort_static_default(model, calib, tmp), None, ref, ev, tmp,
                             args.repeats, model))
        sp = plans[f"sens:oracle @{args.budgets[-1]:g}"]
        st = quantize(model, sp, calib, mode="static")
        rows.append(evaluate(f"sens:oracle static QDQ @{args.budgets[-1]:g}", st, sp, ref, ev, tmp, args.repeats,
                             model))
    base_lat = rows[0]["latency_ms"]
    for r in rows:
        r["latency_x"] = r["latency_ms"] / base_lat
    key = "accuracy" if "accuracy" in rows[0] else "top1_agree"
    verdict = []
    for b in args.budgets:
        at = [r for r in rows if r["plan"].endswith(f"@{b:g}") and "static" not in r["plan"]]
        rand = [r for r in at if r["plan"].startswith("random:")]
        sens_row = next(r for r in at if r["plan"].startswith("sens:oracle"))
        verdict.append({
            "avg_bits": b,
            "metric": key,
            "sens_oracle": sens_row[key],
            "sens_oracle_kl": sens_row["kl"],
            "random_best": max(r[key] for r in rand) if rand else None,
            "random_best_kl": min(r["kl"] for r in rand) if rand else None,
            "random_mean_kl": float(np.mean([r["kl"] for r in rand])) if rand else None,
            "kl_better_than_every_random": all(sens_row["kl"] < r["kl"] for r in rand),
            "kl_better_than_uniform_int4": sens_row["kl"] < next(r["kl"] for r in rows if r["plan"] == "uniform-int4"),
        })
    cols = ["plan", "avg_bits", "size_kb", key, "kl", "rel_error", "latency_ms", "latency_x"]
    if key == "accuracy":
        cols.insert(4, "top1_agree")
    print(format_table(rows, cols, title=f"{name}: fidelity on {ev.name} (avg-bits budgets {args.budgets})"))
    print(format_table(agreement, title=f"{name}: Spearman of each criterion with the int4 oracle"))
    print(format_table(verdict, title=f"{name}: sensitivity plan vs random plans of the same budget"))
    print(f"oracle: {len(layer_names)} layers in {oracle_s:.1f} s")
    return {"model": name, "rows": rows, "agreement": agreement, "oracle": oracle.to_dict(),
            "oracle_seconds": oracle_s, "verdict": verdict,
            "plans": {k: v.to_dict() for k, v in plans.items()}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer samples, seeds and repeats (a smoke run)")
    p.add_argument("--models", default="lenet5,resnet8_mnist,efficientnet_lite0")
    p.add_argument("--models-dir", type=Path, help="folder holding <name>.onnx (default: models.zoo)")
    p.add_argument("--avg-bits", default="4.5,5,6", help="avg-bits budgets for the mixed int4/int8 plans")
    p.add_argument("--random", type=int, default=None, help="random plans per model (default 5, quick 2)")
    p.add_argument("--repeats", type=int, default=None, help="latency repeats (default 50, quick 5)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quantize.json")
    args = p.parse_args()
    args.budgets = [float(b) for b in args.avg_bits.split(",") if b]
    args.random = args.random if args.random is not None else (2 if args.quick else 5)
    args.repeats = args.repeats if args.repeats is not None else (5 if args.quick else 50)
    results = [bench_model(m, args) for m in args.models.split(",") if m]
    from onnxslice.io import save_json

    save_json(args.out, {"quick": args.quick, "avg_bits": args.budgets, "models": results,
                         "note": "timings on a shared, loaded machine unless rerun on a quiet one"})
    print(f"\nsaved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
