"""Gradient benchmark: onnxslice (onnxruntime forward + numpy VJPs) vs PyTorch CPU autograd, same model.

Run ``python benchmarks/bench_grad.py [--quick] [--profile NAME]``. For each model the same torch
module is exported to ONNX (BatchNorm kept, as in the reference exports) and both sides compute the
weight and input gradients of the ``pred`` target (the predicted class's logit) on the same batch:

- LeNet-5, batch 32, 1x28x28;
- ResNet-18 (CIFAR layout), batch 8, 3x32x32;
- EfficientNet-Lite0 (ReLU6, no squeeze-excitation, 1000 classes), batch 8, 3x224x224.

Reported: median wall time per gradient call over repeats (after a warm-up), the ratio
onnxslice / torch (goal: <= 1.0), and the peak resident memory each side adds, measured in a fresh
child process per side (``ru_maxrss`` after the work minus the resident size before it). A sanity
check asserts that both sides agree (relative error of the input gradient). ``--profile NAME``
prints where onnxslice spends its time on one model. Results go to ``benchmarks/results/grad.json``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import multiprocessing as mp
import pstats
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxslice.grad import GradientEngine  # noqa: E402
from onnxslice.model import load  # noqa: E402


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


def build(name: str) -> tuple[nn.Module, bytes, np.ndarray]:
    """The torch module (eval, non-trivial BN statistics), its ONNX export and a batch of inputs."""
    cls, shape, batch = MODELS[name]
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
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _onnxslice_side(name: str, repeats: int, q: Any) -> None:
    _, onnx_bytes, x = build(name)
    engine = GradientEngine(load(onnx_bytes), "pred", device="cpu")
    base = _rss_mib()
    engine(x)  # warm-up (session creation happens here)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        g = engine(x)
        times.append(time.perf_counter() - t)
    q.put({"times": times, "peak_mib": _peak_mib() - base, "input_grad": g.inputs["x"]})


def _torch_side(name: str, repeats: int, q: Any) -> None:
    mod, _, x = build(name)
    xt = torch.from_numpy(x)
    base = _rss_mib()

    def step() -> np.ndarray:
        xi = xt.clone().requires_grad_(True)
        mod.zero_grad(set_to_none=True)
        logits = mod(xi)
        logits.gather(1, logits.argmax(1, keepdim=True)).sum().backward()
        return xi.grad.numpy()  # type: ignore[union-attr]

    step()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        gx = step()
        times.append(time.perf_counter() - t)
    q.put({"times": times, "peak_mib": _peak_mib() - base, "input_grad": gx})


def _in_child(fn: Any, name: str, repeats: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=fn, args=(name, repeats, q))
    p.start()
    res = q.get()
    p.join()
    return dict(res)


def bench(name: str, repeats: int) -> dict[str, Any]:
    ours = _in_child(_onnxslice_side, name, repeats)
    theirs = _in_child(_torch_side, name, repeats)
    a, b = ours.pop("input_grad"), theirs.pop("input_grad")
    rel = float(np.linalg.norm(a - b) / np.linalg.norm(b))
    t_ours, t_torch = statistics.median(ours["times"]), statistics.median(theirs["times"])
    _, shape, batch = MODELS[name]
    return {
        "model": name,
        "batch": batch,
        "input": list(shape),
        "onnxslice_ms": 1e3 * t_ours,
        "torch_ms": 1e3 * t_torch,
        "ratio": t_ours / t_torch,
        "onnxslice_peak_mib": ours["peak_mib"],
        "torch_peak_mib": theirs["peak_mib"],
        "input_grad_rel_error": rel,
        "repeats": repeats,
    }


def profile(name: str, top: int = 25) -> None:
    """Where onnxslice spends a gradient call: the forward session, each VJP rule."""
    _, onnx_bytes, x = build(name)
    engine = GradientEngine(load(onnx_bytes), "pred", device="cpu")
    engine(x)
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(3):
        engine(x)
    pr.disable()
    pstats.Stats(pr).sort_stats("cumulative").print_stats(top)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="LeNet-5 and ResNet-18 only, 3 repeats")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--models", nargs="*", choices=list(MODELS), default=None)
    ap.add_argument("--profile", choices=list(MODELS), help="profile onnxslice on one model and exit")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "grad.json"))
    args = ap.parse_args()
    if args.profile:
        profile(args.profile)
        return
    names = args.models or (["lenet5", "resnet18"] if args.quick else list(MODELS))
    repeats = 3 if args.quick else args.repeats
    rows = []
    head = f"{'model':<20}{'batch':>6}{'onnxslice ms':>14}{'torch ms':>10}{'ratio':>8}"
    print(head + f"{'peak MiB (ours/torch)':>24}{'rel err':>10}")
    for name in names:
        r = bench(name, repeats)
        rows.append(r)
        print(
            f"{name:<20}{r['batch']:>6}{r['onnxslice_ms']:>14.1f}{r['torch_ms']:>10.1f}{r['ratio']:>8.2f}"
            f"{r['onnxslice_peak_mib']:>13.0f} / {r['torch_peak_mib']:<8.0f}{r['input_grad_rel_error']:>10.1e}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "torch_threads": torch.get_num_threads(),
        "note": "median over repeats after one warm-up; machine load matters",
    }
    out.write_text(json.dumps({"results": rows, "meta": meta}, indent=2) + "\n")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
