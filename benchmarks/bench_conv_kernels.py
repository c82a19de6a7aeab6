"""Convolution cotangent kernels, layer by layer: the eager engine's against PyTorch's, in one process.

``python benchmarks/bench_conv_kernels.py [--model resnet18] [--batch 8] [--threads 1] [--repeats 11]``
takes every convolution of one of ``bench_grad.py``'s models (its input shape from a forward hook) and
times, for each distinct layer, round-robin in this one process with threads pinned (medians):

- torch's ``aten::convolution_backward`` for the input cotangent alone and for the weight cotangent alone
  (oneDNN's kernels in torch's CPU build: what torch's backward step runs);
- the eager engine's ``conv_input_grad`` and ``conv_weight_grad`` kernels (``opsets/vjp/conv_kernels.py``:
  onnxruntime Conv/ConvTranspose sessions, numpy im2col and MLAS GEMMs).

Totals weight each layer by how often it occurs. This separates what the kernels cost from everything
else in a gradient call (recording, gates, BatchNormalization sums): where the kernels alone lose to
torch's, no change outside them can close the gap. Results: ``benchmarks/results/conv_kernels.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_grad import MODELS, _pin, build, machine  # noqa: E402
from onnxslice.opsets.vjp.conv_kernels import conv_input_grad, conv_weight_grad  # noqa: E402
from onnxslice.opsets.vjp.prims import ConvGeometry  # noqa: E402

from onnxslice.io import save_json  # noqa: E402

#: (in shape, out shape, weight shape, stride, padding, dilation, groups) of one convolution
Layer = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...], int]


def layers(name: str, batch: int) -> Counter[Layer]:
    """Each distinct convolution of the model at ``batch`` and how often it occurs."""
    mod, _, x = build(name, batch)
    seen: Counter[Layer] = Counter()

    def hook(m: nn.Conv2d, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        pad = m.padding if isinstance(m.padding, tuple) else (0, 0)
        seen[
            (
                tuple(args[0].shape),
                tuple(out.shape),
                tuple(m.weight.shape),
                tuple(m.stride),
                tuple(pad),
                tuple(m.dilation),
                int(m.groups),
            )
        ] += 1

    handles = [m.register_forward_hook(hook) for m in mod.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        mod(torch.from_numpy(x))
    for h in handles:
        h.remove()
    return seen


def _geometry(layer: Layer) -> ConvGeometry:
    xs, ys, ws, stride, pad, dil, groups = layer
    length = tuple((o - 1) * s + (k - 1) * d + 1 for o, s, k, d in zip(ys[2:], stride, ws[2:], dil, strict=True))
    end = tuple(n - p - i for n, p, i in zip(length, pad, xs[2:], strict=True))
    return ConvGeometry(tuple(ws[2:]), stride, dil, pad, end, length, groups)


def time_layer(layer: Layer, repeats: int) -> dict[str, float]:
    """Median ms of each of the four kernels on one layer (round-robin, each first in turn)."""
    xs, ys, ws, stride, pad, dil, groups = layer
    rng = np.random.default_rng(0)
    x, g = rng.standard_normal(xs, dtype=np.float32), rng.standard_normal(ys, dtype=np.float32)
    w = rng.standard_normal(ws, dtype=np.float32)
    geom = _geometry(layer)
    tx, tg, tw = map(torch.from_numpy, (x, g, w))

    def torch_part(mask: list[bool]) -> Any:
        return lambda: torch.ops.aten.convolution_backward(
            tg, tx, tw, None, list(stride), list(pad), list(dil), False, [0, 0], groups, [*mask, False]
        )

    sides = {
        "torch dx": torch_part([True, False]),
        "torch dW": torch_part([False, True]),
        "onnxslice dx": lambda: conv_input_grad(g, w, xs, geom),
        "onnxslice dW": lambda: conv_weight_grad(x, g, ws, geom),
    }
    dx = conv_input_grad(g, w, xs, geom)
    ref = torch_part([True, False])()[0].numpy()
    if not np.allclose(dx, ref, rtol=1e-3, atol=1e-2 * float(np.abs(ref).max())):
        raise SystemExit(f"layer {layer}: onnxslice's input cotangent disagrees with torch's")
    times: dict[str, list[float]] = {k: [] for k in sides}
    order = list(sides)
    for f in sides.values():
        f()  # warm-up: sessions, buffers
    for i in range(repeats):
        for k in order[i % len(order) :] + order[: i % len(order)]:
            t = time.perf_counter()
            sides[k]()
            times[k].append(time.perf_counter() - t)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=list(MODELS), default="resnet18")
    ap.add_argument("--batch", type=int, default=None, help="default: the model's (bench_grad.py)")
    ap.add_argument("--threads", type=int, default=1, help="threads pinned for both sides (default 1)")
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "conv_kernels.json"))
    args = ap.parse_args()
    _pin(args.threads)
    batch = args.batch or MODELS[args.model][2]
    found = layers(args.model, batch)
    print(f"{machine()}\n{args.model} b{batch}, {args.threads} thread(s), {args.repeats} rounds, medians (ms)")
    print(
        f"{'input':>18} {'weight':>18} {'s':>2} {'n':>2}  {'torch dx':>8} {'ours dx':>8} {'ratio':>6}"
        f"  {'torch dW':>8} {'ours dW':>8} {'ratio':>6}"
    )
    rows, totals = [], Counter[str]()
    for layer, count in found.items():
        ms = time_layer(layer, args.repeats)
        for k, v in ms.items():
            totals[k] += v * count
        rows.append(
            {"input": list(layer[0]), "weight": list(layer[2]), "stride": list(layer[3]), "count": count, "ms": ms}
        )
        print(
            f"{layer[0]!s:>18} {layer[2]!s:>18} {layer[3][0]:>2} {count:>2}  {ms['torch dx']:>8.2f} "
            f"{ms['onnxslice dx']:>8.2f} {ms['onnxslice dx'] / ms['torch dx']:>6.2f}  {ms['torch dW']:>8.2f} "
            f"{ms['onnxslice dW']:>8.2f} {ms['onnxslice dW'] / ms['torch dW']:>6.2f}"
        )
    ratio = {k: totals[f"onnxslice {k}"] / totals[f"torch {k}"] for k in ("dx", "dW")}
    print(
        f"{'all layers (x count)':>44}  {totals['torch dx']:>8.1f} {totals['onnxslice dx']:>8.1f} "
        f"{ratio['dx']:>6.2f}  {totals['torch dW']:>8.1f} {totals['onnxslice dW']:>8.1f} {ratio['dW']:>6.2f}"
    )
    out = save_json(
        args.out,
        {
            "meta": {
                "machine": machine(),
                "model": args.model,
                "batch": batch,
                "threads": args.threads,
                "repeats": args.repeats,
            },
            "layers": rows,
            "total_ms": dict(totals),
            "ratio": ratio,
        },
    )
    print(f"saved {out}")


if __name__ == "__main__":
    main()
