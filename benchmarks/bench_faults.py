"""The SAfER robust-inference experiment: check the most important layers, let bit flips hit the others.

For each model and each layer order (the criteria wgrad, gradcampp, grad, idgi, weight; random orders;
and the measured per-layer vulnerability as an oracle), the first ``k`` layers of the order are checked
(a fault there is detected and the inference discarded, so it costs nothing) and random bit flips hit
the weights and activations of the other ``L - k`` layers (``onnxslice.apps.faults``: bit-error rate
``p`` on every bit of float32 weights and activations, weights one draw per trial, activations one
draw per inference). Reported per order: accuracy (MNIST models, against the labels) or top-1
agreement with the fault-free model (EfficientNet-Lite0) as the number of unchecked layers grows, with
a 95% interval over the trials; the area under the curve (the curve's mean over ``u = 0..L`` unchecked
layers, higher = better); and the smallest ``k`` keeping the mean loss within one point for every ``k' >= k``.

How the rate is chosen (before any order is evaluated): the smallest ``p`` of the grid
``1e-7, 3e-7, 1e-6, ... 1e-4`` at which leaving *every* layer unchecked costs at least ``--min-drop``
points (default 10) on the same data with ``--trials`` trials; a rate at which unchecked faults do not
hurt cannot rank anything. ``--rate`` fixes it instead.

All orders of one model share one campaign: a layer's faults in trial ``t`` are the same whatever
the other unchecked layers (common random numbers), so curves differ only by which layers are checked.
The oracle is measured with a different seed than the curves. Random orders: ``--random`` permutations,
their curves averaged.

Run ``python benchmarks/bench_faults.py`` (quick: LeNet-5 and ResNet-8, 128 test images, 10 trials, the
moderate rate only; about 15 minutes on the shared 2-core machine at load ~30) or ``--full`` (1,000
images, 50 trials, criteria on 256 samples, moderate and severe rates).
``--models efficientnet`` adds EfficientNet-Lite0 on the 20 sample images (slow). Results:
``benchmarks/results/faults.json`` and ``benchmarks/results/faults.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models import zoo  # noqa: E402
from onnxslice.apps.faults import FaultModel, fault_layers, run_campaign, vulnerability  # noqa: E402
from onnxslice.console import format_table  # noqa: E402
from onnxslice.io import atomic_write_bytes  # noqa: E402
from onnxslice.model import Model, load  # noqa: E402
from onnxslice.sensitivity import reduce, relevance  # noqa: E402

CRITERIA = ("wgrad", "gradcampp", "grad", "idgi", "weight")
GRID = (1e-7, 3e-7, 1e-6, 3e-6, 1e-5, 3e-5, 1e-4)
MODELS = {
    "lenet5": ("LeNet-5", "builtin:mnist?split=test"),
    "resnet8_mnist": ("ResNet-8", "builtin:mnist?split=test"),
    "efficientnet": ("EfficientNet-Lite0", "builtin:samples-imagenet"),
}
PAPER = ("SAfER (ResNet-50, ImageNet): < 1% loss checking 17 of 52 layers (a third); W x grad and GradCAM++ "
         "degrade slowest, plain grad fastest")


def _data(spec: str, n: int) -> dict[str, np.ndarray]:
    from onnxslice.data import load_data

    ds = load_data(spec)
    out = {"x": ds.x[:n]}
    if ds.labels is not None and "imagenet" not in spec:
        out["y"] = ds.labels[:n]
    return out


_RATE_MEMO: dict[int, dict[float, tuple[float, float, float]]] = {}


def _pick_rate(m: Model, data: dict[str, np.ndarray], args: argparse.Namespace,
               min_drop: float) -> tuple[float, list[dict]]:
    """The smallest grid rate at which all layers unchecked cost >= ``min_drop`` points."""
    names = [x.name for x in fault_layers(m)]
    tried = []
    memo = _RATE_MEMO.setdefault(id(m), {})
    for p in GRID:
        if p not in memo:
            camp = run_campaign(m, data, [names], FaultModel("both", rate=p), trials=args.trials,
                                seed=args.seed + 7, batch_size=args.batch_size)
            memo[p] = (*camp.sets[0].mean_ci(camp.metric), camp.clean)
        mean, half, clean = memo[p]
        drop = 100 * (clean - mean)
        tried.append({"rate": p, "all_unchecked": mean, "ci95": half, "drop_points": drop})
        print(f"  rate {p:g}: all layers unchecked -> {camp.metric} {mean:.4f} (drop {drop:.1f} points)",
              file=sys.stderr)
        if drop >= min_drop:
            return p, tried
    return GRID[-1], tried


def _criteria_orders(m: Model, data: dict[str, np.ndarray], args: argparse.Namespace) -> dict[str, Any]:
    """Each criterion's relevance once, ranked by every reduction of ``--reductions``."""
    cal = {"x": data["x"][: args.cal_samples], **({"y": data["y"][: args.cal_samples]} if "y" in data else {})}
    orders: dict[str, list[str]] = {}
    seconds: dict[str, float] = {}
    for c in CRITERIA:
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rel = relevance(m, cal, c, samples=args.cal_samples, steps=args.steps, batch_size=args.batch_size,
                            seed=args.seed)
        names = list(rel)
        for red in args.reductions.split(","):
            sc = {n: reduce(rel[n], red) for n in names}
            orders[f"{c}/{red}"] = sorted(names, key=lambda n: (-sc[n], names.index(n)))
        seconds[c] = time.perf_counter() - t0
    return {"orders": orders, "seconds": seconds}


