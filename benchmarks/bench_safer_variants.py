"""SAfER Tables 1/2: our departures from the paper, each decided by an experiment (issue 18).

Runs :func:`onnxslice.sensitivity.variants.evaluate_variants` on ``--per-family`` sampled moons models per
family (the same models as ``onnxslice bench safer``: committed ones reused, the others trained into
``CACHE/models``), one model per unit of the parallel executor, each result cached as
``CACHE/variants-<digest>/<model>.json`` (a rerun skips the models already done). Then compares the
variants (ranked layers, magnitudes, |phi| vs signed reduction, batch vs per-sample gradients) with
95% intervals, a paired McNemar test against our defaults, and the distance to the paper's Table 1.

    python benchmarks/bench_safer_variants.py                      # quick: the 3 committed models per family
    python benchmarks/bench_safer_variants.py --per-family 10 --cache out/safer-cache --workers 2

Transformers are left out by default (one transformer costs ~20x an MLP model here: ``--families``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("ONNXSLICE_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
CRITERIA = "weight,grad,wgrad,gradcampp,ig,gig,idgi,smoothgrad,vargrad,hsic"


def plot(tabs: dict[str, Any], crits: list[str], path: Path) -> None:
    """Exact-ranking % (linf) per criterion for every variant, 95% intervals, the paper's averages."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from onnxslice.io import atomic_path
    from onnxslice.sensitivity.benchmark import SAFER_TABLE1_AVG

    names = list(tabs)
    width = 0.8 / (len(names) + 1)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(crits), 4.2))
    x = np.arange(len(crits))
    for i, name in enumerate(names):
        pc = tabs[name]["per criterion"]
        y = np.array([pc[c]["exact %"] for c in crits])
        lo = np.array([pc[c]["ci"][0] for c in crits])
        hi = np.array([pc[c]["ci"][1] for c in crits])
        ax.bar(x + i * width, y, width, yerr=[y - lo, hi - y], capsize=2, label=name)
    ax.bar(x + len(names) * width, [SAFER_TABLE1_AVG.get(c, np.nan) for c in crits], width, color="black",
           alpha=0.35, label="paper (Table 1 avg)")
    ax.set_xticks(x + 0.4 - width / 2, crits, rotation=30, ha="right")
    ax.set_ylabel("exact ranking % (linf), 95% CI")
    ax.set_title("SAfER moons benchmark: our departures from the paper, one at a time")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-family", type=int, default=3, help="models per family (default 3: the committed ones)")
    p.add_argument("--families", default="vanilla,skip,skip+sd", help="default vanilla,skip,skip+sd")
    p.add_argument("--criteria", default=CRITERIA, help=f"default {CRITERIA}")
    p.add_argument("--draws", type=int, default=32, help="ground-truth draws per layer (default 32)")
    p.add_argument("--cache", default=str(REPO / "out" / "safer-cache"),
                   help="folder of per-model results and trained models (default out/safer-cache)")
    p.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "safer_variants.json"),
                   help="JSON output (default benchmarks/results/safer_variants.json)")
    args = p.parse_args(argv)

    from onnxslice.io import save_json
    from onnxslice.parallel import map_units
    from onnxslice.sensitivity.benchmark import _run_sampled_one
    from onnxslice.sensitivity.variants import FULL_MAGNITUDES, evaluate_variants, variant_tables

    crits = args.criteria.split(",")
    evaluate = {"criteria": crits, "draws": args.draws, "magnitudes": list(FULL_MAGNITUDES)}
    digest = hashlib.sha1(json.dumps(evaluate, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(args.cache)
    shared = {"cache": str(root / f"variants-{digest}"), "builder": str(REPO / "models" / "moons.py"),
              "committed": str(REPO / "models" / "moons"), "built": str(root / "models"), "evaluate": evaluate,
              "evaluator": evaluate_variants}
    Path(shared["cache"]).mkdir(parents=True, exist_ok=True)
    units = [(f, k) for f in args.families.split(",") for k in range(args.per_family)]
    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    for start in range(0, len(units), args.workers):
        results += map_units(_run_sampled_one, units[start : start + args.workers], shared, workers=args.workers)
        sys.stderr.write(f"{len(results)}/{len(units)} models, {time.perf_counter() - t0:.0f} s\n")
    wall = time.perf_counter() - t0
    tabs = variant_tables(results, crits)
    work = float(sum(sum(r["seconds"].values()) for r in results))
    print(f"{len(results)} models, {wall:.0f} s wall, {work:.0f} s of work ({work / max(1, len(results)):.1f} s/model)")
    for name, v in tabs.items():
        vs = v.get("vs baseline (paired, linf)")
        ve = v.get("vs baseline (paired, every reduction)")
        print(f"{name:22s} exact {v['exact % (linf, all criteria)']:5.1f}% [{v['ci'][0]:.0f}, {v['ci'][1]:.0f}] "
              f"chance {v['chance % (random order)']:4.1f}%  n={v['cases']:5d}  dist-to-paper "
              f"{v['distance to paper (mean |ours - paper| over Table 1 cells, points)']:.1f}"
              + (f"  vs baseline: +{vs['a_only']}/-{vs['b_only']} p={vs['p']:.2g}" if vs else "")
              + (f" (every reduction: +{ve['a_only']}/-{ve['b_only']} p={ve['p']:.2g})" if ve else ""))
    payload = {"command": "python benchmarks/bench_safer_variants.py " + " ".join(argv or sys.argv[1:]),
               "models": [r["model"] for r in results], "criteria": crits, "seconds": wall, "work_seconds": work,
               "per_model_seconds": {r["model"]: r["seconds"] for r in results},
               "load": os.getloadavg(), "variants": tabs}
    save_json(args.out, payload)
    plot(tabs, [c for c in crits if "|" not in c], Path(args.out).with_suffix(".png"))
    print(f"saved {args.out} and {Path(args.out).with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
