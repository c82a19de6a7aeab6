"""Emitted gradient graph vs the eager engine on the CPU: ``python benchmarks/bench_grad_emit.py [--full]``.

Both sides compute the weight and input gradients of the ``pred`` target on the same batch of a
reference model: the eager :class:`~onnxslice.grad.GradientEngine` (onnxruntime recording + VJP rules
on numpy and onnxruntime kernels) and the gradient graph ``onnxslice grad --emit`` writes, run as one
onnxruntime session (CPU provider, graph optimizations on). One thread per side (onnxruntime
``intra_op_num_threads=1`` through ``ONNXSLICE_THREADS``, ``OMP_NUM_THREADS=1``), calls alternated
round-robin in one process (which side goes first alternates too), median wall time per call after a
warm-up. Also recorded: the time to emit the graph, its node count, and its agreement with the eager
engine (relative to the largest gradient of each kind) with onnxruntime's optimizations off and on.
Quick (default): LeNet-5 b32, ResNet-8 (MNIST) b8, ResNet-18 (CIFAR) b8, 5 calls per side; ``--full``
adds EfficientNet-Lite0 b8 and makes 15 calls. Results: ``benchmarks/results/grad_emit.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("ONNXSLICE_THREADS", "1")
os.environ.setdefault("ONNXSLICE_PROGRESS", "0")

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnxruntime as ort  # noqa: E402

from onnxslice.grad import GradientEngine  # noqa: E402
from onnxslice.grad.emit import emission_error, emit_gradient_model, grad_output_name  # noqa: E402
from onnxslice.io import atomic_write_bytes  # noqa: E402
from onnxslice.model import load  # noqa: E402
from onnxslice.record import validate_inputs  # noqa: E402

QUICK = [("lenet5", 32), ("resnet8_mnist", 8), ("resnet18_cifar", 8)]
FULL = [*QUICK, ("efficientnet_lite0", 8)]


def _path(name: str) -> Path:
    if name == "resnet18_cifar":
        from models import zoo

        return zoo.ensure(name)
    return ROOT / "models" / f"{name}.onnx"


def _rel(res: dict[str, np.ndarray], g: Any) -> float:
    worst = 0.0
    for group in (g.weights, g.inputs):
        scale = max(float(np.abs(v).max()) for v in group.values()) or 1.0
        for k, v in group.items():
            worst = max(worst, float(np.abs(res[grad_output_name(k)] - v).max()) / scale)
    return worst


def bench(name: str, batch: int, repeats: int) -> dict[str, Any]:
    path = _path(name)
    m = load(path)
    rng = np.random.default_rng(0)
    i = m.inputs[0]
    shape = [d if isinstance(d, int) and d > 0 else batch for d in i.shape]
    feed = validate_inputs(m, {i.name: rng.random(shape).astype(np.float32)})
    engine = GradientEngine(m, "pred", device="cpu")
    t0 = time.perf_counter()
    proto = emit_gradient_model(engine, feed, source=path.name)
    t_emit = time.perf_counter() - t0
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    t0 = time.perf_counter()
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    t_session = time.perf_counter() - t0
    names = [o.name for o in sess.get_outputs()]

    def emitted() -> dict[str, np.ndarray]:
        return dict(zip(names, sess.run(None, feed), strict=True))

    def eager() -> Any:
        return engine(feed)

    g = eager()
    res = emitted()  # warm-up of both sides
    times: dict[str, list[float]] = {"eager": [], "emitted": []}
    for r in range(repeats):
        order = [("eager", eager), ("emitted", emitted)]
        for side, fn in order if r % 2 == 0 else order[::-1]:
            t = time.perf_counter()
            fn()
            times[side].append(time.perf_counter() - t)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    row = {
        "model": name,
        "batch": batch,
        "eager_ms": round(med["eager"], 2),
        "emitted_ms": round(med["emitted"], 2),
        "emitted_over_eager": round(med["emitted"] / med["eager"], 3),
        "emit_s": round(t_emit, 3),
        "session_build_s": round(t_session, 3),
        "graph_nodes": len(proto.graph.node),
        "agreement_optimizations_off": emission_error(engine, proto, feed),
        "agreement_optimizations_on": _rel(res, g),
        "repeats": repeats,
    }
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="add EfficientNet-Lite0 b8 and make 15 calls (default: quick)")
    ap.add_argument("--repeats", type=int, default=None, help="calls per side (default: 5 quick, 15 full)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "grad_emit.json"), help="results JSON")
    ap.add_argument("--note", default="", help="machine conditions to record (default: none)")
    args = ap.parse_args()
    repeats = args.repeats or (15 if args.full else 5)
    rows = []
    for name, batch in FULL if args.full else QUICK:
        row = bench(name, batch, repeats)
        rows.append(row)
        print(f"{name:20s} b{batch:<3d} eager {row['eager_ms']:9.2f} ms  emitted {row['emitted_ms']:9.2f} ms  "
              f"ratio {row['emitted_over_eager']:.2f}  emit {row['emit_s']:.2f} s  "
              f"agree off {row['agreement_optimizations_off']:.1e} on {row['agreement_optimizations_on']:.1e}",
              flush=True)
    out = {
        "benchmark": "benchmarks/bench_grad_emit.py" + (" --full" if args.full else ""),
        "method": "pred target; weight+input gradients; 1 thread per side (ONNXSLICE_THREADS=1, OMP_NUM_THREADS=1, "
                  "emitted session intra_op_num_threads=1, CPU provider, optimizations on); round-robin in one "
                  "process, alternating order; median per call after one warm-up call",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, onnxruntime {ort.__version__}",
        "conditions": args.note,
        "gpu": "not measured: no GPU on this machine",
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(Path(args.out), (json.dumps(out, indent=2) + "\n").encode())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
