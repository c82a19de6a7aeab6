"""SAfER Tables 1/2 from the per-model results an ``onnxslice bench safer --cache DIR`` run left behind.

``onnxslice bench safer`` writes one JSON per finished model into ``DIR/<settings digest>/``; this script
aggregates whatever is there (a run stopped part-way included: the table says how many models of each
family it holds) into the tables, a JSON like ``bench safer --out``, and a plot of the exact-ranking %
per criterion with its 95% interval beside the paper's average and the ground truth's ceiling.

    python benchmarks/bench_safer_tables.py out/safer-cache/228160503d22 --out benchmarks/results/safer_sampled.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ORDER = {"vanilla": 0, "skip": 1, "skip+sd": 2, "transformer": 3}


def plot(tabs: dict[str, Any], path: Path, title: str) -> None:
    """Exact % per criterion (linf, 95% CI) beside the paper's Table 1 average and the ceiling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from onnxslice.io import atomic_path

    rows = tabs["correlations"]
    crits = [r["criterion"] for r in rows]
    ours = np.array([r["exact %"] for r in rows])
    lo = np.array([float(r["95% CI"].strip("[]").split(",")[0]) for r in rows])
    hi = np.array([float(r["95% CI"].strip("[]").split(",")[1]) for r in rows])
    paper = np.array([r["SAfER avg exact %"] for r in rows], float)
    x = np.arange(len(crits))
    fig, ax = plt.subplots(figsize=(1.5 + 0.7 * len(crits), 4))
    ax.bar(x - 0.2, ours, 0.4, yerr=[np.maximum(ours - lo, 0), np.maximum(hi - ours, 0)], capsize=3, label="ours")
    ax.bar(x + 0.2, paper, 0.4, color="grey", alpha=0.6, label="paper (Table 1 avg)")
    ceiling = tabs["table1"][-1].get("ceiling")
    if ceiling is not None:
        ax.axhline(ceiling, color="red", ls="--", lw=1, label=f"ground-truth ceiling ({ceiling:.0f}%)")
    ax.set_xticks(x, crits, rotation=30, ha="right")
    ax.set_ylabel("exact ranking % (linf), 95% CI")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def findings(results: list[dict[str, Any]], crits: list[str]) -> dict[str, Any]:
    """The paper's qualitative findings on these results, with 95% Wilson intervals and paired tests.

    Those of ``bench_safer_variants`` (gradient family vs the others on vanilla, the criteria on skip
    nets, the reductions), plus: linf against each other reduction and vargrad against each other
    criterion on the skip families, paired per (model, setting, magnitude) with an exact McNemar test
    (``a_only``: cases only the first gets exactly right), and the criteria on the transformers.
    """
    from onnxslice.sensitivity.benchmark import wilson
    from onnxslice.sensitivity.reductions import REDUCTIONS
    from onnxslice.sensitivity.variants import _findings, mcnemar

    cases = [{**c, "family": r["family"], "model": r["model"]} for r in results for c in r["cases"]]
    paper = [c for c in crits if c != "fd"]  # the paper's criteria: ours (fd) is not among "the others"
    out = _findings(cases, paper)

    def setting(c: dict[str, Any]) -> tuple[Any, ...]:
        return c["model"], c["noise"], c["on"], c["magnitude"]

    by_red: dict[tuple[Any, ...], dict[str, bool]] = {}
    for c in cases:
        by_red.setdefault((*setting(c), c["criterion"]), {})[c["reduction"]] = bool(c["exact"])
    full = [v for v in by_red.values() if len(v) == len(REDUCTIONS)]
    out["linf vs each reduction (paired, every criterion)"] = {
        red: mcnemar([v["linf"] for v in full], [v[red] for v in full]) for red in REDUCTIONS if red != "linf"}
    by_crit: dict[tuple[Any, ...], dict[str, bool]] = {}
    for c in cases:
        if c["reduction"] == "linf" and c["family"] in ("skip", "skip+sd"):
            by_crit.setdefault(setting(c), {})[c["criterion"]] = bool(c["exact"])
    if any("vargrad" in v for v in by_crit.values()):
        out["skip nets: vargrad vs each criterion (paired, linf)"] = {
            cr: mcnemar([v["vargrad"] for v in by_crit.values() if cr in v and "vargrad" in v],
                        [v[cr] for v in by_crit.values() if cr in v and "vargrad" in v])
            for cr in paper if cr != "vargrad"}
    gfam = ("grad", "wgrad", "gradcampp", "idgi")
    by_van: dict[tuple[Any, ...], dict[str, list[bool]]] = {}
    for c in cases:
        if c["reduction"] == "linf" and c["family"] == "vanilla" and c["criterion"] in paper:
            side = "family" if c["criterion"] in gfam else "others"
            by_van.setdefault(setting(c), {"family": [], "others": []})[side].append(bool(c["exact"]))
    diffs = [100.0 * (np.mean(v["family"]) - np.mean(v["others"])) for v in by_van.values()
             if v["family"] and v["others"]]
    if diffs:
        from scipy.stats import t

        d = np.asarray(diffs)
        half = float(t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
        # the sign test is McNemar's on (family ahead, family behind): settings where both tie drop out
        out["vanilla: gradient family minus the others, paired per setting (linf)"] = {
            "difference": {**mcnemar(list(d > 0), list(d < 0)), "mean points": float(d.mean()),
                           "ci95 half-width": half, "settings": len(d)}}
    tr = [c for c in cases if c["family"] == "transformer" and c["reduction"] == "linf"]
    if tr:
        rows = {}
        for cr in crits:
            sel = [bool(c["exact"]) for c in tr if c["criterion"] == cr]
            lo, hi = wilson(sum(sel), len(sel))
            rows[cr] = {"exact %": 100.0 * sum(sel) / len(sel) if sel else float("nan"), "ci": [lo, hi],
                        "n": len(sel)}
        out["transformers: exact % per criterion (linf)"] = rows
    return out


def _print_findings(found: dict[str, Any]) -> None:
    for title, block in found.items():
        parts = []
        for name, v in block.items():
            if "mean points" in v:
                parts.append(f"{name} {v['mean points']:+.1f} +- {v['ci95 half-width']:.1f} points over "
                             f"{v['settings']} settings, ahead {v['a_only']} / behind {v['b_only']}, sign test "
                             f"p={v['p']:.2g}")
            elif "p" in v:
                parts.append(f"{name} +{v['a_only']}/-{v['b_only']} p={v['p']:.2g}")
            else:
                parts.append(f"{name} {v['exact %']:.1f} [{v['ci'][0]:.0f}, {v['ci'][1]:.0f}] n={v['n']}")
        print(f"{title}: " + "; ".join(parts))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="CACHE/<settings digest> folder of an 'onnxslice bench safer --cache' run")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "safer_sampled.json"),
                   help="JSON output (default benchmarks/results/safer_sampled.json; the PNG goes beside it)")
    p.add_argument("--label", default="", help="added to the plot's title, e.g. the run's layer setting")
    args = p.parse_args(argv)

    from onnxslice.io import save_json
    from onnxslice.sensitivity import criteria_names
    from onnxslice.sensitivity.benchmark import render, tables

    files = sorted(Path(args.folder).glob("*.json"))
    if not files:
        sys.stderr.write(f"no per-model results in {args.folder}\n")
        return 2
    results = [json.loads(f.read_text()) for f in files]
    results.sort(key=lambda r: (ORDER.get(r["family"], 9), r.get("index", 0)))
    crits = [c for c in criteria_names() if any(x["criterion"] == c for r in results for x in r["cases"])]
    tabs = tables(results, crits)
    per_family = dict(Counter(r["family"] for r in results))
    work = float(sum(sum(r["seconds"].values()) for r in results))
    per_fam_s = {f: float(sum(sum(r["seconds"].values()) for r in results if r["family"] == f) / n)
                 for f, n in per_family.items()}
    title = ", ".join(f"{n} {f}" for f, n in per_family.items())
    print(render(tabs, f" ({title})"))
    found = findings(results, crits)
    print()
    _print_findings(found)
    print(f"\n{len(results)} models, {work:.0f} s of work; mean s/model per family: "
          + ", ".join(f"{f} {s:.0f}" for f, s in per_fam_s.items()))
    payload = {"command": "python benchmarks/bench_safer_tables.py " + " ".join(argv or sys.argv[1:]),
               "models_per_family": per_family, "models": [r["model"] for r in results], "criteria": crits,
               "model_seconds": work, "seconds_per_model_by_family": per_fam_s, "tables": tabs,
               "load_at_aggregation": os.getloadavg(),
               "findings": found,
               # per model: its size, cost and the ceiling cases (the per-case rows stay in the cache folder)
               "per_model": [{k: r[k] for k in ("model", "family", "layers", "seconds", "errors", "ceiling") if k in r}
                             for r in results]}
    save_json(args.out, payload)
    label = f" ({args.label})" if args.label else ""
    plot(tabs, Path(args.out).with_suffix(".png"), f"SAfER Table 1 counterpart, moons: {title} models{label}")
    print(f"saved {args.out} and {Path(args.out).with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
