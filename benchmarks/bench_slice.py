"""NNSlicer overhead and slice fidelity, printed beside the paper's published figures.

    python benchmarks/bench_slice.py [--quick] [--models lenet5,resnet10,resnet18] [--fidelity]

Overhead (per sample, medians over samples): profiling/forward analysis (recording + deltas) single
and batched, backward analysis single (one sample, one process), batched (a batch of 8 in one
process) and on ``--workers`` processes (``slice(..., workers=2)``, start-up included). The baseline is
NNSlicer as published (2x GTX 1080Ti, 32 CPU cores, Ray): it cannot run here, so its numbers are
printed beside ours with the ratio ``published / ours``. Wall and CPU seconds are both reported: on a
shared machine wall time overstates the cost.

The models come from ``models/zoo.py`` (``lenet5``, trained; ``resnet10_cifar`` and ``resnet18_cifar``,
seeded and untrained, built on first use with torch) and are fed synthetic images with per-sample
contrast. Untrained logits sit close to their means, so the default ``theta_denominator="raw"`` would
stop the walk at the classifier; the overhead runs use ``"delta"``, which walks the whole network (the
fraction of neurons in the slice is reported so the work done is visible).

``--fidelity`` slices the trained zoo LeNet-5 with the default options, zeroes every synapse outside the
slice (``rewrite.slice_to_model``) and reports how often the sliced model keeps the original prediction on the
slice's own samples and on other samples of ``builtin:mnist``.

Results are saved to ``benchmarks/results/slice.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.simplefilter("ignore")

from models import zoo  # noqa: E402
from onnxslice.console import format_table  # noqa: E402
from onnxslice.io import atomic_write_bytes  # noqa: E402
from onnxslice.model import Model, load  # noqa: E402
from onnxslice.profile import profile  # noqa: E402
from onnxslice.record import Recorder  # noqa: E402
from onnxslice.rewrite import slice_to_model  # noqa: E402
from onnxslice.slicing import BackwardOptions, backward, deltas, parse_targets, seed_tables, slice  # noqa: E402

# NNSlicer's overhead table (seconds per sample): profiling/forward single, batch; backward single, batch.
PUBLISHED = {
    "lenet5": (3.0, 0.3, 0.5, 0.3),
    "resnet10": (8.9, 0.4, 30.1, 3.0),
    "resnet18": (9.6, 0.8, 543.0, 40.4),
}
ZOO = {"lenet5": "lenet5", "resnet10": "resnet10_cifar", "resnet18": "resnet18_cifar"}


def images(name: str, n: int, seed: int = 0) -> np.ndarray:
    """Synthetic images in [0, 2) with per-sample contrast, float32 NCHW, shaped for the zoo model."""
    rng = np.random.default_rng(seed)
    shape = (n, *zoo.get(ZOO[name]).input_shape)
    return (rng.random(shape) * rng.uniform(0.2, 2.0, (n, 1, 1, 1))).astype(np.float32)
OPTIONS = BackwardOptions(theta=0.3, theta_denominator="delta")


def _timed(fn: Any) -> tuple[float, float, Any]:
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t, time.process_time() - c, out


def _forward(model: Model, rec: Recorder, prof: Any, x: np.ndarray) -> dict[str, np.ndarray]:
    values = rec.run({"x": x}, validated=True)
    values["x"] = x
    values.update(deltas(prof, values))  # keeps the deltas alive like the analysis does
    return values


def overhead(name: str, n_samples: int, workers: int) -> dict[str, Any]:
    x = images(name, 64)
    model = load(zoo.ensure(ZOO[name]))
    prof = profile(model, x, 32)
    rec = Recorder(model, "all", "cpu")
    test = images(name, max(n_samples, 32), seed=1)
    fwd_single = [_timed(lambda i=i: _forward(model, rec, prof, test[i : i + 1]))[0] for i in range(n_samples)]
    fwd_batch = _timed(lambda: _forward(model, rec, prof, test[:32]))[0] / 32
    targets = parse_targets("pred", model.output_names[0], (10,))
    walls, cpus, covered = [], [], []
    for i in range(-1, n_samples):  # i = -1: a warm-up run on sample 0 (imports, caches), not timed
        j = max(i, 0)
        values = rec.run({"x": test[j : j + 1]}, validated=True)
        values["x"] = test[j : j + 1]
        d = deltas(prof, values)
        seeds = seed_tables(targets, values, False)
        w, c, (neurons, _) = _timed(lambda v=values, d=d, s=seeds: backward(model, v, d, s, OPTIONS))
        if i < 0:
            continue
        walls.append(w)
        cpus.append(c)
        covered.append(sum(int((a != 0).sum()) for a in neurons.values()) / sum(a.size for a in neurons.values()))
    nb = min(8, len(test))
    values = rec.run({"x": test[:nb]}, validated=True)
    values["x"] = test[:nb]
    d = deltas(prof, values)
    bw, bc, _ = _timed(lambda: backward(model, values, d, seed_tables(targets, values, False), OPTIONS))
    n_par = max(4 * workers, n_samples)
    pw, _, _ = _timed(
        lambda: slice(
            model,
            prof,
            test,
            "pred",
            0.3,
            theta_denominator="delta",
            samples=list(range(n_par)),
            batch_size=max(1, n_par // workers),
            workers=workers,
        )
    )
    return {
        "model": name,
        "params": model.num_params,
        "forward_single_s": statistics.median(fwd_single),
        "forward_batch_s": fwd_batch,
        "backward_single_s": statistics.median(walls),
        "backward_single_cpu_s": statistics.median(cpus),
        "backward_batch_s": bw / nb,
        "backward_batch_cpu_s": bc / nb,
        f"backward_{workers}workers_s": pw / n_par,
        "neurons_in_slice": statistics.median(covered),
        "samples": n_samples,
    }


def fidelity(n_slices: int) -> dict[str, Any]:
    from onnxslice.data import load_data
    from onnxslice.testing import run_ort

    train, test = load_data("builtin:mnist?split=train"), load_data("builtin:mnist")
    assert train.labels is not None and test.labels is not None
    model = load(zoo.path("lenet5"))
    prof = profile(model, train, 256)
    pred = run_ort(model, {"x": test.x})[0].argmax(1)
    accuracy = float((pred == test.labels).mean())
    others = np.arange(200, 400)
    own_keep, other_keep, kept = [], [], []
    for i in range(n_slices):
        s = slice(model, prof, test, "pred", 0.3, samples=[i], workers=1)
        sliced = slice_to_model(s, model)
        out = run_ort(sliced, {"x": test.x[np.r_[i, others]]})[0].argmax(1)
        own_keep.append(out[0] == pred[i])
        other_keep.append(float((out[1:] == pred[others]).mean()))
        kept.append(sum(int((v != 0).sum()) for v in s.synapses.values()) / sum(v.size for v in s.synapses.values()))
    per_class = []
    for c in range(10):
        own = np.flatnonzero(train.labels == c)[:30]
        s = slice(model, prof, train, f"class:{c}", 0.3, samples=own, workers=1)
        sliced = slice_to_model(s, model)
        t_out = run_ort(sliced, {"x": test.x})[0].argmax(1)
        o_out = run_ort(sliced, {"x": train.x[own]})[0].argmax(1)
        same = test.labels == c
        per_class.append(
            {
                "class": c,
                "own_keep": float((o_out == run_ort(model, {"x": train.x[own]})[0].argmax(1)).mean()),
                "same_class_keep": float((t_out[same] == pred[same]).mean()),
                "other_class_keep": float((t_out[~same] == pred[~same]).mean()),
                "synapses_kept": sum(int((v != 0).sum()) for v in s.synapses.values())
                / sum(v.size for v in s.synapses.values()),
            }
        )
    return {
        "model": "zoo lenet5 (trained on builtin:mnist)",
        "test_accuracy": accuracy,
        "per_sample": {
            "slices": n_slices,
            "own_keep": float(np.mean(own_keep)),
            "other_keep": float(np.mean(other_keep)),
            "synapses_kept": float(np.mean(kept)),
        },
        "per_class": per_class,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="LeNet-5 and ResNet-10, 2 samples")
    ap.add_argument("--models", default="lenet5,resnet10,resnet18")
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--fidelity", action="store_true", help="also measure sliced-model fidelity on the zoo LeNet-5")
    ap.add_argument("--fidelity-slices", type=int, default=40)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "slice.json"))
    args = ap.parse_args(argv)
    names = ["lenet5", "resnet10"] if args.quick else args.models.split(",")
    n = 2 if args.quick else args.samples
    rows, results = [], []
    for name in names:
        r = overhead(name, n, args.workers)
        results.append(r)
        pub = PUBLISHED[name]
        rows.append(
            {
                "model": name,
                "fwd 1 (s)": r["forward_single_s"],
                "paper": pub[0],
                "fwd batch": r["forward_batch_s"],
                "paper ": pub[1],
                "bwd 1 wall": r["backward_single_s"],
                "bwd 1 cpu": r["backward_single_cpu_s"],
                "paper  ": pub[2],
                "x": pub[2] / r["backward_single_s"],
                "bwd batch": r["backward_batch_s"],
                f"bwd {args.workers}w": r[f"backward_{args.workers}workers_s"],
                "paper   ": pub[3],
                "x ": pub[3] / r[f"backward_{args.workers}workers_s"],
                "in slice": r["neurons_in_slice"],
            }
        )
        print(f"done {name}", file=sys.stderr)
    print(format_table(rows, title="NNSlicer overhead per sample: onnxslice vs published (x = published / ours)"))
    out: dict[str, Any] = {"overhead": results, "published": PUBLISHED}
    if args.fidelity:
        f = fidelity(args.fidelity_slices)
        out["fidelity"] = f
        print(
            f"\nfidelity ({f['model']}, test accuracy {f['test_accuracy']:.3f}): per-sample slices keep the "
            f"prediction on their own sample {f['per_sample']['own_keep']:.1%}, on 200 other samples "
            f"{f['per_sample']['other_keep']:.1%}, synapses kept {f['per_sample']['synapses_kept']:.1%}"
        )
        print(format_table(f["per_class"], title="class slices (30 training samples of the class, target class:K)"))
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(out, indent=2) + "\n").encode())
    print(f"\nsaved {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