def _orders(m: Model, data: dict[str, np.ndarray], fm: FaultModel, args: argparse.Namespace,
            crit: dict[str, Any]) -> dict[str, Any]:
    orders: dict[str, list[str]] = dict(crit["orders"])
    seconds: dict[str, float] = dict(crit["seconds"])
    t0 = time.perf_counter()
    vul, _ = vulnerability(m, data, fm, trials=args.trials, seed=args.seed + 1000, batch_size=args.batch_size)
    orders["vulnerability (oracle)"] = vul.ranking()
    seconds["vulnerability (oracle)"] = time.perf_counter() - t0
    names = [x.name for x in fault_layers(m)]
    rng = np.random.default_rng(args.seed + 99)
    for r in range(args.random):
        orders[f"random#{r}"] = [names[i] for i in rng.permutation(len(names))]
    return {"orders": orders, "seconds": seconds, "vulnerability": vul.scores}


def _ks(L: int, step: int) -> list[int]:
    """Numbers of checked layers evaluated: ``0, step, 2 step, ..., L``."""
    return sorted({*range(0, L + 1, max(step, 1)), L})


def _curves(m: Model, data: dict[str, np.ndarray], fm: FaultModel, orders: dict[str, list[str]],
            args: argparse.Namespace) -> tuple[dict[str, Any], float, str]:
    L = len(next(iter(orders.values())))
    ks = _ks(L, args.k_step)
    sets: list[tuple[str, ...]] = []
    for order in orders.values():
        for k in ks:
            s = tuple(sorted(order[k:]))
            if s not in sets:
                sets.append(s)
    camp = run_campaign(m, data, [list(s) for s in sets], fm, trials=args.trials, seed=args.seed,
                        batch_size=args.batch_size)
    by_set = {s: r for s, r in zip(sets, camp.sets, strict=True)}
    metric = camp.metric
    curves: dict[str, Any] = {}
    for name, order in orders.items():
        per_k = [by_set[tuple(sorted(order[k:]))].metric(metric) for k in ks]
        curves[name] = {"order": order, "checked": ks, "trials": [v.tolist() for v in per_k]}
    return curves, camp.clean, metric


