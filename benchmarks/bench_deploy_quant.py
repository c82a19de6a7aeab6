"""The quantization half of ``bench_deploy.py`` alone, on EfficientNet-Lite0, ResNet-8 and a transformer encoder.

Run ``python benchmarks/bench_deploy_quant.py [--full] [--models ...] [--order-by oracle:int8]`` from the
repository root. One run, one table per model (every variant of a model timed round-robin with float32 in
one session set: onnxruntime CPU, graph optimizations on, 1 intra-op thread, batch 1, median per-repeat
ratio): float32; ``onnxruntime.quantization.quantize_static`` with every setting at its default (uniform
int8, the baseline); ``qdq`` and ``dynamic`` uniform and their sensitivity plans (the fewest layers, in
``--order-by`` order, kept float until top-1 agreement on the selection samples is >= 0.99), a random plan
with as many float layers, weight-only int8, fp16, MatMulNBits and the rival ``onnxsim``'s mixed
precision. Fidelity on held-out data (see ``bench_deploy.quant_datasets``): top-1 agreement with its 95%
Wilson interval, the agreement on the inputs where float32's top-1 probability leads the runner-up by
>= 0.05 (``agree_confident``), KL and accuracy. ``--quick`` (default) evaluates EfficientNet-Lite0 on 100
images and the MNIST models on 500 digits; ``--full`` on 200 and 1,000. Results:
``benchmarks/results/deploy_quant.json`` and ``deploy_quant.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_deploy  # noqa: E402

import onnxslice as osl  # noqa: E402
from onnxslice.console import format_table  # noqa: E402
from onnxslice.io import atomic_write_bytes  # noqa: E402
from onnxslice.latency import load_average  # noqa: E402


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(results["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 5), squeeze=False)
    for ax, name in zip(axes[0], models, strict=True):
        for r in results["models"][name]["rows"]:
            ax.scatter(r["latency"], r["agreement"], s=30)
            ax.annotate(r["variant"][:40], (r["latency"], r["agreement"]), fontsize=6)
        ax.axvline(1.0, color="grey", lw=0.5)
        ax.axhline(0.99, color="grey", lw=0.5, ls=":")
        ax.set_xlabel("latency / float32 (CPU, 1 thread, batch 1)")
        ax.set_ylabel("top-1 agreement with float32 (held out)")
        ax.set_title(name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", default=True, help="smaller evaluation sets (default)")
    p.add_argument("--full", action="store_true", help="200 images / 1,000 digits, 40 latency repeats")
    p.add_argument("--models", default="efficientnet_lite0,resnet8_mnist,mnist_encoder")
    p.add_argument("--order-by", default="oracle:int8",
                   help="layer order for keeping layers float: a quantization_scores criterion, or 'measured' "
                        "(the KL gain of keeping each layer alone float; default oracle:int8)")
    p.add_argument("--goal", type=float, default=0.99,
                   help="top-1 agreement on the selection samples the plans keep layers float for (default 0.99)")
    p.add_argument("--out", type=Path, default=bench_deploy.RESULTS / "deploy_quant.json")
    args = p.parse_args()
    args.repeats = 40 if args.full else 20
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    results: dict[str, Any] = {"machine": {"load_average_start": load_average(), "cpu_count": os.cpu_count(),
                                           "note": "shared machine (5 helpers on 2 cores); ratios from one "
                                                   "round-robin run, absolute times are noisy"},
                               "full": args.full, "order_by": args.order_by, "models": {}}
    for name in args.models.split(","):
        print(f"== {name}", flush=True)
        if name == "mnist_encoder":
            from _encoder import encoder_model

            model = osl.load(encoder_model())
        else:
            model = osl.load(ROOT / "models" / f"{name}.onnx")
        entry = bench_deploy.quantization(name, model, None, None, args)  # type: ignore[arg-type]
        entry["load_average"] = load_average()
        print(format_table(entry["rows"], title=f"{name}: quantization (latency / float32, one run; "
                                                 f"{entry['evaluation']})"))
        print(f"auto would pick: {entry['auto_pick_on_evaluation']}")
        results["models"][name] = entry
        results["machine"]["load_average_end"] = load_average()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(args.out, (json.dumps(results, indent=1, default=str)).encode())
    plot(results, args.out.with_suffix(".png"))
    print(f"saved {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
