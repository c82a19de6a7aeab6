"""What limits static int8 (QDQ) fidelity on EfficientNet-Lite0: one knob at a time, on one held-out set.

Run ``python benchmarks/bench_qdq_limits.py [--full]`` from the repository root. Every variant is scored
against float32 on the same evaluation images (the 20 ``builtin:samples-imagenet`` images plus crops of
the evaluation photos of ``benchmarks/_images.py``; quick: 80 crops, ``--full``: 180), split by float32's
own confidence: ``confident`` = inputs whose top-1 probability leads the runner-up by >= 0.05. Knobs:

- calibration data: 16 crops of scikit-learn's two photos (the old set) vs 64 / 256 crops of eight
  calibration photos (disjoint from the evaluation photos);
- calibration method: MinMax, Percentile (99.999), Entropy; symmetric activations;
- which layers stay float: the first and last layer, every depthwise conv, or the first k layers by the
  measured int8 oracle (``quantization_scores(..., "oracle:int8")``);
- references: weight-only int8 (per-channel, activations float: the error of int8 weights alone) and fp16.

Latency is not measured here (see ``bench_deploy_quant.py``). Results: ``benchmarks/results/qdq_limits.json``.
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
sys.path.insert(0, str(ROOT / "benchmarks"))

import _images  # noqa: E402
import onnx  # noqa: E402
from bench_deploy import RESULTS, sample_crops, wilson  # noqa: E402

import onnxslice as osl  # noqa: E402
from onnxslice.console import format_table  # noqa: E402
from onnxslice.data import Dataset  # noqa: E402
from onnxslice.io import atomic_write_bytes  # noqa: E402
from onnxslice.latency import load_average  # noqa: E402
from onnxslice.plans.bits_scores import quantization_scores  # noqa: E402
from onnxslice.rewrite import formats  # noqa: E402
from onnxslice.rewrite.fidelity import compare_outputs, run_outputs  # noqa: E402


def qdq(model: osl.Model, calib: np.ndarray, method: str = "minmax", exclude: list[str] | None = None,
        extra: dict[str, Any] | None = None) -> osl.Model:
    """Our QDQ path (pre-processing, per-channel, uint8 activations) with one knob changed."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from onnxslice.rewrite.static_quant import FeedReader

    b = formats.QdqBuilder(model, Dataset({"x": calib}, None, "calibration"), samples=len(calib))
    try:
        dst = b.dir / "knob.onnx"
        methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                   "entropy": CalibrationMethod.Entropy}
        with formats._Quiet():
            quantize_static(str(b.pre), str(dst), FeedReader(b.feed, 16), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=list(exclude or []), calibrate_method=methods[method],
                            extra_options=dict(extra or {}))
        return osl.load(onnx.load(str(dst)))
    finally:
        b.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", default=True, help="80 evaluation crops (default)")
    p.add_argument("--full", action="store_true", help="180 evaluation crops and the 256-crop calibration")
    p.add_argument("--out", type=Path, default=RESULTS / "qdq_limits.json")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    model = osl.load(ROOT / "models" / "efficientnet_lite0.onnx")
    imnet = osl.load_data("builtin:samples-imagenet")
    ev = np.concatenate([imnet.x.astype(np.float32), _images.crops(_images.EVALUATION, 180 if args.full else 80,
                                                                    seed=100)])
    evd = Dataset({"x": ev}, None, "evaluation")
    ref = run_outputs(model, evd)[0]
    prob = np.exp(ref - ref.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    top2 = np.sort(prob, 1)[:, -2:]
    confident = (top2[:, 1] - top2[:, 0]) >= 0.05
    cal64 = _images.crops(_images.CALIBRATION, 64, seed=1)
    rows: list[dict[str, Any]] = []

    def score(label: str, m: osl.Model, seconds: float) -> None:
        out = run_outputs(m, evd)[0]
        same = out.argmax(1) == ref.argmax(1)
        lo, hi = wilson(int(same.sum()), len(same))
        rows.append({"variant": label, "agreement": round(float(same.mean()), 4), "agree_95ci": f"{lo:.3f}-{hi:.3f}",
                     "imagenet20": round(float(same[:20].mean()), 3),
                     "confident": round(float(same[confident].mean()), 4),
                     "kl": round(float(compare_outputs([ref], [out]).kl), 5), "seconds": round(seconds, 1)})
        print(f"{label:52s} {rows[-1]}", flush=True)

    def run(label: str, fn: Any) -> None:
        t0 = time.perf_counter()
        score(label, fn(), time.perf_counter() - t0)

    run("fp16 (reference)", lambda: formats.convert(model, "fp16"))
    run("weight-only int8 (activations float)", lambda: formats.convert(model, "weight", None))
    run("qdq, 16 crops of 2 sklearn photos (old set)", lambda: qdq(model, sample_crops(16, seed=1)))
    run("qdq, 64 crops of 8 calibration photos", lambda: qdq(model, cal64))
    if args.full:
        run("qdq, 256 crops of 8 calibration photos", lambda: qdq(model, _images.crops(_images.CALIBRATION, 256,
                                                                                         seed=1)))
    run("qdq 64, percentile", lambda: qdq(model, cal64, "percentile"))
    run("qdq 64, entropy", lambda: qdq(model, cal64, "entropy"))
    run("qdq 64, symmetric activations", lambda: qdq(model, cal64, extra={"ActivationSymmetric": True}))
    b = formats.QdqBuilder(model, Dataset({"x": cal64[:2]}, None, "c"))
    layers = list(b.layers)
    b.close()
    run("qdq 64, first + last layer float", lambda: qdq(model, cal64, exclude=[layers[0], layers[-1]]))
    dw = [n for n in layers if "depthwise" in n]
    run(f"qdq 64, every depthwise conv float ({len(dw)})", lambda: qdq(model, cal64, exclude=dw))
    t0 = time.perf_counter()
    sc = quantization_scores(model, Dataset({"x": cal64}, None, "c"), "oracle:int8", samples=32).scores
    oracle_s = time.perf_counter() - t0
    order = sorted([n for n in layers if n in sc], key=lambda n: -sc[n])
    for k in (2, 4, 8, 12):
        run(f"qdq 64, first {k} layers by the int8 oracle float", lambda k=k: qdq(model, cal64, exclude=order[:k]))
    print(format_table(rows, title=f"EfficientNet-Lite0 QDQ knobs ({len(ev)} evaluation images, "
                                   f"{int(confident.sum())} confident)"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"machine": {"load_average": load_average(), "note": "shared 2-core machine"},
           "evaluation": f"samples-imagenet (20) + {len(ev) - 20} crops of {_images.describe(_images.EVALUATION)}",
           "calibration_photos": _images.describe(_images.CALIBRATION),
           "confident": int(confident.sum()), "n": len(ev), "oracle_seconds": oracle_s,
           "oracle_order": order[:12], "rows": rows}
    atomic_write_bytes(args.out, json.dumps(doc, indent=1).encode())
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
