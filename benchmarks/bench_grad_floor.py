"""Where the rest of the gradient gap to PyTorch is: the kernels an onnxruntime backward cannot avoid.

``python benchmarks/bench_grad_floor.py [--cases MODEL:BATCH ...] [--repeats N]`` (one thread, pinned)
measures, per model, in one process and round-robin (medians):

- torch: forward alone and forward + backward (torch's parameters);
- onnxruntime forward: at the *all* level with only the logits (fused Conv+BN+activation, NCHWc: the
  fastest forward onnxruntime has), at *extended*, and the engine's recording session (every value the
  backward reads kept as an output: since the fused chains, a chain's input and output only) at the
  *disabled* and at the *all* level (the engine picks one, ``GradientEngine.recording_optimized``), and
  at *all* without the values inside *Conv -> BatchNormalization [-> activation]* chains;
- the graph executor's own split (onnxruntime's profile of the emitted gradient graph, ``weights="params"``):
  the forward part, the convolution backward kernels (ConvTranspose, the weight-gradient GEMMs and
  Convs), and everything else (gates, BatchNormalization sums, slices, casts, layout).

The eager engine's split (recording, convolution, matmul and fused-chain rules, other rules) is timed too. The *kernel
floor* is the fused forward plus the faster executor's convolution backward: what today's kernels cost
if the recording were the fused forward and every other pass (gates, BatchNormalization, layout) free.
onnxruntime's profiler inflates many small kernels, so the graph's split is used as shares of its wall
time. Results:
``benchmarks/results/grad_floor.json``.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_grad as bg

from onnxslice.io import save_json

CONV_BWD = {"ConvTranspose", "Gemm", "Conv"}


def _session(proto_bytes: bytes, level: str) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_{level}")
    return ort.InferenceSession(proto_bytes, so, providers=["CPUExecutionProvider"])


def _graph_split(proto_bytes: bytes, feed: dict[str, np.ndarray], repeats: int, forward: set[str]) -> dict[str, float]:
    """ms per run of the emitted gradient graph by part, from onnxruntime's profile (the first run left out)."""
    split: collections.Counter[str] = collections.Counter()
    for node, op, dur in bg.kernel_times(proto_bytes, feed, 1, repeats, skip_first=True):
        # nodes onnxruntime fuses or adds are the backward's
        split["forward" if node in forward else "conv backward" if op in CONV_BWD else "other backward"] += dur
    return {k: v / repeats / 1e3 for k, v in split.items()}


def chain_inner_values(model: Any) -> set[str]:
    """The values inside *Conv -> BatchNormalization [-> Relu | Clip]* chains (``grad.chains.find_chains``):
    what the engine's fused-chain recording no longer keeps, so that onnxruntime can fuse the chain."""
    from onnxslice.grad.chains import find_chains

    return {v for chain in find_chains(model) for v in chain.inner}


def _eager_split(engine: Any, x: np.ndarray, repeats: int) -> dict[str, float]:
    """ms per call of the eager engine by part: recording, convolution rules, every other rule."""

    def key(node: Any) -> str:
        conv = ("Conv", "Gemm", "MatMul", "ConvBatchNormActivation")  # the last: a fused chain (grad/chains.py)
        return "conv backward" if node.op_type in conv else "other backward"

    total, spent = bg.eager_split(engine, x, key, repeats)
    out = {("recording" if k.startswith("record") else k): 1e3 * v for k, v in spent.items()}
    out["engine"] = 1e3 * total - sum(out.values())
    return out


