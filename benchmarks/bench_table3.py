"""SAfER Table 3 counterpart: layer criterion (rows) x neuron criterion (columns), 20% structured pruning.

Run ``python benchmarks/bench_table3.py`` (quick: 3 seeds, 64 calibration samples, 1000 test samples)
or ``--seeds 10 --samples 256`` (the paper's 10 runs) from the repository root. No fine-tuning.

Model: ResNet-8 on MNIST (``models/resnet8_mnist.onnx``; SAfER uses the TinyML ResNet-8 on CIFAR-10,
so the absolute accuracies differ: read the drop from the original). Per seed, the calibration set is a
different block of ``samples`` training images; every criterion's relevance ``phi`` is computed once on
it and serves both ways:

- rows (inter-layer budget): ``C_l = linf(|phi_l|)`` through SAfER's ``gamma_l = alpha * gamma * C_l``
  (``plan_pruning(budget="sensitivity")``), plus ``uniform`` (every group loses the same fraction);
- columns (intra-layer neuron choice): ``|phi|`` summed per output channel (``channel_score``; the
  ``weight`` column is the L1 norm of the filters, ``hsic`` is per channel already), plus ``random``.

``gamma`` = 0.2 of the prunable parameters (plan_pruning's structured ratio, whose removed channels are
20% of the parameters rather than exactly 20% of the neurons). Accuracy is measured on the first
``--test`` images of ``builtin:mnist?split=test``; cells are means over seeds, with row and column
averages and the best cell, as in the paper (whose best cell is 82%, grad x IDGI).

Results: ``benchmarks/results/table3.json`` and ``table3.png`` (heatmap).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("ONNXSLICE_THREADS", "1")  # one onnxruntime thread: twice as fast on the shared machine

import onnxslice as osl  # noqa: E402
from onnxslice.console import format_table  # noqa: E402
from onnxslice.io import save_json  # noqa: E402
from onnxslice.plans import plan_pruning  # noqa: E402
from onnxslice.rewrite import prune  # noqa: E402
from onnxslice.rewrite.fidelity import run_outputs  # noqa: E402
from onnxslice.sensitivity import relevance  # noqa: E402
from onnxslice.sensitivity.reductions import reduce  # noqa: E402
from onnxslice.sensitivity.scores import LayerScores  # noqa: E402

#: The paper's criteria, in its order (``fd`` is ours, not in Table 3).
CRITERIA = ("weight", "grad", "wgrad", "gradcampp", "ig", "gig", "idgi", "smoothgrad", "vargrad", "hsic")
#: SAfER Table 3 (% accuracy, ResNet-8 on CIFAR-10, gamma = 20%): rows = layer criterion, cols = neuron criterion.
PAPER = {
    "weight": [31, 63, 18, 41, 75, 75, 73, 32, 21, 32],
    "grad": [31, 71, 79, 67, 80, 80, 82, 55, 13, 74],
    "wgrad": [31, 41, 47, 32, 75, 75, 75, 37, 37, 50],
    "gradcampp": [31, 27, 82, 70, 80, 80, 80, 12, 52, 22],
    "ig": [31, 32, 64, 23, 73, 75, 75, 37, 65, 39],
    "gig": [31, 32, 66, 59, 75, 73, 76, 32, 47, 38],
    "idgi": [23, 21, 55, 64, 76, 73, 76, 28, 50, 59],
    "smoothgrad": [31, 17, 69, 33, 50, 80, 80, 62, 47, 65],
    "vargrad": [31, 77, 75, 75, 80, 80, 80, 63, 28, 19],
    "hsic": [31, 36, 57, 44, 73, 75, 75, 11, 26, 39],
}


def run_seed(model: osl.Model, seed: int, crits: list[str], samples: int, gamma: float, test: Any,
              labels: np.ndarray, steps: int, noise: int) -> tuple[dict[tuple[str, str], float], dict[str, float]]:
    train = osl.load_data("builtin:mnist?split=train")
    calib = train.subset(slice(seed * samples, (seed + 1) * samples))
    phis: dict[str, dict[str, np.ndarray]] = {}
    seconds: dict[str, float] = {}
    for c in crits:
        t0 = time.perf_counter()
        phis[c] = relevance(model, calib, c, samples=samples, batch_size=32, seed=seed, steps=steps,
                            noise_samples=noise)
        seconds[c] = round(time.perf_counter() - t0, 1)
        print(f"   seed {seed}: {c} relevance in {seconds[c]} s", flush=True)
    rows: dict[str, LayerScores | None] = {"uniform": None}
    for c in crits:
        rows[c] = LayerScores({x.name: reduce(phis[c][x.name], "linf") for x in model.layers}, c, "linf")
    cols: dict[str, Any] = {"random": "random"}
    for c in crits:
        cols[c] = "l1" if c == "weight" else phis[c]
    cells: dict[tuple[str, str], float] = {}
    for rname, scores in rows.items():
        for cname, cs in cols.items():
            kw: dict[str, Any] = {"budget": "uniform"} if scores is None else {"budget": "sensitivity",
                                                                                  "scores": scores}
            plan = plan_pruning(model, gamma, channel_score=cs, seed=seed, **kw)
            y = run_outputs(prune(model, plan, seed=seed), test)[0]
            cells[(rname, cname)] = float((y.argmax(1) == labels).mean())
        print(f"   seed {seed} row {rname}: " + " ".join(f"{cells[(rname, c)]:.2f}" for c in cols), flush=True)
    return cells, seconds


def _t_half(values: list[float]) -> float:
    """Half-width of the 95% t-interval of the mean of ``values`` (0 for fewer than 2)."""
    if len(values) < 2:
        return 0.0
    from scipy import stats

    return float(stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values)))


def aggregate(per_seed: list[dict[tuple[str, str], float]], rows: list[str], cols: list[str]) -> dict[str, Any]:
    """Cell means and stds over the seeds, row and column averages with their 95% t-interval over the
    seeds (the average of a row is computed per seed first), the best cell, as in the paper's Table 3."""
    mean = {(r, c): float(np.mean([s[(r, c)] for s in per_seed])) for r in rows for c in cols}
    std = {(r, c): float(np.std([s[(r, c)] for s in per_seed])) for r in rows for c in cols}
    row_avg = {r: [float(np.mean([s[(r, c)] for c in cols])) for s in per_seed] for r in rows}
    col_avg = {c: [float(np.mean([s[(r, c)] for r in rows])) for s in per_seed] for c in cols}
    table = []
    for r in rows:
        row: dict[str, Any] = {"layer \\ neuron": r}
        row.update({c: round(100 * mean[(r, c)], 1) for c in cols})
        row["avg"] = round(100 * float(np.mean(row_avg[r])), 1)
        row["95% CI +-"] = round(100 * _t_half(row_avg[r]), 1)
        row["paper avg"] = round(float(np.mean(PAPER[r])), 1) if r in PAPER else ""
        table.append(row)
    avg: dict[str, Any] = {"layer \\ neuron": "avg"}
    avg.update({c: round(100 * float(np.mean(col_avg[c])), 1) for c in cols})
    table.append(avg)
    ci: dict[str, Any] = {"layer \\ neuron": "95% CI +-"}
    ci.update({c: round(100 * _t_half(col_avg[c]), 1) for c in cols})
    table.append(ci)
    # the mean of the paper's cells per column (its printed last line differs by up to 4 points on two columns)
    paper_cols = {c: round(float(np.mean([PAPER[r][CRITERIA.index(c)] for r in PAPER])), 1)
                  for c in cols if c in CRITERIA}
    table.append({"layer \\ neuron": "paper avg", **paper_cols})
    best = max(mean, key=lambda k: mean[k])
    return {"table": table, "mean": {f"{r}|{c}": v for (r, c), v in mean.items()},
            "std": {f"{r}|{c}": v for (r, c), v in std.items()},
            "row_avg": {r: {"mean": float(np.mean(v)), "ci95": _t_half(v)} for r, v in row_avg.items()},
            "col_avg": {c: {"mean": float(np.mean(v)), "ci95": _t_half(v)} for c, v in col_avg.items()},
            "best": {"row": best[0], "column": best[1], "accuracy": mean[best], "std": std[best]}}


