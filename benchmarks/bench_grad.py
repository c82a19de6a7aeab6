"""Gradient benchmark: onnxslice (onnxruntime forward + VJP rules) vs PyTorch CPU autograd, same model.

Run ``python benchmarks/bench_grad.py [--full] [--threads 1 2] [--profile NAME]``. For each model the
same torch module is exported to ONNX (BatchNorm kept, as in the reference exports) and both sides
compute the weight and input gradients of the ``pred`` target (the predicted class's logit) on the
same batch: LeNet-5 b32 (1x28x28), ResNet-18 CIFAR b8 and b32 (3x32x32), EfficientNet-Lite0 b8
(ReLU6, no squeeze-excitation, 3x224x224).

Three sides: torch, the eager engine (``executor="eager"``) and the engine's graph executor
(``executor="graph"``: the emitted gradient graph run by onnxruntime). Method: each side lives in its own
child process with its threads pinned (``OMP_NUM_THREADS``, ``torch.set_num_threads``, onnxruntime
``intra_op_num_threads`` through ``ONNXSLICE_THREADS``); the parent asks the sides for one gradient call at
a time, each side going first in turn (round-robin), so machine load hits all alike. Reported per model and
thread count: median wall time per call (after a warm-up), the ratios to torch (goal: <= 1.0), the peak
resident memory each side adds (the peak, ``VmHWM``, reset once the model is loaded, its runtime has run the
forward once and the C heap is trimmed, minus the resident size then) and its ratio, the agreement of the
input gradients with torch, the graph's first call (emission + session build), and the one-shot build cost
of ``osl.gradients(path, x)`` (first call minus a steady eager call; the second one-shot call hits the
engine cache). ``--profile NAME`` prints the time per VJP op type and the recording on one model;
``--profile-graph NAME`` onnxruntime's kernel time per op type of the graph executor's session. Results go
to ``benchmarks/results/grad.json`` (1 thread) and ``grad_2threads.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxslice.cpu import cpu_flags, cpu_name  # noqa: E402
from onnxslice.grad import GradientEngine  # noqa: E402
from onnxslice.grad.diskcache import load_cached  # noqa: E402
from onnxslice.io import save_json  # noqa: E402
from onnxslice.model import Model, load  # noqa: E402


# -- the models (torch), exported to ONNX -------------------------------------------------------------
class LeNet5(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 6, 5, padding=2), nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2, self.fc3 = nn.Linear(400, 120), nn.Linear(120, 84), nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.flatten(nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2), 1)
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.c2, self.b2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.short = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.b2(self.c2(torch.relu(self.b1(self.c1(x))))) + self.short(x))


class ResNet18(nn.Module):
    """ResNet-18 for 32x32 inputs (3x3 stem, no max-pool), as in the CIFAR literature."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, expand: int, k: int, stride: int) -> None:
        super().__init__()
        mid = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6()]
        layers += [nn.Conv2d(mid, mid, k, stride, k // 2, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU6()]
        layers += [nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + x if self.residual else self.body(x)


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0: the B0 block table with ReLU6 and no squeeze-excitation (4.7 M parameters)."""

    CONFIG = ((1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 40, 2, 2, 5), (6, 80, 3, 2, 3), (6, 112, 3, 1, 5),
              (6, 192, 4, 2, 5), (6, 320, 1, 1, 3))  # fmt: skip

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6())
        blocks, cin = [], 32
        for expand, cout, repeats, stride, k in self.CONFIG:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, expand, k, stride if i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6())
        self.fc = nn.Linear(1280, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


MODELS: dict[str, tuple[type[nn.Module], tuple[int, ...], int]] = {
    "lenet5": (LeNet5, (1, 28, 28), 32),
    "resnet18": (ResNet18, (3, 32, 32), 8),
    "efficientnet_lite0": (EfficientNetLite0, (3, 224, 224), 8),
}
#: (model, batch) pairs of the issue's goals, with the goal ratio onnxslice / torch
CASES: list[tuple[str, int, float]] = [("lenet5", 32, 0.8), ("resnet18", 8, 1.0), ("resnet18", 32, 1.0),
                                       ("efficientnet_lite0", 8, 0.8)]  # fmt: skip


def build(name: str, batch: int | None = None) -> tuple[nn.Module, bytes, np.ndarray]:
    """The torch module (eval, non-trivial BN statistics), its ONNX export and a batch of inputs."""
    cls, shape, default = MODELS[name]
    batch = batch or default
    torch.manual_seed(0)
    mod = cls().eval()
    with torch.no_grad():
        for m in mod.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    f = io.BytesIO()
    torch.onnx.export(
        mod, (torch.randn(2, *shape),), f, dynamo=False, do_constant_folding=False, input_names=["x"],
        output_names=["logits"], dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}}, opset_version=17,
    )  # fmt: skip
    x = np.random.default_rng(0).random((batch, *shape), dtype=np.float32)
    return mod, f.getvalue(), x


# -- one side per child process ---------------------------------------------------------------------
def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_mib() -> float:
    """The peak resident size since the last :func:`_reset_peak` (``VmHWM``; ``ru_maxrss`` where unreadable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _reset_peak() -> None:
    """Start the peak over at the current resident size, so that the model export before it does not count
    (before session 6 every side's peak included its torch export: ResNet-18 b8 about 127 MiB)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _start_peak() -> float:
    """Hand the C heap's free pages back (every side alike), reset the peak and return the resident size:
    the base each side's peak is measured from. Without the trim, buffers freed before it (a model load's,
    an export's) stayed resident in the base and were reused by the measured work, which then looked
    cheaper than it was (ResNet-18 b8, eager: +83 MiB untrimmed against +160 trimmed, in session 9)."""
    from onnxslice.session import trim_heap

    trim_heap()
    base = _rss_mib()
    _reset_peak()
    return base


def _pin(threads: int) -> None:
    """Pin every thread pool of this process: BLAS/OpenMP (already loaded), torch, onnxruntime sessions."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "ONNXSLICE_THREADS"):
        os.environ[var] = str(threads)
    try:
        from threadpoolctl import threadpool_limits  # installed with scikit-learn

        threadpool_limits(threads)
    except ImportError:
        print("threadpoolctl is missing: numpy's BLAS threads are not pinned", file=sys.stderr)
    torch.set_num_threads(threads)


def _weights(name: str, model: Any, which: str) -> str | list[str]:
    """``params`` (the engine's own choice of the model's parameters, checked here to be torch's: what
    torch's side differentiates), ``all`` (every float initializer: BatchNorm statistics and Clip bounds
    too) or ``torch`` (the initializers named as torch parameters)."""
    if which == "all":
        return "all"
    params = {k for k, _ in MODELS[name][0]().named_parameters()}
    if which == "params":
        if set(model.parameter_names) != params:
            raise SystemExit(f"{name}: Model.parameter_names is not torch's parameter set")
        return "params"
    return [w for w in model.initializer_names if w in params]


def _model_file(name: str) -> Path:
    """Where ``--load cache`` writes a model's export for the onnxslice sides (the same in every process)."""
    return Path(tempfile.gettempdir()) / "onnxslice-bench" / f"{name}.onnx"


def _prepare(name: str) -> None:
    """``--load cache``: write the export and fill the disk cache once, as a user's earlier process would
    have (``ONNXSLICE_CACHE`` under the bench's folder, inherited by the sides)."""
    path = _model_file(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = build(name)[1]
    if not path.is_file() or path.read_bytes() != data:
        path.write_bytes(data)
    os.environ["ONNXSLICE_CACHE"] = str(path.parent / "cache")
    load_cached(path)


def _loaded(name: str, onnx_bytes: bytes) -> Model:
    """The onnxslice sides' model. ``--load bytes`` (default): ``load`` of the export's bytes (its weights
    become arrays, held once, before the peak is reset). ``--load cache``: as an engine gets a file
    (``GradientEngine(path)``, ``osl.gradients(path)``) in a later process, a disk cache hit whose weights are
    mapped and held once (``Model.detached``), read once here so that they are resident before the peak is
    reset, as torch's parameters are."""
    if os.environ.get("ONNXSLICE_BENCH_LOAD", "bytes") != "cache":
        return load(onnx_bytes)
    model = load_cached(_model_file(name))
    for n in model.initializer_names:
        model.initializer(n).sum()
    return model


def _warm_runtime(model: Model, x: np.ndarray) -> None:
    """Run the model's forward once in a throw-away onnxruntime session before the peak is reset, as the
    torch side's export has run its forward in torch: each runtime's one-time process set-up (onnxruntime's
    environment, thread pool and kernel registry: 8.4 MiB on a tiny model; torch's forward machinery) then
    counts on neither side, and what remains is each side's gradient work."""
    from onnxslice.record import Recorder

    Recorder(model, None, "cpu").run({model.input_names[0]: x})  # handed the model's weights, no copy


def _onnxslice_side(name: str, batch: int, threads: int, conn: Any, which: str = "all") -> None:
    _pin(threads)
    _, onnx_bytes, x = build(name, batch)
    path = Path(tempfile.mkdtemp()) / f"{name}.onnx"
    path.write_bytes(onnx_bytes)
    import onnxslice as osl

    def oneshot() -> dict[str, float]:
        t = time.perf_counter()
        osl.gradients(str(path), x)  # load, build, sessions, first call
        first = time.perf_counter() - t
        t = time.perf_counter()
        osl.gradients(str(path), x)  # again: the engine cache serves it
        return {"oneshot_first_s": first, "oneshot_cached_s": time.perf_counter() - t}

    model = _loaded(name, onnx_bytes)
    _warm_runtime(model, x)
    base = _start_peak()  # every side: after the weights are in memory and the runtime has run once
    engine = GradientEngine(model, "pred", device="cpu", executor="eager", weights=_weights(name, model, which))
    engine(x)  # warm-up
    _serve(conn, lambda: engine(x).inputs["x"], base, oneshot)


def _graph_side(name: str, batch: int, threads: int, conn: Any, which: str = "all") -> None:
    """The engine's graph executor: the emitted gradient graph in one onnxruntime session (CPU)."""
    _pin(threads)
    _, onnx_bytes, x = build(name, batch)
    model = _loaded(name, onnx_bytes)
    _warm_runtime(model, x)
    base = _start_peak()
    engine = GradientEngine(model, "pred", device="cpu", executor="graph", weights=_weights(name, model, which))
    t = time.perf_counter()
    engine(x)  # emission, session build and the first run
    first = time.perf_counter() - t
    _serve(conn, lambda: engine(x).inputs["x"], base, lambda: {"graph_first_call_s": first})


def _torch_side(name: str, batch: int, threads: int, conn: Any, which: str = "all") -> None:
    _pin(threads)
    mod, _, x = build(name, batch)
    xt = torch.from_numpy(x)
    base = _start_peak()

    def step() -> np.ndarray:
        xi = xt.clone().requires_grad_(True)
        mod.zero_grad(set_to_none=True)
        logits = mod(xi)
        logits.gather(1, logits.argmax(1, keepdim=True)).sum().backward()
        return xi.grad.numpy()  # type: ignore[union-attr]

    step()
    _serve(conn, step, base, dict)


def _oneshot_child(path: str, name: str, batch: int, threads: int, conn: Any) -> None:
    """A fresh process: ``osl.gradients(path, x)`` twice; the first call pays the build, the second the engine cache."""
    _pin(threads)
    x = np.random.default_rng(0).random((batch, *MODELS[name][1]), dtype=np.float32)
    import onnxslice as osl

    t = time.perf_counter()
    osl.gradients(path, x)
    first = time.perf_counter() - t
    steady = []
    for _ in range(3):
        t = time.perf_counter()
        osl.gradients(path, x)
        steady.append(time.perf_counter() - t)
    conn.send({"first_s": first, "steady_s": statistics.median(steady)})


def oneshot_fresh(name: str, batch: int, threads: int) -> dict[str, Any]:
    """One-shot build cost in fresh processes sharing an empty on-disk cache (``$ONNXSLICE_CACHE``): the
    first process loads the file and writes the cache entry, three more read it (warm: the median of their
    build costs, each one listed in ``oneshot_warm_builds_s``)."""
    _, onnx_bytes, _ = build(name, batch)
    tmp = Path(tempfile.mkdtemp())
    path = tmp / f"{name}.onnx"
    path.write_bytes(onnx_bytes)
    ctx = mp.get_context("spawn")
    old = os.environ.get("ONNXSLICE_CACHE")
    os.environ["ONNXSLICE_CACHE"] = str(tmp / "cache")
    res: dict[str, Any] = {}
    try:
        warm: list[dict[str, float]] = []
        for run in ("cold", "warm", "warm", "warm"):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_oneshot_child, args=(str(path), name, batch, threads, child))
            proc.start()
            r = parent.recv()
            proc.join()
            r["build_s"] = r["first_s"] - r["steady_s"]
            if run == "warm":
                warm.append(r)
                continue
            for k, v in r.items():
                res[f"oneshot_{run}_{k}"] = v
        mid = sorted(warm, key=lambda r: r["build_s"])[len(warm) // 2]
        for k, v in mid.items():
            res[f"oneshot_warm_{k}"] = v
        res["oneshot_warm_builds_s"] = [r["build_s"] for r in warm]
    finally:
        if old is None:
            os.environ.pop("ONNXSLICE_CACHE", None)
        else:
            os.environ["ONNXSLICE_CACHE"] = old
    return res


def _serve(conn: Any, step: Any, base: float, after: Any) -> None:
    """Answer 'run' with the seconds of one call; 'done' with the peak RSS, the last result and ``after()``
    (run once the peak is read, so that it does not count)."""
    conn.send("ready")
    out = None
    while conn.recv() == "run":
        t = time.perf_counter()
        out = step()
        conn.send(time.perf_counter() - t)
    peak = _peak_mib() - base
    conn.send({"peak_mib": peak, "input_grad": out, **after()})


def bench(name: str, batch: int, threads: int, repeats: int, which: str = "all") -> dict[str, Any]:
    """Both sides on one model, calls interleaved round-robin; medians, ratios and memory."""
    ctx = mp.get_context("spawn")
    if os.environ.get("ONNXSLICE_BENCH_LOAD") == "cache":
        _prepare(name)
    sides = {}
    for side, fn in (("onnxslice", _onnxslice_side), ("graph", _graph_side), ("torch", _torch_side)):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=fn, args=(name, batch, threads, child, which))
        proc.start()
        sides[side] = (proc, parent)
    for _proc, conn in sides.values():
        assert conn.recv() == "ready"
    times: dict[str, list[float]] = {k: [] for k in sides}
    order = list(sides)
    for r in range(repeats):
        for side in order[r % 3 :] + order[: r % 3]:  # each side goes first in turn
            sides[side][1].send("run")
            times[side].append(sides[side][1].recv())
    res = {}
    for side, (proc, conn) in sides.items():
        conn.send("done")
        res[side] = conn.recv()
        proc.join()
    a, b = res["onnxslice"].pop("input_grad"), res["torch"].pop("input_grad")
    c = res["graph"].pop("input_grad")
    t_ours, t_torch = statistics.median(times["onnxslice"]), statistics.median(times["torch"])
    t_graph = statistics.median(times["graph"])
    return {
        "model": name,
        "batch": batch,
        "threads": threads,
        "onnxslice_ms": 1e3 * t_ours,
        "torch_ms": 1e3 * t_torch,
        "ratio": t_ours / t_torch,
        "onnxslice_peak_mib": res["onnxslice"]["peak_mib"],
        "torch_peak_mib": res["torch"]["peak_mib"],
        "rss_ratio": res["onnxslice"]["peak_mib"] / max(res["torch"]["peak_mib"], 1e-9),
        "oneshot_build_s": res["onnxslice"]["oneshot_first_s"] - t_ours,
        "oneshot_cached_s": res["onnxslice"]["oneshot_cached_s"],
        "input_grad_rel_error": float(np.linalg.norm(a - b) / np.linalg.norm(b)),
        "graph_ms": 1e3 * t_graph,
        "graph_ratio": t_graph / t_torch,
        "graph_over_eager": t_graph / t_ours,
        "best_ratio": min(t_graph, t_ours) / t_torch,
        "graph_peak_mib": res["graph"]["peak_mib"],
        "graph_rss_ratio": res["graph"]["peak_mib"] / max(res["torch"]["peak_mib"], 1e-9),
        "graph_first_call_s": res["graph"]["graph_first_call_s"],
        "graph_input_grad_rel_error": float(np.linalg.norm(c - b) / np.linalg.norm(b)),
        **oneshot_fresh(name, batch, threads),
        "repeats": repeats,
        "times_ms": {k: [round(1e3 * v, 2) for v in ts] for k, ts in times.items()},
    }


def kernel_times(proto_bytes: bytes, feed: dict[str, np.ndarray], threads: int, repeats: int,
                 skip_first: bool = False) -> list[tuple[str, str, float]]:
    """``(node, op type, microseconds)`` of every kernel onnxruntime's profiler records over ``repeats`` runs
    of a session at the *extended* level (the graph executor's), one thread count pinned; ``skip_first``
    runs once more and leaves out the first run (it allocates)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # as the graph executor
    so.enable_profiling = True
    so.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "ort")
    sess = ort.InferenceSession(proto_bytes, so, providers=["CPUExecutionProvider"])
    for _ in range(repeats + int(skip_first)):
        sess.run(None, feed)
    events = json.loads(Path(sess.end_profiling()).read_text())
    runs = sorted((ev["ts"], ev["ts"] + ev["dur"]) for ev in events if ev.get("name") == "model_run")
    after = runs[0][1] if skip_first and runs else -1
    return [(ev["name"][: -len("_kernel_time")], ev["args"].get("op_name", "?"), float(ev["dur"])) for ev in events
            if ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time") and ev["ts"] > after]


def profile_graph(name: str, batch: int | None = None, threads: int = 1, repeats: int = 3,
                  weights: str = "params") -> None:
    """onnxruntime's profile of the graph executor's session: kernel time per op type and the top nodes."""
    import collections

    from onnxslice.grad.emit import emit_gradient_model
    from onnxslice.record import runtime_proto, validate_inputs

    _pin(threads)
    _, onnx_bytes, x = build(name, batch)
    model = load(onnx_bytes)
    feed = validate_inputs(model, {"x": x})
    engine = GradientEngine(model, "pred", device="cpu", executor="eager", weights=_weights(name, model, weights))
    proto = runtime_proto(emit_gradient_model(engine, feed))
    by_op: collections.Counter[str] = collections.Counter()
    by_node: collections.Counter[str] = collections.Counter()
    count: collections.Counter[str] = collections.Counter()
    for node, op, dur in kernel_times(proto.SerializeToString(), feed, threads, repeats):
        by_op[op] += dur
        by_node[f"{node} ({op})"] += dur
        count[op] += 1
    total = sum(by_op.values()) or 1
    print(f"{name} b{len(x)}, graph executor, {threads} thread(s): {total / repeats / 1e3:.1f} ms kernel time per run")
    for op, d in by_op.most_common(12):
        print(f"  {op:<24}{d / repeats / 1e3:9.1f} ms {100 * d / total:5.1f}%  nodes {count[op] // repeats}")
    print("  top nodes:")
    for node, d in by_node.most_common(8):
        print(f"    {node:<60}{d / repeats / 1e3:8.1f} ms")


def eager_split(engine: Any, x: np.ndarray, key: Any, repeats: int) -> tuple[float, dict[str, float]]:
    """``(seconds per call, seconds per call by part)`` of the eager engine: each VJP step timed under
    ``key(node)``, the recording under ``"record (onnxruntime forward)"``; one warm-up call first. The
    engine is restored afterwards."""
    import dataclasses

    from onnxslice.opsets.capabilities.vjp import VjpRule

    spent: dict[str, float] = {}

    def timed(part: str, fn: Any) -> Any:
        def run(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            out = fn(*a, **k)
            spent[part] = spent.get(part, 0.0) + time.perf_counter() - t
            return out

        return run

    steps, record = list(engine.steps), engine.recorder.run
    for i, step in enumerate(steps):
        engine.steps[i] = dataclasses.replace(step, rule=VjpRule(timed(key(step.node), step.rule),
                                                                 step.rule.per_sample))
    engine.recorder.run = timed("record (onnxruntime forward)", record)
    try:
        engine(x)
        spent.clear()
        t = time.perf_counter()
        for _ in range(repeats):
            engine(x)
        total = (time.perf_counter() - t) / repeats
    finally:
        engine.steps[:] = steps
        engine.recorder.run = record
    return total, {k: v / repeats for k, v in spent.items()}


def profile(name: str, batch: int | None = None, threads: int = 1, which: str = "params", repeats: int = 3) -> None:
    """Where onnxslice spends a gradient call: the recorded forward and each VJP op type (ms per call)."""
    _pin(threads)
    _, onnx_bytes, x = build(name, batch)
    model = load(onnx_bytes)
    engine = GradientEngine(model, "pred", device="cpu", executor="eager", weights=_weights(name, model, which))

    def key(node: Any) -> str:
        if node.op_type not in ("Conv", "ConvBatchNormActivation"):  # the second: a fused chain (grad/chains.py)
            return str(node.op_type)
        head = "Conv" if node.op_type == "Conv" else "Conv+BN" + ("+act" if math.isfinite(node.attr("hi")) or
                                                                  math.isfinite(node.attr("lo")) else "")
        if int(node.attr("group", 1)) > 1:
            return f"{head} depthwise"
        w = model.initializer(node.inputs[1]) if model.is_initializer(node.inputs[1]) else None
        return f"{head} 1x1" if w is not None and w.shape[2:] == (1, 1) else f"{head} kxk"

    total, spent = eager_split(engine, x, key, repeats)
    print(f"{name} batch {len(x)}, {threads} thread(s): {1e3 * total:.1f} ms per call")
    for part, v in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"  {part:<32}{1e3 * v:>9.1f} ms {100 * v / total:>5.0f}%")
    print(f"  {'other (engine, seeds, sums)':<32}{1e3 * (total - sum(spent.values())):>9.1f} ms")


#: reference models of the criterion cost table: (label, file under models/, data spec)
#: (label, file under models/, data, model output, large): every reference model of the cost table.
CRITERIA_MODELS = [
    ("LeNet-5", "lenet5.onnx", "builtin:mnist?n=64", None, False),
    ("ResNet-8 (MNIST)", "resnet8_mnist.onnx", "builtin:mnist?n=64", None, False),
    ("MLP digits (sklearn)", "mlp_digits.onnx", "builtin:digits?n=64", "probabilities", False),
    ("Keras MNIST CNN", "keras_mnist.onnx", "builtin:mnist?n=64", None, False),
    ("moons MLP (vanilla-1000)", "moons/vanilla-1000.onnx", "builtin:moons?n=64", None, False),
    ("moons transformer (4001)", "moons/transformer-4001.onnx", "builtin:moons?n=64", None, False),
    ("EfficientNet-Lite0", "efficientnet_lite0.onnx", "builtin:samples-imagenet", None, True),
]
#: criteria whose cost grows with path steps or noise draws (and which evaluate many weight settings)
STEPPED = ("smoothgrad", "vargrad", "ig", "gig", "idgi")


def criteria_costs(samples: int, steps: int, threads: int, only: list[str] | None = None,
                   out: Path | None = None, repeats: int = 3) -> list[dict[str, Any]]:
    """Seconds of ``sensitivity(model, data, criterion)`` for every criterion on every reference model.

    The small models run at the defaults' scale: 64 calibration samples, 16 path steps and noise draws,
    64 HSIC masks, each criterion once; the path and noise criteria also once with stacking off
    (``stack=False``: one engine call per weight setting) to show what stacking saves, and the path
    criteria once more along the global path. EfficientNet-Lite0 runs at ``samples`` x ``steps`` (and
    ``4 * steps`` HSIC masks); its cells also give the projection to 64 x 16, linear in samples and in
    points (steps, draws or masks; ``steps + 1`` for idgi): an upper bound, since fixed costs (loading,
    engine builds, one per layer on the per-layer paths) are scaled too.
    Small models: the median of ``repeats`` runs, the cells interleaved round-robin; EfficientNet-Lite0:
    one run. Rows are saved to ``out`` after every model (rows of models not run are kept from it).
    """
    import warnings

    from onnxslice.data import load_data
    from onnxslice.sensitivity import criteria_names, sensitivity

    _pin(threads)
    rows = []
    for label, file, spec, output, large in CRITERIA_MODELS:
        if only and not any(o.lower() in label.lower() for o in only):
            continue
        model = load(ROOT / "models" / file)
        n, k = (samples, steps) if large else (64, 16)
        masks = 4 * steps if large else 64
        x = load_data(spec).x
        x = np.concatenate([x] * (n // len(x) + 1))[:n]
        row: dict[str, Any] = {"model": label, "file": f"models/{file}", "layers": len(model.layers),
                               "samples": n, "steps": k, "noise_samples": k, "hsic_masks": masks}
        runs = [(c, {}) for c in criteria_names()]
        runs += [(f"{c}:global", {"path": "global"}) for c in ("ig", "gig", "idgi")]
        if not large:
            runs += [(f"{c}:unstacked", {"stack": False}) for c in STEPPED]
        times: dict[str, list[float]] = {key: [] for key, _ in runs}
        for _ in range(1 if large else repeats):  # round-robin: every cell once per repeat
            for key, opts in runs:
                crit = key.split(":")[0]
                if output is not None:
                    opts = {**opts, "output": output}
                t = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    sensitivity(model, {model.input_names[0]: x}, crit, "linf", samples=n, steps=k, noise_samples=k,
                                batch_size=64, hsic_masks=masks, **opts)  # fmt: skip
                times[key].append(time.perf_counter() - t)
        for key, _ in runs:
            crit = key.split(":")[0]
            sec = statistics.median(times[key])
            cell: dict[str, Any] = {"seconds": round(sec, 3), "runs": len(times[key])}
            if large:
                scale = 64 / n * (17 / (k + 1) if crit == "idgi" else 16 / k if crit in (*STEPPED, "hsic") else 1)
                cell["projected_64x16_s"] = round(sec * scale, 1)
            row[key] = cell
            extra = f"  (64 x 16: ~{cell['projected_64x16_s']:,.0f} s)" if large else ""
            print(f"{label:<28}{key:<18}{sec:>9.2f} s{extra}", flush=True)
        row["load_average_after"] = os.getloadavg()
        rows.append(row)
        if out is not None:
            _save_costs(out, rows, samples, steps, threads, repeats)
    return rows


def _save_costs(out: Path, rows: list[dict[str, Any]], samples: int, steps: int, threads: int, repeats: int) -> None:
    import subprocess

    kept = []
    if out.is_file():  # rows of models this run did not measure stay as they were
        done = {r["model"] for r in rows}
        kept = [r for r in json.loads(out.read_text()).get("results", []) if r.get("model") not in done]
    order = {label: i for i, (label, *_) in enumerate(CRITERIA_MODELS)}
    rows = sorted([*kept, *rows], key=lambda r: order.get(r.get("model"), len(order)))
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=False).stdout.strip()
    except OSError:
        commit = ""
    meta = {
        "command": f"nice -n 10 python benchmarks/bench_grad.py --criteria --threads {threads} "
                   f"--samples {samples} --steps {steps}",
        "commit": commit, "threads": threads, "cpus": os.cpu_count(),
        "settings": "small models: 64 samples, 16 steps/draws, 64 hsic masks, batch 64, linf, target pred, "
                    f"median of {repeats} runs per cell (round-robin); EfficientNet-Lite0: one run at {samples} "
                    f"samples, {steps} steps/draws, {4 * steps} hsic masks, with the projection to 64 x 16",
        "note": "2-core machine shared with four other jobs (load average recorded per model): absolute "
                "seconds are inflated by the load",
    }
    save_json(out, {"results": rows, "meta": meta})


def machine() -> str:
    """The CPU and the instruction sets that decide onnxruntime's and torch's kernels (results differ by them:
    CIFAR ResNet-18 b8 ran 0.89x torch on an AVX2 EPYC and 1.09x on an AVX-512 one)."""
    flags = cpu_flags()
    sets = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile") if f in flags]
    return f"{cpu_name()} ({', '.join(sets) or 'no AVX2'}), {os.cpu_count()} CPUs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="every case of the issue, 15 repeats (default: quick, 5)")
    ap.add_argument("--repeats", type=int, default=None, help="calls per side (default: 5 quick, 15 full)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts to pin (default: 1 2)")
    ap.add_argument("--cases", nargs="*", default=None, help="MODEL:BATCH pairs (default: the issue's cases)")
    ap.add_argument("--weights", choices=["params", "all", "torch"], default="params",
                    help="onnxslice's weights: weights='params' (the model's parameters, the set torch "
                    "differentiates: like for like), every float initializer (BatchNorm statistics and Clip "
                    "bounds too), or torch's parameter names (default: params)")
    ap.add_argument("--oneshot-only", action="store_true",
                    help="only the one-shot build cost in two fresh processes (cold, then warm cache) (default: off)")
    ap.add_argument("--profile", choices=list(MODELS), help="profile onnxslice on one model and exit")
    ap.add_argument("--profile-graph", choices=list(MODELS),
                    help="onnxruntime's profile of the graph executor on one model, then exit (default: off)")
    ap.add_argument("--batch", type=int, default=None, help="batch for --profile (default: the model's)")
    ap.add_argument("--load", choices=["bytes", "cache"], default="bytes",
                    help="how the onnxslice sides get the model: bytes = load() of the export (weights read into "
                         "arrays); cache = a disk cache hit (weights mapped from the cache's file)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "grad.json"), help="results JSON")
    ap.add_argument("--criteria", action="store_true", help="time every sensitivity criterion instead (1 thread)")
    ap.add_argument("--samples", type=int, default=4,
                    help="EfficientNet-Lite0's calibration samples for --criteria (default: 4)")
    ap.add_argument("--steps", type=int, default=1,
                    help="EfficientNet-Lite0's path steps and noise draws for --criteria (default: 1)")
    ap.add_argument("--note", default="", help="machine conditions recorded (default: a shared-machine note)")
    ap.add_argument("--models", default="", help="--criteria: comma list of model name parts (default: all)")
    args = ap.parse_args()
    if args.criteria:
        out = Path(args.out).with_name("grad_criteria.json")
        criteria_costs(args.samples, args.steps, args.threads[0], [m for m in args.models.split(",") if m], out,
                       args.repeats or 3)
        print(f"saved {out}")
        return
    if args.profile:
        profile(args.profile, args.batch, args.threads[0], args.weights)
        return
    if args.profile_graph:
        profile_graph(args.profile_graph, args.batch, args.threads[0], weights=args.weights)
        return
    cases = [(m, b) for m, b, _ in CASES]
    if args.cases:
        cases = [(c.split(":")[0], int(c.split(":")[1])) for c in args.cases]
    goals = {(m, b): g for m, b, g in CASES}
    if args.oneshot_only:
        for name, batch in cases:
            res = oneshot_fresh(name, batch, args.threads[0])
            print(name, batch, {k: np.round(v, 3).tolist() for k, v in res.items()})
        return
    os.environ["ONNXSLICE_BENCH_LOAD"] = args.load  # inherited by the sides (spawned processes)
    repeats = args.repeats or (15 if args.full else 5)
    load_before = os.getloadavg()
    rows = []
    print(f"CPU: {machine()}; onnxruntime {ort.__version__}, torch {torch.__version__}")
    print(f"{'model':<20}{'batch':>6}{'thr':>4}{'eager ms':>10}{'graph ms':>10}{'torch ms':>10}{'eager/t':>8}"
          f"{'graph/t':>8}{'goal':>6}{'RSS e/t':>8}{'RSS g/t':>8}{'1-shot s':>9}{'warm s':>7}"
          f"{'rel err e,g':>16}")  # fmt: skip
    for threads in args.threads:
        for name, batch in cases:
            r = bench(name, batch, threads, repeats, args.weights)
            r["weights"] = args.weights
            r["goal"] = goals.get((name, batch))
            rows.append(r)
            print(f"{name:<20}{batch:>6}{threads:>4}{r['onnxslice_ms']:>10.1f}{r['graph_ms']:>10.1f}{r['torch_ms']:>10.1f}"
                  f"{r['ratio']:>8.2f}{r['graph_ratio']:>8.2f}{r['goal'] or float('nan'):>6.1f}{r['rss_ratio']:>8.2f}"
                  f"{r['graph_rss_ratio']:>8.2f}{r['oneshot_build_s']:>9.2f}{r['oneshot_warm_build_s']:>7.2f}"
                  f"{r['input_grad_rel_error']:>8.1e}{r['graph_input_grad_rel_error']:>8.1e}", flush=True)  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "method": "one child process per side (torch, eager engine, graph executor), threads pinned, calls "
                  "interleaved round-robin (each side first in turn), medians",
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "cpus": os.cpu_count(),
        "cpu": machine(),
        "load": args.load,
        "note": args.note or "measured on a 2-core machine shared with other jobs: absolute times are inflated",
    }
    for threads in args.threads:  # one file per thread count: 1 thread -> --out, 2 -> <out>_2threads.json
        path = out if threads == 1 else out.with_name(f"{out.stem}_{threads}threads{out.suffix}")
        part = [r for r in rows if r["threads"] == threads]
        save_json(path, {"results": part, "meta": {**meta, "threads": threads}})
        print(f"saved {path}")


if __name__ == "__main__":
    main()