def measure(name: str, batch: int, repeats: int) -> dict[str, Any]:
    import onnxruntime  # noqa: F401
    import torch

    from onnxslice import load
    from onnxslice.grad import GradientEngine
    from onnxslice.grad.emit import emit_gradient_model
    from onnxslice.record import runtime_proto, validate_inputs

    mod, onnx_bytes, x = bg.build(name, batch)
    model = load(onnx_bytes)
    feed = validate_inputs(model, {"x": x})
    engine = GradientEngine(model, "pred", device="cpu", executor="eager", weights="params")
    recorded = runtime_proto(model.proto, engine.recorder.values, []).SerializeToString()
    inner = chain_inner_values(model)
    chained = runtime_proto(model.proto, [v for v in engine.recorder.values if v not in inner], []).SerializeToString()
    grad_proto = runtime_proto(emit_gradient_model(engine, feed)).SerializeToString()
    xt = torch.from_numpy(x)

    def torch_fwd() -> None:
        with torch.no_grad():
            mod(xt)

    def torch_fwd_bwd() -> None:
        xi = xt.clone().requires_grad_(True)
        mod.zero_grad(set_to_none=True)
        mod(xi).sum().backward()

    sessions = {
        "ort forward, all (fused)": (_session(onnx_bytes, "ENABLE_ALL"), {"x": x}),
        "ort forward, extended": (_session(onnx_bytes, "ENABLE_EXTENDED"), {"x": x}),
        "recording, disabled (engine)": (_session(recorded, "DISABLE_ALL"), feed),
        "recording, all": (_session(recorded, "ENABLE_ALL"), feed),
        "recording, fused chains, all": (_session(chained, "ENABLE_ALL"), feed),
    }
    sides: dict[str, Any] = {"torch forward": torch_fwd, "torch forward+backward": torch_fwd_bwd}
    for key, (sess, f) in sessions.items():
        sides[key] = lambda s=sess, f=f: s.run(None, f)
    sides["eager engine"] = lambda: engine(x)
    graph = _session(grad_proto, "ENABLE_EXTENDED")
    sides["graph executor (emitted graph)"] = lambda: graph.run(None, feed)
    times: dict[str, list[float]] = {k: [] for k in sides}
    for fn in sides.values():
        fn()
    for r in range(repeats):
        order = list(sides)[r % len(sides) :] + list(sides)[: r % len(sides)]
        for k in order:
            t = time.perf_counter()
            sides[k]()
            times[k].append(1e3 * (time.perf_counter() - t))
    med = {k: float(np.median(v)) for k, v in times.items()}
    profiled = _graph_split(grad_proto, feed, max(2, repeats // 3), {n.name for n in model.nodes})
    # onnxruntime's profiler inflates many small kernels: its split is used as shares of the graph's wall time
    scale = med["graph executor (emitted graph)"] / sum(profiled.values())
    split = {k: v * scale for k, v in profiled.items()}
    eager = _eager_split(engine, x, max(2, repeats // 3))
    conv = min(split.get("conv backward", 0.0), eager.get("conv backward", 0.0))
    floor = med["ort forward, all (fused)"] + conv
    torch_ms = med["torch forward+backward"]
    return {
        "model": name,
        "batch": batch,
        "ms": med,
        "graph_split_ms": split,
        "eager_split_ms": eager,
        "recorded_values": len(engine.recorder.values),
        "chain_inner_values": len(inner),
        "conv_backward_ms": conv,
        "kernel_floor_ms": floor,
        "kernel_floor_over_torch": floor / torch_ms,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--cases",
        nargs="*",
        default=["resnet18:8", "efficientnet_lite0:8", "lenet5:32"],
        help="MODEL:BATCH pairs (default: resnet18:8 efficientnet_lite0:8 lenet5:32)",
    )
    ap.add_argument("--repeats", type=int, default=7, help="calls per side (default 7)")
    ap.add_argument("--out", default="benchmarks/results/grad_floor.json", help="results JSON")
    args = ap.parse_args()
    bg._pin(1)
    import torch

    torch.set_num_threads(1)
    os.environ["ONNXSLICE_THREADS"] = "1"
    load_before = os.getloadavg()
    rows = []
    for case in args.cases:
        name, batch = case.split(":")
        r = measure(name, int(batch), args.repeats)
        rows.append(r)
        print(f"{name} b{batch} (1 thread), ms:")
        for k, v in r["ms"].items():
            print(f"  {k:<36}{v:9.1f}")
        for side in ("graph", "eager"):
            for k, v in r[f"{side}_split_ms"].items():
                print(f"  {side}: {k:<29}{v:9.1f}")
        print(
            f"  kernel floor (fused forward + the faster executor's convolution rules) {r['kernel_floor_ms']:.1f} ms"
            f" = {r['kernel_floor_over_torch']:.2f} x torch"
        )
    meta = {
        "threads": 1,
        "repeats": args.repeats,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "command": "python benchmarks/bench_grad_floor.py " + " ".join(sys.argv[1:]),
    }
    save_json(args.out, {"meta": meta, "results": rows})
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
