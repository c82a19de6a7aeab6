"""Candidate ONNX lowerings of two gradient primitives, timed in onnxruntime on EfficientNet-Lite0's layer shapes.

Run ``python benchmarks/bench_grad_lowering.py [--full] [--repeats N]``. One thread, optimizations at the
*extended* level (as the graph executor), each candidate a small graph of its own, candidates of a shape
timed round-robin (medians), every result checked against a float64 numpy reference.

- **Depthwise weight cotangent** ``dW[c, 0, a, b] = sum_{n,i,j} Xpad[n, c, a + s*i, b + s*j] * G[n, c, i, j]``:
  ``swapped`` (the lowering in use: a grouped Conv of the input by the cotangent, sample and channel axes
  swapped), ``per_tap`` (Slice, Mul, ReduceSum per kernel offset), ``onehot_conv`` (all offsets at once
  by a depthwise Conv with one-hot kernels, then Mul and ReduceSum), ``einsum`` (the same windows, one
  Einsum), ``phase_mul`` (the eager kernel's layout: stride phases laid flat, one contiguous Slice, Mul and
  ReduceSum per offset), and the eager numpy kernel for reference.
- **Pointwise (1x1) input cotangent**: ``ConvTranspose`` by the weight against a 1x1 ``Conv`` by the
  weight with its channel axes swapped (the lowering in use).

Results: ``benchmarks/results/grad_lowering.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnxslice.io import atomic_write_bytes

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

I64 = np.int64
#: (N, C, H, K, stride) of EfficientNet-Lite0's depthwise layers at batch 8 (quick: three of them)
DW_QUICK = [(8, 96, 112, 3, 2), (8, 144, 56, 5, 2), (8, 240, 28, 5, 1)]
DW_FULL = [*DW_QUICK, (8, 144, 56, 3, 1), (8, 480, 14, 3, 1), (8, 672, 14, 5, 1), (8, 1152, 7, 3, 1)]
#: (N, O, C, H): a pointwise layer's cotangent channels O, input channels C
PW = [(8, 16, 96, 112), (8, 144, 24, 56), (8, 240, 40, 28), (8, 672, 112, 14)]


class Graph:
    """A tiny graph builder: constants and nodes with fresh names."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.inits: list[Any] = []

    def c(self, arr: Any) -> str:
        name = f"c{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def n(self, op: str, ins: list[str], out: str | None = None, **kw: Any) -> str:
        out = out or f"v{len(self.nodes)}"
        self.nodes.append(helper.make_node(op, ins, [out], **kw))
        return out

    def session(self, feed: dict[str, np.ndarray]) -> Any:
        ins = [helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v.shape)) for k, v in feed.items()]
        out = [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)]
        graph = helper.make_graph(self.nodes, "g", ins, out, initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.log_severity_level = 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def dw_candidates(n: int, c: int, h: int, k: int, s: int) -> dict[str, Graph]:
    p = k // 2
    oh = (h + 2 * p - k) // s + 1
    cands: dict[str, Graph] = {}
    g = Graph()  # swapped: [C, N, H, W] as one sample with C*N channels, the cotangent [C, N, OH, OW] as the kernel
    xr = g.n("Reshape", [g.n("Transpose", ["x"], perm=[1, 0, 2, 3]), g.c(np.array([1, n * c, h, h], I64))])
    full = g.n("Conv", [xr, g.n("Transpose", ["g"], perm=[1, 0, 2, 3])], strides=[1, 1], dilations=[s, s],
               pads=[p] * 4, group=c, kernel_shape=[oh, oh])
    cut = g.n("Slice", [full, g.c(np.array([0, 0], I64)), g.c(np.array([k, k], I64)), g.c(np.array([2, 3], I64))])
    g.n("Transpose", [cut], "out", perm=[1, 0, 2, 3])
    cands["swapped"] = g
    g = Graph()
    xp = g.n("Pad", ["x", g.c(np.array([0, 0, p, p, 0, 0, p, p], I64))])
    cols = []
    for a in range(k):
        for b in range(k):
            end = g.c(np.array([a + s * (oh - 1) + 1, b + s * (oh - 1) + 1], I64))
            axes, steps = g.c(np.array([2, 3], I64)), g.c(np.array([s, s], I64))
            win = g.n("Slice", [xp, g.c(np.array([a, b], I64)), end, axes, steps])
            cols.append(g.n("ReduceSum", [g.n("Mul", [win, "g"]), g.c(np.array([0, 2, 3], I64))], keepdims=0))
    stack = g.n("Concat", [g.n("Unsqueeze", [v, g.c(np.array([1], I64))]) for v in cols], axis=1)
    g.n("Reshape", [stack, g.c(np.array([c, 1, k, k], I64))], "out")
    cands["per_tap"] = g
    onehot = np.zeros((c * k * k, 1, k, k), np.float32)
    for ci in range(c):
        for t in range(k * k):
            onehot[ci * k * k + t, 0, t // k, t % k] = 1
    for name in ("onehot_conv", "einsum"):
        g = Graph()
        win = g.n("Conv", ["x", g.c(onehot)], strides=[s, s], pads=[p] * 4, group=c, kernel_shape=[k, k])
        w4 = g.n("Reshape", [win, g.c(np.array([n, c, k * k, oh * oh], I64))])
        g4 = g.n("Reshape", ["g", g.c(np.array([n, c, 1, oh * oh], I64))])
        red = (g.n("ReduceSum", [g.n("Mul", [w4, g4]), g.c(np.array([0, 3], I64))], keepdims=0) if name == "onehot_conv"
               else g.n("Einsum", [w4, g4], equation="nckp,ncjp->ck"))  # fmt: skip
        g.n("Reshape", [red, g.c(np.array([c, 1, k, k], I64))], "out")
        cands[name] = g
    cands["phase_mul"] = _phase_mul(n, c, h, k, s, p, oh)
    return cands


def _phase_mul(n: int, c: int, h: int, k: int, s: int, p: int, oh: int) -> Graph:
    """The eager kernel's layout: stride phases of the padded input laid flat per channel, one shift per offset."""
    offs = {(a, b): (a % s, b % s, a // s, b // s) for a in range(k) for b in range(k)}
    mh, mw = max(o[2] for o in offs.values()), max(o[3] for o in offs.values())
    hg, wg = oh + mh + 1, oh + mw
    total, extra, hp = n * hg * wg, (mh + 1) * wg, h + 2 * p
    g = Graph()
    xt = g.n("Transpose", [g.n("Pad", ["x", g.c(np.array([0, 0, p, p, 0, 0, p, p], I64))])], perm=[1, 0, 2, 3])
    gpad = g.c(np.array([0, 0, 0, 0, 0, 0, hg - oh, wg - oh], I64))
    gt = g.n("Pad", [g.n("Transpose", ["g"], perm=[1, 0, 2, 3]), gpad])
    gf = g.n("Reshape", [gt, g.c(np.array([c, total], I64))])
    phases: dict[tuple[int, int], str] = {}
    cols = []
    for (_a, _b), (ph, pw, sh, sw) in offs.items():
        if (ph, pw) not in phases:
            sl = g.n("Slice", [xt, g.c(np.array([ph, pw], I64)), g.c(np.array([hp, hp], I64)),
                               g.c(np.array([2, 3], I64)), g.c(np.array([s, s], I64))])
            eh, ew = min(len(range(ph, hp, s)), hg), min(len(range(pw, hp, s)), wg)
            sl = g.n("Slice", [sl, g.c(np.array([0, 0], I64)), g.c(np.array([eh, ew], I64)),
                               g.c(np.array([2, 3], I64))])
            sl = g.n("Pad", [sl, g.c(np.array([0, 0, 0, 0, 0, 0, hg - eh, wg - ew], I64))])
            flat = g.n("Reshape", [sl, g.c(np.array([c, total], I64))])
            phases[(ph, pw)] = g.n("Pad", [flat, g.c(np.array([0, 0, 0, extra], I64))])
        off = sh * wg + sw
        v = g.n("Slice", [phases[(ph, pw)], g.c(np.array([off], I64)), g.c(np.array([off + total], I64)),
                          g.c(np.array([1], I64))])  # fmt: skip
        cols.append(g.n("ReduceSum", [g.n("Mul", [v, gf]), g.c(np.array([1], I64))], keepdims=1))
    g.n("Reshape", [g.n("Concat", cols, axis=1), g.c(np.array([c, 1, k, k], I64))], "out")
    return g


def pw_candidates(o: int, c: int, w: np.ndarray) -> dict[str, Graph]:
    a = Graph()
    a.n("ConvTranspose", ["g", a.c(w)], "out", kernel_shape=[1, 1])
    b = Graph()
    b.n("Conv", ["g", b.c(np.ascontiguousarray(w.transpose(1, 0, 2, 3)))], "out", kernel_shape=[1, 1])
    return {"convtranspose": a, "conv_swapped_weight": b}


def race(cands: dict[str, Graph], feed: dict[str, np.ndarray], ref: np.ndarray, repeats: int,
         extra: dict[str, Any] | None = None) -> dict[str, Any]:
    sessions = {k: g.session(feed) for k, g in cands.items()}
    runs: dict[str, Any] = {k: (lambda s=s: s.run(None, feed)[0]) for k, s in sessions.items()}
    runs.update(extra or {})
    scale = np.abs(ref).max()
    errs = {k: float(np.abs(np.asarray(f()).reshape(ref.shape) - ref).max() / scale) for k, f in runs.items()}
    times: dict[str, list[float]] = {k: [] for k in runs}
    names = list(runs)
    for r in range(repeats):
        for k in names[r % len(names):] + names[: r % len(names)]:
            t = time.perf_counter()
            runs[k]()
            times[k].append(time.perf_counter() - t)
    return {k: {"ms": 1e3 * statistics.median(v), "rel_err": errs[k]} for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="all seven depthwise shapes (default: quick, three)")
    ap.add_argument("--repeats", type=int, default=5, help="runs per candidate (default: 5)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "grad_lowering.json"), help="results JSON")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    from opsets.vjp.conv import _dw_depthwise

    rng = np.random.default_rng(0)
    rows = []
    for n, c, h, k, s in DW_FULL if args.full else DW_QUICK:
        p = k // 2
        oh = (h + 2 * p - k) // s + 1
        x = rng.standard_normal((n, c, h, h), dtype=np.float32)
        g = rng.standard_normal((n, c, oh, oh), dtype=np.float32)
        xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p))).astype(np.float64)
        ref = np.zeros((c, 1, k, k))
        for a in range(k):
            for b in range(k):
                view = xp[:, :, a : a + s * (oh - 1) + 1 : s, b : b + s * (oh - 1) + 1 : s]
                ref[:, 0, a, b] = np.einsum("ncij,ncij->c", view, g)
        length = [max(h + 2 * p, (oh - 1) * s + k)] * 2
        eager = {"eager_numpy": lambda x=x, g=g, c=c, k=k, s=s, p=p, length=length: _dw_depthwise(
            x, g, (c, 1, k, k), [s, s], [1, 1], [p, p], length, False)}
        res = race(dw_candidates(n, c, h, k, s), {"x": x, "g": g}, ref, args.repeats, eager)
        rows.append({"primitive": "depthwise weight cotangent", "shape": [n, c, h, k, s], "results": res})
        line = ", ".join(f"{k_} {v['ms']:.1f} ms" for k_, v in res.items())
        print(f"dw N{n} C{c} H{h} k{k} s{s}: {line}", flush=True)
    for n, o, c, h in PW:
        w = rng.standard_normal((o, c, 1, 1), dtype=np.float32)
        gg = rng.standard_normal((n, o, h, h), dtype=np.float32)
        ref = np.einsum("nohw,oc->nchw", gg.astype(np.float64), w[:, :, 0, 0])
        res = race(pw_candidates(o, c, w), {"g": gg}, ref, args.repeats)
        rows.append({"primitive": "pointwise input cotangent", "shape": [n, o, c, h], "results": res})
        print(f"1x1 N{n} O{o} C{c} H{h}: " + ", ".join(f"{k_} {v['ms']:.1f} ms" for k_, v in res.items()), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"threads": 1, "repeats": args.repeats, "load_average_after": os.getloadavg(),
            "note": "2-core machine shared with other jobs; candidates of a shape timed round-robin, medians"}
    atomic_write_bytes(out, (json.dumps({"results": rows, "meta": meta}, indent=2) + "\n").encode())
    print(f"saved {out}")


if __name__ == "__main__":
    main()
