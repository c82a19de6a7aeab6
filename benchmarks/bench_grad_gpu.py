"""The gradient engine on a GPU: ``python benchmarks/bench_grad_gpu.py [--allow-cpu] [--repeats N]``.

The prepared device check of the gradient engine (one short run on a lent GPU machine). Per reference
model committed in ``models/`` (no torch needed, random inputs with a fixed seed), it times, one
after the other in one process, medians after a warm-up:

- the CPU engine (``GradientEngine(device="cpu", executor="eager")``, the reference);
- the engine with ``device="cuda"``: the emitted gradient graph in one onnxruntime session on the CUDA
  provider (weights and input gradients of ``pred``), with its first call (emission, session build,
  run) apart;
- the recording alone (every value the backward reads) on CUDA and on the CPU;

and records the CUDA graph's agreement with the CPU engine (largest difference over the largest
gradient of each kind, :func:`onnxslice.grad.emitted.graph_disagreement`) and the providers the
sessions really use. Results: ``benchmarks/results/grad_gpu.json``.

Without a usable CUDA provider it says so and exits 2; ``--allow-cpu`` then runs the same steps with
the graph executor on the CPU instead (to check the script; results go to ``--out`` only when given).
On the device machine::

    PYTHONUNBUFFERED=1 python benchmarks/bench_grad_gpu.py --out $OUT/grad_gpu.json
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxslice.grad import GradientEngine  # noqa: E402
from onnxslice.grad.emitted import graph_disagreement  # noqa: E402
from onnxslice.io import save_json  # noqa: E402
from onnxslice.model import load  # noqa: E402
from onnxslice.record import Recorder, cuda_usable, validate_inputs  # noqa: E402

#: (committed model, batch) pairs
CASES = [("lenet5", 32), ("resnet8_mnist", 8), ("efficientnet_lite0", 8), ("efficientnet_lite0", 32)]


def _median_ms(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def _gpu_name() -> str:
    if shutil.which("nvidia-smi") is None:
        return ""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def bench(name: str, batch: int, repeats: int, device: str) -> dict[str, Any]:
    """One model: CPU engine, the ``device`` graph engine, and the recordings (module docstring)."""
    m = load(ROOT / "models" / f"{name}.onnx")
    i = m.inputs[0]
    shape = [d if isinstance(d, int) and d > 0 else batch for d in i.shape or ()]
    shape[0] = batch
    feed = validate_inputs(m, {i.name: np.random.default_rng(0).random(shape).astype(np.float32)})
    cpu = GradientEngine(m, "pred", device="cpu", executor="eager")
    gpu = GradientEngine(m, "pred", device=device, executor="graph")  # type: ignore[arg-type]
    t = time.perf_counter()
    g_dev = gpu(feed)  # emission, session build, first run
    first = time.perf_counter() - t
    providers = gpu._runner.providers(feed) if gpu._runner else []
    g_cpu = cpu(feed)
    row: dict[str, Any] = {
        "model": name,
        "batch": batch,
        "device": device,
        "providers": providers,
        "backend": g_dev.meta.get("backend", "eager"),
        "cpu_eager_ms": _median_ms(lambda: cpu(feed), repeats),
        "device_graph_ms": _median_ms(lambda: gpu(feed), repeats),
        "device_graph_first_call_s": first,
        "agreement_with_cpu": graph_disagreement(g_dev, g_cpu),
    }
    for where in ("cpu", device):
        rec = Recorder(m, cpu.record_values, where)  # type: ignore[arg-type]
        row[f"recording_{where}_ms"] = _median_ms(lambda rec=rec: rec.run(feed, validated=True), repeats)
        row[f"recording_{where}_providers"] = list(rec.session.get_providers())
    row["device_over_cpu"] = row["device_graph_ms"] / row["cpu_eager_ms"]
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10, help="calls per side after a warm-up (default 10)")
    ap.add_argument("--cases", nargs="*", default=None, help="MODEL:BATCH pairs (default: all)")
    ap.add_argument("--allow-cpu", action="store_true", help="without CUDA, run the steps on the CPU (a dry run)")
    ap.add_argument("--out", default=None, help="results JSON (default benchmarks/results/grad_gpu.json on CUDA)")
    args = ap.parse_args()
    device = "cuda" if cuda_usable() else "cpu"
    if device == "cpu" and not args.allow_cpu:
        print(
            "bench_grad_gpu: onnxruntime cannot use CUDA here (no GPU, or onnxruntime-gpu's CUDA libraries "
            "are missing); run it on a GPU machine, or pass --allow-cpu for a dry run on the CPU",
            file=sys.stderr,
        )
        return 2
    cases = [(c.split(":")[0], int(c.split(":")[1])) for c in args.cases] if args.cases else CASES
    rows = []
    print(
        f"{'model':20s}{'batch':>6s}  {'cpu eager ms':>12s}  {device + ' graph ms':>14s}  {'ratio':>6s}  "
        f"{'rec cpu ms':>10s}  {'rec ' + device + ' ms':>11s}  {'agreement':>9s}"
    )
    for name, batch in cases:
        r = bench(name, batch, args.repeats, device)
        rows.append(r)
        print(
            f"{name:20s}{batch:>6d}  {r['cpu_eager_ms']:>12.1f}  {r['device_graph_ms']:>14.1f}  "
            f"{r['device_over_cpu']:>6.2f}  {r['recording_cpu_ms']:>10.1f}  {r[f'recording_{device}_ms']:>11.1f}  "
            f"{r['agreement_with_cpu']:>9.1e}",
            flush=True,
        )
    out = args.out or (str(ROOT / "benchmarks" / "results" / "grad_gpu.json") if device == "cuda" else None)
    if out:
        import onnxruntime as ort

        meta = {
            "device": device,
            "gpu": _gpu_name(),
            "onnxruntime": ort.__version__,
            "available_providers": ort.get_available_providers(),
            "repeats": args.repeats,
            "cpu_threads": os.cpu_count(),
            "python": platform.python_version(),
            "command": "python benchmarks/bench_grad_gpu.py " + " ".join(sys.argv[1:]),
        }
        print(f"saved {save_json(out, {'meta': meta, 'results': rows})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
