"""Model protection benchmark: the thief's experiment.

Run ``python benchmarks/bench_protect.py`` from the repository root (``--quick`` is the default;
``--full`` runs the whole grid; every axis can be set by flags). Results go to
``benchmarks/results/protect.json`` and the plot to ``benchmarks/results/protect.png``.

The owner locks a model with ``onnxslice.apps.protect``: the ``fraction`` of every layer weight with
the largest score is replaced by values drawn from a normal with the layer's mean and std; the score
is the per-sample ``|CONTRIB|`` of an NNSlicer slice of the target classes (``slice``: their samples
of ``builtin:mnist?split=train``, seeded at their output neurons), ``|w|`` (``weight``) or random
(``random``). The thief copies the locked model and fine-tunes every learned parameter (layer weights
and biases, batch-norm scales and shifts; the running statistics are constants) on ``k``
labelled samples of all classes (the last ``k`` of ``split=train``) for ``E`` epochs with
``onnxslice.train.finetune`` (Adam lr 1e-3 or SGD lr 1e-2, batch 32: onnxslice's own ONNX
gradients, no framework). Accuracy on the target classes and on the others is measured on
``split=test`` (1,000 samples) for the original, the locked model and the thief's model.

Two references frame the numbers: the thief fine-tuning the *unprotected* model (``none``), and the
thief training from a model whose every layer weight was redrawn (``scratch``: what the thief gets
from the architecture alone). ``--keep-others`` rows lock with
``keep_others=True`` (global scope) and report how much of the other classes' accuracy the locked
model keeps.

The machine was shared with other jobs when the committed results were measured (see ``meta``);
timings are wall clock and only indicative. Accuracies do not depend on load.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")
os.environ.setdefault("ONNXSLICE_PROGRESS", "0")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import importlib  # noqa: E402

from onnxslice.apps.protect import accuracy, choose, lock, selection_scores, slice_scores  # noqa: E402
from onnxslice.console import format_table  # noqa: E402
from onnxslice.data import Dataset, load_data  # noqa: E402
from onnxslice.io import atomic_write_bytes  # noqa: E402
from onnxslice.model import Model, load  # noqa: E402
from onnxslice.train import finetune  # noqa: E402

_record = importlib.import_module("onnxslice.record")  # the module (onnxslice.record is also a function)
_make_session = _record.make_session


def _one_thread_session(proto: Any, device: Any = "auto", *, optimize: bool = False, threads: int | None = None) -> Any:
    return _make_session(proto, device, optimize=optimize, threads=threads or 1)


_record.make_session = _one_thread_session  # type: ignore[assignment]  # one onnxruntime thread per session

MODELS = {"lenet5": ROOT / "models" / "lenet5.onnx", "resnet8_mnist": ROOT / "models" / "resnet8_mnist.onnx"}
LR = {"adam": 1e-3, "sgd": 1e-2}
SELECTS = ("slice", "weight", "random")


def _floats(text: str) -> list[float]:
    return [float(t) for t in text.split(",") if t]


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--quick", action="store_true", help="small grid, a few minutes (default)")
    scale.add_argument("--full", action="store_true",
                       help="k 500,1000,2000; fractions 0.1-0.5; adam and sgd (hours on 2 cores)")  # fmt: skip
    p.add_argument("--models", default=None, help="comma list of lenet5,resnet8_mnist (default both)")
    p.add_argument("--ks", default=None, help="thief's sample counts (quick: 500; full: 500,1000,2000)")
    p.add_argument("--fractions", default=None, help="hidden fractions (quick: 0.1,0.3,0.5; full: 0.1,...,0.5)")
    p.add_argument("--optimizers", default=None, help="adam,sgd (quick: adam; full: both)")
    p.add_argument("--epochs", type=int, default=5, help="thief's epochs (default 5)")
    p.add_argument("--classes", default="3,5", help="protected classes (default 3,5)")
    p.add_argument("--slice-samples", type=int, default=None, help="target-class samples sliced (quick 128, full 256)")
    p.add_argument("--seeds", default=None,
                   help="seeds of locking (ties, random selection, fill) and of the thief's shuffling; results are "
                        "averaged over them (quick: 0; full: 0,1,2)")  # fmt: skip
    p.add_argument("--no-keep-others", action="store_true", help="skip the --keep-others rows")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "protect.json"), help="results JSON")
    p.add_argument("--plot", default=str(ROOT / "benchmarks" / "results" / "protect.png"), help="plot PNG")
    p.add_argument("--replot", default=None, help="only redraw the plot from this results JSON")
    args = p.parse_args(argv)
    full = bool(args.full)
    args.scale = "full" if full else "quick"
    args.models = (args.models or ",".join(MODELS)).split(",")
    args.ks = _ints(args.ks) if args.ks else ([500, 1000, 2000] if full else [500])
    args.fractions = (
        _floats(args.fractions) if args.fractions else ([0.1, 0.2, 0.3, 0.4, 0.5] if full else [0.1, 0.3, 0.5])
    )
    args.optimizers = (args.optimizers or ("adam,sgd" if full else "adam")).split(",")
    args.slice_samples = args.slice_samples or (256 if full else 128)
    args.classes = [int(c) for c in args.classes.split(",")]
    args.seeds = _ints(args.seeds) if args.seeds else ([0, 1, 2] if full else [0])
    return args


def thief_trainable(model: Model) -> list[str]:
    """What the thief trains: every float initializer except batch-norm running statistics (not learned)."""
    stats = {n.inputs[i] for n in model.nodes if n.op_type == "BatchNormalization" for i in (3, 4)}
    return [n for n in model.initializer_names if n not in stats and model.initializer(n).dtype.kind == "f"]


def thief(model: Model, data: Dataset, test: Dataset, classes: list[int], opt: str, epochs: int, seed: int) -> dict:
    t0 = time.perf_counter()
    res = finetune(model, data, epochs=epochs, lr=LR[opt], optimizer=opt, batch_size=32, seed=seed, progress=False,
                   trainable=thief_trainable(model))  # fmt: skip
    acc = accuracy(res.model, test, classes)
    return {**acc, "seconds": round(time.perf_counter() - t0, 2), "final_loss": float(np.mean(res.losses[-10:]))}


def scratch_positions(model: Model) -> dict[str, np.ndarray]:
    """Every entry of every protected weight (the thief's from-scratch reference)."""
    return {n: np.arange(s.size, dtype=np.int64) for n, s in selection_scores(model, "weight").items()}


def run(args: argparse.Namespace) -> dict[str, Any]:
    train = load_data("builtin:mnist?split=train")
    test = load_data("builtin:mnist?split=test")
    cls = args.classes
    rows: list[dict[str, Any]] = []
    keep_rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    for name in args.models:
        model = load(MODELS[name])
        base = accuracy(model, test, cls)
        t0 = time.perf_counter()
        s_scores, s_info = slice_scores(model, train, cls, samples=args.slice_samples)
        slice_s = time.perf_counter() - t0
        print(f"[{name}] original {base}; slice of {s_info['target_samples']} samples in {slice_s:.1f}s", flush=True)
        locked: dict[tuple[str, float, int], tuple[Model, dict[str, float]]] = {}
        for seed in args.seeds:
            for select in SELECTS:
                sc = selection_scores(model, select, slice_scores=s_scores, seed=seed)
                for frac in args.fractions:
                    lk, _ = lock(model, choose(sc, frac, seed=seed), seed=seed)
                    locked[(select, frac, seed)] = (lk, accuracy(lk, test, cls))
            lk_scratch, _ = lock(model, scratch_positions(model), seed=seed)
            locked[("none", 0.0, seed)] = (model, base)
            locked[("scratch", 0.0, seed)] = (lk_scratch, accuracy(lk_scratch, test, cls))
        for k in args.ks:
            data = train.subset(np.arange(len(train) - k, len(train)))
            for opt in args.optimizers:
                for seed in args.seeds:
                    jobs = [(sel, fr) for fr in args.fractions for sel in SELECTS] + [("none", 0.0), ("scratch", 0.0)]
                    for sel, frac in jobs:
                        lk, before = locked[(sel, frac, seed)]
                        after = thief(lk, data, test, cls, opt, args.epochs, seed)
                        row = {"model": name, "select": sel, "fraction": frac, "k": k, "optimizer": opt, "seed": seed,
                               "lr": LR[opt], "epochs": args.epochs, "original": base, "locked": before,
                               "after": after}  # fmt: skip
                        rows.append(row)
                        print(f"[{name}] k={k} {opt} seed {seed} {sel:7s} f={frac:.1f}: target {before['target']:.3f}"
                              f" -> {after['target']:.3f}, others {before['others']:.3f} -> {after['others']:.3f} "
                              f"({after['seconds']:.0f}s)", flush=True)  # fmt: skip
        if not args.no_keep_others:
            t0 = time.perf_counter()
            ko_scores, ko_info = slice_scores(model, train, cls, samples=args.slice_samples, keep_others=True)
            ko_s = time.perf_counter() - t0
            for frac in args.fractions:
                for fill in ("normal", "zero"):
                    lk, _ = lock(model, choose(ko_scores, frac, scope="global"), fill=fill)
                    acc = accuracy(lk, test, cls)
                    keep_rows.append({"model": name, "fraction": frac, "fill": fill, "original": base, "locked": acc,
                                      "others_kept": acc["others"] / base["others"], "slice_seconds": round(ko_s, 1),
                                      **{k: v for k, v in ko_info.items() if k != "theta"}})  # fmt: skip
                    print(f"[{name}] keep-others f={frac:.1f} fill={fill}: target {acc['target']:.3f}, others "
                          f"{acc['others']:.3f} ({acc['others'] / base['others']:.3f} of the original)",
                          flush=True)  # fmt: skip
    return {"rows": rows, "keep_others": keep_rows, "seconds": round(time.perf_counter() - t_start, 1)}


def mean_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows averaged over seeds: one per (model, k, optimizer, select, fraction)."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["k"], r["optimizer"], r["select"], r["fraction"]), []).append(r)
    out = []
    for (m, k, o, sel, f), rs in groups.items():
        avg = {part: {q: float(np.mean([r[part][q] for r in rs])) for q in ("target", "others", "all")}
               for part in ("locked", "after")}  # fmt: skip
        spread = float(np.std([r["after"]["target"] for r in rs]))
        out.append({"model": m, "k": k, "optimizer": o, "select": sel, "fraction": f, "seeds": len(rs),
                    "original": rs[0]["original"], **avg, "after_target_std": spread})  # fmt: skip
    return out


def goals(res: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The issue's goals on the seed-averaged rows, per (model, k, optimizer)."""
    out: dict[str, Any] = {}
    rows = res["mean_rows"]
    top = max(args.fractions)
    for name in args.models:
        for k in args.ks:
            for opt in args.optimizers:
                sub = [r for r in rows if r["model"] == name and r["k"] == k and r["optimizer"] == opt]
                after = {(r["select"], r["fraction"]): r["after"]["target"] for r in sub}
                lower = {f"{f}": after[("slice", f)] < min(after[("weight", f)], after[("random", f)])
                         for f in args.fractions}  # fmt: skip
                out[f"{name}/k={k}/{opt}"] = {
                    f"slice_target_after_at_{top}": round(after[("slice", top)], 4),
                    f"weight_target_after_at_{top}": round(after[("weight", top)], 4),
                    f"random_target_after_at_{top}": round(after[("random", top)], 4),
                    f"slice_below_10pct_at_{top}": after[("slice", top)] < 0.10,
                    "slice_lower_than_weight_and_random": lower,
                    "reference_none": round(after[("none", 0.0)], 4),
                    "reference_scratch": round(after[("scratch", 0.0)], 4),
                }
    for name in args.models:
        kr = [r for r in res["keep_others"] if r["model"] == name]
        if kr:
            out[f"{name}/keep_others"] = {f"{r['fraction']}/{r['fill']}": round(r["others_kept"], 4) for r in kr}
    return out


def plot(res: dict[str, Any], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = [[(m, k, o) for o in args.optimizers] for m in args.models for k in args.ks]
    nrows, ncols = len(grid), len(args.optimizers)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.8 * ncols, 3.6 * nrows), squeeze=False)
    colors = {"slice": "tab:red", "weight": "tab:blue", "random": "tab:green"}
    cells = [(axes[i][j], grid[i][j]) for i in range(nrows) for j in range(ncols)]
    for ax, (m, k, o) in cells:
        sub = [r for r in res["mean_rows"] if r["model"] == m and r["k"] == k and r["optimizer"] == o]
        for sel in SELECTS:
            pts = sorted((r["fraction"], r["after"]["target"], r["after"]["others"], r["locked"]["target"])
                         for r in sub if r["select"] == sel)  # fmt: skip
            fr = [p[0] for p in pts]
            ax.plot(fr, [p[1] for p in pts], "-o", color=colors[sel], label=f"{sel}: target after thief")
            ax.plot(fr, [p[2] for p in pts], "--", color=colors[sel], alpha=0.6, label=f"{sel}: others after thief")
            ax.plot(fr, [p[3] for p in pts], ":", color=colors[sel], alpha=0.6, label=f"{sel}: target, locked")
        for ref, style in (("none", "k-"), ("scratch", "k:")):
            r = next(x for x in sub if x["select"] == ref)
            ax.axhline(r["after"]["target"], color="k", linestyle=style[1:], lw=0.8, label=f"thief on {ref} (target)")
        ax.axhline(0.10, color="grey", lw=0.6)
        ax.set_title(f"{m}, k={k}, {o}, {args.epochs} epochs, mean of {len(args.seeds)} seed(s)", fontsize=8)
        ax.set_xlabel("hidden fraction")
        ax.set_ylabel("test accuracy")
        ax.set_ylim(-0.02, 1.02)
    axes[0][0].legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.replot:
        res = json.loads(Path(args.replot).read_text())
        rows = res["mean_rows"]
        args.models = list(dict.fromkeys(r["model"] for r in rows))
        args.ks = sorted({r["k"] for r in rows})
        args.optimizers = list(dict.fromkeys(r["optimizer"] for r in rows))
        args.epochs, args.seeds = res["meta"]["epochs"], res["meta"]["seeds"]
        plot(res, args, Path(args.plot))
        print(f"saved {args.plot}")
        return 0
    res = run(args)
    res["mean_rows"] = mean_rows(res["rows"])
    res["goals"] = goals(res, args)
    res["meta"] = {
        "command": "python benchmarks/bench_protect.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "scale": args.scale,
        "classes": args.classes,
        "seeds": args.seeds,
        "epochs": args.epochs,
        "slice_samples": args.slice_samples,
        "thief_data": "last k samples of builtin:mnist?split=train (all classes)",
        "eval_data": "builtin:mnist?split=test (1,000 samples)",
        "lr": LR,
        "batch_size": 32,
        "machine": f"{os.cpu_count()} CPUs shared with other jobs (load average {os.getloadavg()[0]:.1f} at the end); "
        "onnxruntime and numpy on 1 thread",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, (json.dumps(res, indent=1, default=float)).encode())
    plot(res, args, Path(args.plot))
    table = [{"model": r["model"], "k": r["k"], "opt": r["optimizer"], "select": r["select"], "f": r["fraction"],
              "seeds": r["seeds"],
              "target locked": r["locked"]["target"], "target after": r["after"]["target"],
              "others locked": r["locked"]["others"], "others after": r["after"]["others"]}
             for r in res["mean_rows"]]  # fmt: skip
    print(format_table(table, title="thief's fine-tuning (test accuracy, mean over seeds)"))
    print(json.dumps(res["goals"], indent=1))
    print(f"saved {out} and {args.plot} ({res['seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