def heatmap(agg: dict[str, Any], rows: list[str], cols: list[str], original: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from onnxslice.io import atomic_path

    grid = np.array([[agg["mean"][f"{r}|{c}"] for c in cols] for r in rows]) * 100
    fig, ax = plt.subplots(figsize=(1 + 0.8 * len(cols), 1 + 0.55 * len(rows)))
    im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=100)
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for i in range(len(rows)):
        for j in range(len(cols)):
            ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if grid[i, j] < 60 else "black")
    ax.set_xlabel("neuron criterion (within a layer)")
    ax.set_ylabel("layer criterion (budget)")
    ax.set_title(f"ResNet-8/MNIST, 20% pruned, no fine-tuning (original {100 * original:.1f}%)")
    fig.colorbar(im, ax=ax, label="test accuracy %")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def reaggregate(src: Path, out: Path) -> None:
    """The tables, best cell and plot of ``src`` recomputed from its per-seed cells, saved to ``out``."""
    old = json.loads(src.read_text())
    per_seed = [{tuple(k.split("|")): v for k, v in s.items()} for s in old["per_seed"]]
    agg = aggregate(per_seed, old["rows"], old["columns"])
    print(format_table(agg["table"], title=f"Table 3 counterpart: accuracy % at gamma={old['ratio']}, mean of "
                       f"{len(per_seed)} seeds (original {100 * old['original_accuracy']:.1f}%)"))
    save_json(out, {**old, **agg})
    heatmap(agg, old["rows"], old["columns"], old["original_accuracy"], out.with_suffix(".png"))
    print(f"saved {out} and {out.with_suffix('.png')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3, help="runs (calibration blocks) averaged (default 3; paper 10)")
    ap.add_argument("--samples", type=int, default=64, help="calibration samples per run (default 64; paper 256)")
    ap.add_argument("--test", type=int, default=1000, help="test images (default 1000)")
    ap.add_argument("--ratio", type=float, default=0.2, help="gamma, fraction of prunable parameters (default 0.2)")
    ap.add_argument("--criteria", default=",".join(CRITERIA), help="comma list (default: the paper's ten)")
    ap.add_argument("--steps", type=int, default=8, help="path steps of ig/gig/idgi (default 8)")
    ap.add_argument("--noise-samples", type=int, default=8, help="noise draws of smoothgrad/vargrad (default 8)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "table3.json"),
                    help="JSON results (default benchmarks/results/table3.json; the PNG goes beside it)")
    ap.add_argument("--aggregate", metavar="JSON",
                    help="recompute the tables and the plot of an earlier results JSON from its per-seed cells "
                         "(no pruning is run; written to --out)")
    args = ap.parse_args()
    if args.aggregate:
        reaggregate(Path(args.aggregate), Path(args.out))
        return
    crits = args.criteria.split(",")
    model = osl.load(ROOT / "models" / "resnet8_mnist.onnx")
    test = osl.load_data("builtin:mnist?split=test").subset(slice(0, args.test))
    assert test.labels is not None
    original = float((run_outputs(model, test)[0].argmax(1) == test.labels).mean())
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    per_seed, seconds = [], []
    out = Path(args.out)
    part = out.with_suffix(".partial.json")
    config = {k: getattr(args, k) for k in ("samples", "test", "ratio", "criteria", "steps", "noise_samples")}
    if part.is_file():  # resume: seeds already measured with the same settings
        old = json.loads(part.read_text())
        if old["config"] == config:
            per_seed = [{tuple(k.split("|")): v for k, v in s.items()} for s in old["per_seed"]][: args.seeds]
            seconds = old["relevance_seconds"][: args.seeds]
    for seed in range(len(per_seed), args.seeds):
        cells, secs = run_seed(model, seed, crits, args.samples, args.ratio, test, test.labels, args.steps,
                               args.noise_samples)
        per_seed.append(cells)
        seconds.append(secs)
        save_json(part, {"config": config, "relevance_seconds": seconds,
                         "per_seed": [{f"{r}|{c}": v for (r, c), v in s.items()} for s in per_seed]})
    rows, cols = ["uniform", *crits], ["random", *crits]
    agg = aggregate(per_seed, rows, cols)
    print(format_table(agg["table"], title=f"Table 3 counterpart: accuracy % at gamma={args.ratio}, mean of "
                       f"{args.seeds} seeds (original {100 * original:.1f}%)"))
    b = agg["best"]
    print(f"best cell: {b['row']} x {b['column']} = {100 * b['accuracy']:.1f}% (+- {100 * b['std']:.1f}); "
          "paper: grad x idgi = 82% (CIFAR-10)")
    payload = {"command": "python " + " ".join(["benchmarks/bench_table3.py", *sys.argv[1:]]),
               "machine": {"cpus": os.cpu_count(), "loadavg_start": load0, "loadavg_end": os.getloadavg(),
                           "note": "2 cores shared by 8 concurrent sessions"},
               "model": "resnet8_mnist", "original_accuracy": original, "ratio": args.ratio, "seeds": args.seeds,
               "calibration_samples": args.samples, "test_samples": len(test), "rows": rows, "columns": cols,
               **agg, "per_seed": [{f"{r}|{c}": v for (r, c), v in s.items()} for s in per_seed],
               "relevance_seconds": seconds, "paper": PAPER, "seconds": round(time.perf_counter() - t0, 1)}
    save_json(out, payload)
    part.unlink(missing_ok=True)
    heatmap(agg, rows, cols, original, out.with_suffix(".png"))
    print(f"saved {out} and {out.with_suffix('.png')} ({payload['seconds']} s)")


if __name__ == "__main__":
    main()