def _summary(curves: dict[str, Any], clean: float, L: int, max_loss: float) -> list[dict[str, Any]]:
    """Per order: mean and 95% CI per number of unchecked layers, area, min checked layers (on the grid of
    checked counts: with ``--k-step`` > 1 the minimum is rounded up to the grid)."""
    groups: dict[str, list[str]] = {}
    for name in curves:
        groups.setdefault(name.split("#")[0], []).append(name)
    rows = []
    for g, members in groups.items():
        # per k: trial values (random: averaged over the orders, trial by trial)
        ks = curves[members[0]]["checked"]
        vals = [np.mean([np.asarray(curves[n]["trials"][i]) for n in members], axis=0) for i in range(len(ks))]
        mean = np.array([v.mean() for v in vals])
        half = np.array([1.96 * v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else np.nan for v in vals])
        best = None
        for i in range(len(ks) - 1, -1, -1):
            if clean - mean[i] <= max_loss + 1e-12:
                best = ks[i]
            else:
                break
        unchecked = [L - k for k in ks][::-1]
        area = float(mean.mean())  # the mean of the curve over the evaluated points
        rows.append({"order": g, "area": area, "min_checked": best, "unchecked": unchecked,
                     "curve_unchecked": mean[::-1].tolist(), "ci95_unchecked": half[::-1].tolist()})
    return rows


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [run for rs in results["models"].values() for run in rs]
    cols = min(len(runs), 2)
    rows_n = (len(runs) + cols - 1) // cols
    fig, axes = plt.subplots(rows_n, cols, figsize=(7 * cols, 5 * rows_n), squeeze=False)
    for ax in axes.ravel()[len(runs):]:
        ax.axis("off")
    for ax, r in zip(axes.ravel(), runs, strict=False):
        ax.set_prop_cycle(color=plt.get_cmap("tab20").colors)
        for row in r["summary"]:
            u = np.asarray(row["unchecked"])
            y = 100 * np.asarray(row["curve_unchecked"])
            h = 100 * np.nan_to_num(np.asarray(row["ci95_unchecked"]))
            style = "--" if row["order"] in ("random", "vulnerability (oracle)") else (
                "-" if row["order"].endswith("/linf") else "-.")
            ax.plot(u, y, style, marker="o", ms=3, label=f"{row['order']} (AUC {100 * row['area']:.1f})")
            if row["order"] in ("random", "vulnerability (oracle)"):  # bands of the references only, for legibility
                ax.fill_between(u, y - h, y + h, alpha=0.1)
        ax.axhline(100 * r["clean"] - 1, color="grey", lw=0.8, ls=":", label="clean - 1 point")
        ax.set_title(f"{r['name']}: BER {r['rate']:g} on weights+activations (bands: 95% CI)")
        ax.set_xlabel("unchecked layers (least important first)")
        ax.set_ylabel(f"{r['metric']} (%)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _guard_latency(m: Model, chosen: list[str], data: dict[str, np.ndarray], repeats: int) -> dict[str, Any]:
    """Guarded model vs the original vs full duplication: MAC share, median latency (1 thread, round-robin)."""
    from onnxslice.flops import count_macs
    from onnxslice.record import make_session, runtime_proto
    from onnxslice.rewrite.guard import full_duplication, guard, guard_unit
    from onnxslice.rewrite.measure import paired_latency_ms

    g = guard(m, chosen)
    d = full_duplication(m)
    macs = count_macs(m).per_node
    total = sum(macs.values()) or 1
    share = sum(macs.get(n, 0) for c in chosen for n in guard_unit(m, c)) / total
    x = data["x"][:32]
    ref = make_session(runtime_proto(m.proto), "cpu", optimize=True).run(None, {"x": x})
    got = make_session(runtime_proto(g.proto), "cpu", optimize=True).run(None, {"x": x})
    out: dict[str, Any] = {"guarded": chosen, "mac_share": share,
                           "bit_identical": bool(all(np.array_equal(a, b) for a, b in zip(ref, got[:-1],
                                                                                           strict=True))),
                           "clean_flag": bool(got[-1])}
    for batch in (1, 32):
        lat = paired_latency_ms([m, g, d], {"x": data["x"][:batch]}, repeats=repeats, threads=1)
        out[f"batch{batch}"] = {"original_ms": lat[0], "guarded_ms": lat[1], "full_duplication_ms": lat[2],
                                "guarded_overhead": lat[1] / lat[0] - 1, "duplication_overhead": lat[2] / lat[0] - 1}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="1,000 images, 50 trials, 256 calibration samples")
    ap.add_argument("--models", default="lenet5,resnet8_mnist", help="lenet5,resnet8_mnist[,efficientnet]")
    ap.add_argument("--samples", type=int, default=None, help="evaluation images (quick 128, full 1000)")
    ap.add_argument("--trials", type=int, default=None, help="trials per point (quick 10, full 50)")
    ap.add_argument("--cal-samples", type=int, default=None, help="criterion samples (quick 64, full 256)")
    ap.add_argument("--steps", type=int, default=None, help="idgi path steps (quick 8, full 16)")
    ap.add_argument("--random", type=int, default=None, help="random orders averaged (quick 3, full 10)")
    ap.add_argument("--rate", type=float, default=None, help="fix the bit-error rate (default: chosen, see doc)")
    ap.add_argument("--min-drop", default=None,
                    help="rates: for each value, the smallest grid rate losing at least that many points with no "
                         "layer checked (quick 3: a moderate rate; full 3,10: a moderate and a severe one)")
    ap.add_argument("--reductions", default="linf,l1", help="criterion reductions ranked (default linf,l1)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--k-step", type=int, default=1, help="evaluate every k-th number of checked layers (default 1)")
    ap.add_argument("--repeats", type=int, default=200, help="latency repeats, round-robin (default 200)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "faults.json"))
    ap.add_argument("--plot-only", action="store_true", help="redraw the PNG from an existing --out JSON")
    args = ap.parse_args()
    if args.plot_only:
        _plot(json.loads(Path(args.out).read_text()), Path(args.out).with_suffix(".png"))
        return 0
    args.samples = args.samples or (1000 if args.full else 128)
    args.trials = args.trials or (50 if args.full else 10)
    args.cal_samples = args.cal_samples or (256 if args.full else 64)
    args.steps = args.steps or (16 if args.full else 8)
    args.random = args.random or (10 if args.full else 3)
    args.min_drop = args.min_drop or ("3,10" if args.full else "3")
    t_all = time.perf_counter()
    results: dict[str, Any] = {"quick": not args.full, "settings": {k: v for k, v in vars(args).items() if k != "out"},
                               "paper": PAPER, "models": {},
                               "conditions": "shared 2-core machine, loaded by 8 concurrent sessions; 1 thread per "
                                             "onnxruntime session (OMP_NUM_THREADS=1)"}
    for key in args.models.split(","):
        name, spec = MODELS[key]
        path = zoo.path("efficientnet_lite0" if key == "efficientnet" else key)
        m = load(path)
        data = _data(spec, args.samples)
        L = len(fault_layers(m))
        print(f"{name}: {L} layers, {len(data['x'])} samples", file=sys.stderr)
        crit = _criteria_orders(m, data, args)
        runs = []
        drops = [float(v) for v in args.min_drop.split(",")] if args.rate is None else [float("nan")]
        for min_drop in drops:
            t0 = time.perf_counter()
            tried: list[dict] = []
            rate = args.rate
            if rate is None:
                rate, tried = _pick_rate(m, data, args, min_drop)
            fm = FaultModel("both", rate=rate, bits="any")
            od = _orders(m, data, fm, args, crit)
            curves, clean, metric = _curves(m, data, fm, od["orders"], args)
            summary = _summary(curves, clean, L, 0.01)
            runs.append({"name": name, "layers": L, "rate": rate, "min_drop": min_drop, "rate_search": tried,
                         "clean": clean, "metric": metric, "criterion_seconds": od["seconds"],
                         "orders": od["orders"], "vulnerability": od["vulnerability"], "summary": summary,
                         "curves": curves, "seconds": time.perf_counter() - t0})
            rows = [{"order": r["order"], "AUC": round(100 * r["area"], 2),
                     "min checked (<=1 pt)": r["min_checked"], "of": L,
                     "no check": round(100 * r["curve_unchecked"][-1], 2)} for r in summary]
            rows.sort(key=lambda r: (r["min checked (<=1 pt)"] if r["min checked (<=1 pt)"] is not None else L + 1,
                                     -r["AUC"]))
            print(format_table(rows, title=f"{name}: clean {metric} {100 * clean:.2f}%, BER {rate:g} (weights + "
                                           f"activations), {args.trials} trials x {len(data['x'])} samples"))
            print()
        results["models"][key] = runs
    verdict = []
    for r in (run for runs in results["models"].values() for run in runs):
        crit = [s for s in r["summary"] if s["order"].split("/")[0] in CRITERIA]
        best = min(crit, key=lambda s: (s["min_checked"] if s["min_checked"] is not None else 10**6, -s["area"]))
        rnd = next(s for s in r["summary"] if s["order"] == "random")
        orc = next(s for s in r["summary"] if s["order"].startswith("vulnerability"))
        top_auc = max(crit, key=lambda s: s["area"])
        worst_auc = min(crit, key=lambda s: s["area"])
        verdict.append({
            "model": r["name"], "layers": r["layers"], "BER": r["rate"],
            "clean": round(100 * r["clean"], 2), "no check": round(100 * rnd["curve_unchecked"][-1], 2),
            "best criterion": best["order"], "checked": best["min_checked"], "random": rnd["min_checked"],
            "oracle": orc["min_checked"], "<= L/3": best["min_checked"] is not None and
            best["min_checked"] <= r["layers"] / 3,
            "< random": best["min_checked"] is not None and (rnd["min_checked"] is None or
                                                             best["min_checked"] < rnd["min_checked"]),
            "best AUC": top_auc["order"], "worst AUC": worst_auc["order"],
        })
    results["verdict"] = verdict
    lat_rows = []
    for key, runs in results["models"].items():
        r = runs[-1]
        m = load(zoo.path("efficientnet_lite0" if key == "efficientnet" else key))
        crit = [x for x in r["summary"] if x["order"].split("/")[0] in CRITERIA and x["min_checked"]]
        best = min(crit, key=lambda x: (x["min_checked"], -x["area"])) if crit else None
        k = best["min_checked"] if best else max(1, r["layers"] // 3)
        order = r["orders"][best["order"]] if best else r["orders"]["wgrad/linf"]
        gl = _guard_latency(m, order[:k], _data(MODELS[key][1], 32), args.repeats)
        gl["order"] = best["order"] if best else "wgrad/linf"
        results["models"][key][-1]["guard"] = gl
        for b in ("batch1", "batch32"):
            lat_rows.append({"model": r["name"], "layers guarded": f"{k}/{r['layers']}",
                             "MAC share": f"{gl['mac_share']:.1%}", "batch": b[5:],
                             "original ms": round(gl[b]["original_ms"], 3),
                             "guarded": f"+{gl[b]['guarded_overhead']:.1%}",
                             "full dup": f"+{gl[b]['duplication_overhead']:.1%}",
                             "bit-identical": gl["bit_identical"], "clean flag": gl["clean_flag"]})
    print(format_table(lat_rows, title="guarded model latency vs full duplication (median, 1 thread, round-robin)"))
    results["seconds"] = time.perf_counter() - t_all
    print(format_table(verdict, title="which criterion wins (fewest checked layers for <= 1 point; then AUC)"))
    print(f"paper: {PAPER}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, (json.dumps(results, indent=1, default=float)).encode())
    png = out.with_suffix(".png")
    _plot(results, png)
    print(f"saved {out} and {png} ({results['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
