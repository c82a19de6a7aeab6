"""NNSlicer class-focused pruning (the paper's Figure 3): target-class accuracy vs pruning ratio.

Run ``python benchmarks/bench_classprune.py`` (quick: 3 target subsets, ratios 0.1-0.6, 50 slice
samples per subset) or ``--full`` (10 subsets, 200 slice samples on LeNet-5 / 100 on ResNet-8, every
target-class test sample) from the repository root. No fine-tuning anywhere.

Per model (``lenet5``, ``resnet8_mnist``) and per *seed* (a target subset of two classes drawn from
``numpy.random.default_rng(seed)``), every layer loses the fraction ``r`` of its weights (unstructured),
chosen by:

- ``slice-targeted``: smallest ``|CONTRIB|`` of the Slice of NNSlicer's criterion (I_T, O_T) (the
  target classes' training samples, their output neurons), CONTRIB accumulated as signs (NNSlicer);
- ``slice-targeted-abs``: the same slice with ``accumulate="abs"`` (the number of significant uses);
- ``slice-all``: the slice of every class (samples of all classes, ``pred`` target), signed;
- ``slice-then-magnitude``: the weights outside the targeted slice (CONTRIB 0) first, then the smallest
  ``|w|`` (a hybrid: the slice says *whether* a synapse serves the target classes, the magnitude how much);
- ``magnitude``: smallest ``|w|`` (the usual baseline);
- ``random``: uniformly random weights (seeded).

Measured on the target classes' test samples: ``acc_all`` (argmax over all ten classes: the accuracy
that NNSlicer's Figure 3 plots) and ``acc_targets`` (argmax restricted to the target classes).
``--bn-recalibrate`` adds every method again after re-estimating each BatchNormalization's mean and
variance on 256 training samples (in graph order): it separates the error that the slice can see
(deviations from the mean) from the shift of the mean that a removed weight also causes.

Results: ``benchmarks/results/classprune.json`` and ``classprune.png`` (mean +- std over seeds).
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

import onnxslice as osl  # noqa: E402
from models import zoo  # noqa: E402
from onnxslice.console import format_table  # noqa: E402
from onnxslice.io import save_json  # noqa: E402
from onnxslice.plans import plan_pruning  # noqa: E402
from onnxslice.plans.prune_plan import class_slice  # noqa: E402
from onnxslice.rewrite import prune  # noqa: E402
from onnxslice.rewrite.fidelity import run_outputs  # noqa: E402

MODELS = ("lenet5", "resnet8_mnist")
METHODS = ("slice-targeted", "slice-targeted-abs", "slice-all", "slice-then-magnitude", "magnitude", "random")
#: NNSlicer Figure 3 at r = 0.55 (accuracy on the target classes).
PAPER_055 = {"slice-targeted": 0.80, "magnitude": 0.405}


def target_subset(seed: int, k: int = 2) -> list[int]:
    """The ``k`` target classes of a seed."""
    return sorted(int(c) for c in np.random.default_rng(seed).choice(10, k, replace=False))


def recalibrate_bn(model: osl.Model, calib: dict[str, np.ndarray]) -> osl.Model:
    """Every BatchNormalization's mean and variance re-estimated on ``calib``, in graph order."""
    import onnx
    from onnx import numpy_helper

    from onnxslice.record import Recorder

    for node in [n for n in model.nodes if n.op_type == "BatchNormalization"]:
        x = Recorder(model, "all").run(calib)[node.inputs[0]].astype(np.float64)
        axes = (0, *range(2, x.ndim))
        new = {node.inputs[3]: x.mean(axis=axes), node.inputs[4]: x.var(axis=axes)}
        proto = onnx.ModelProto()
        proto.CopyFrom(model.proto)
        for init in proto.graph.initializer:
            if init.name in new:
                init.CopyFrom(numpy_helper.from_array(new[init.name].astype(np.float32), init.name))
        model = model.with_proto(proto, "BatchNormalization statistics re-estimated")
    return model


def scores_for(model: osl.Model, method: str, slices: dict[str, Any], seed: int) -> dict[str, np.ndarray] | None:
    """Per-weight scores (higher = kept) for the slice budget; None for magnitude (uniform budget)."""
    if method == "magnitude":
        return None
    if method == "slice-then-magnitude":
        syn = slices["slice-targeted"].synapses
        return {x.weight: (syn[x.weight] != 0) * (1.0 + np.abs(model.initializer(x.weight)).max())
                + np.abs(model.initializer(x.weight)) for x in model.layers}
    if method == "random":
        rng = np.random.default_rng(1000 + seed)
        return {x.weight: rng.random(model.initializer(x.weight).shape) for x in model.layers}
    return dict(slices[method].synapses)


def run_model(name: str, seeds: list[int], ratios: list[float], n_slice: int, n_test: int | None,
              bn: list[float], methods: list[str], **slice_options: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    model = osl.load(zoo.path(name))
    train = osl.load_data("builtin:mnist?split=train")
    test = osl.load_data("builtin:mnist?split=test")
    assert test.labels is not None and train.labels is not None
    calib = train.subset(slice(0, 256)).bind(model)
    rows: list[dict[str, Any]] = []
    diag: dict[str, Any] = {}
    for seed in seeds:
        targets = target_subset(seed)
        keep = np.flatnonzero(np.isin(test.labels, targets))[:n_test]
        sub = test.subset(keep)
        assert sub.labels is not None
        tg = np.asarray(targets)

        def accuracy(m: osl.Model, sub: Any = sub, tg: np.ndarray = tg,
                     targets: list[int] = targets) -> dict[str, float]:
            y = run_outputs(m, sub)[0]
            return {"acc_all": float((y.argmax(1) == sub.labels).mean()),
                    "acc_targets": float((tg[y[:, targets].argmax(1)] == sub.labels).mean())}

        t0 = time.perf_counter()
        slices = {
            "slice-targeted": class_slice(model, train, targets, samples=n_slice, profile_samples=1000,
                                          accumulate="signed", **slice_options),
            "slice-targeted-abs": class_slice(model, train, targets, samples=n_slice, profile_samples=1000,
                                              accumulate="abs", **slice_options),
            "slice-all": class_slice(model, train, "pred", samples=n_slice, profile_samples=1000,
                                     accumulate="signed", **slice_options),
        }
        slice_s = time.perf_counter() - t0
        signed, counted = slices["slice-targeted"].synapses, slices["slice-targeted-abs"].synapses
        diag[f"{name}/seed{seed}"] = {
            x.name: {"in_slice": float(np.mean(counted[x.weight] != 0)),
                     "signed_over_count": float(np.abs(signed[x.weight]).sum() / max(1, counted[x.weight].sum()))}
            for x in model.layers}
        base = accuracy(model)
        print(f"== {name} seed {seed} targets {targets}: {len(sub)} test samples, 3 slices in {slice_s:.1f} s, "
              f"original {base}", flush=True)
        for r in ratios:
            for method in methods:
                sc = scores_for(model, method, slices, seed)
                plan = (plan_pruning(model, r, budget="uniform", mode="unstructured") if sc is None else
                        plan_pruning(model, r, budget="slice", slice=sc, mode="unstructured"))
                pruned = prune(model, plan)
                variants = [(method, pruned)]
                if r in bn and any(n.op_type == "BatchNormalization" for n in model.nodes):
                    variants.append((f"{method}+bnrecal", recalibrate_bn(pruned, calib)))
                for label, m in variants:
                    rows.append({"model": name, "seed": seed, "targets": targets, "ratio": r, "method": label,
                                 **accuracy(m), "original_acc_all": base["acc_all"], "test_samples": len(sub),
                                 "slice_samples": n_slice})
            print(f"   r={r:.2f} " + "  ".join(f"{x['method']} {x['acc_all']:.3f}/{x['acc_targets']:.3f}"
                                               for x in rows if x["ratio"] == r and x["seed"] == seed
                                               and x["model"] == name), flush=True)
    return rows, diag


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std over seeds per model, ratio and method."""
    out = []
    for key in sorted({(r["model"], r["ratio"], r["method"]) for r in rows}):
        rs = [r for r in rows if (r["model"], r["ratio"], r["method"]) == key]
        a, t = np.array([r["acc_all"] for r in rs]), np.array([r["acc_targets"] for r in rs])
        out.append({"model": key[0], "ratio": key[1], "method": key[2], "seeds": len(rs),
                    "acc_all": round(float(a.mean()), 4), "acc_all_std": round(float(a.std()), 4),
                    "acc_targets": round(float(t.mean()), 4), "acc_targets_std": round(float(t.std()), 4)})
    return out


def plot(summary: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in summary})
    colours = dict(zip(METHODS, ("tab:red", "tab:purple", "tab:green", "tab:brown", "tab:blue", "tab:orange"),
                       strict=True))
    fig, axes = plt.subplots(2, len(models), figsize=(6 * len(models), 8), squeeze=False)
    for j, model in enumerate(models):
        for i, metric in enumerate(("acc_all", "acc_targets")):
            ax = axes[i][j]
            for method in sorted({r["method"] for r in summary if r["model"] == model}):
                rs = sorted((r for r in summary if r["model"] == model and r["method"] == method),
                            key=lambda r: r["ratio"])
                x = [r["ratio"] for r in rs]
                y, e = np.array([r[metric] for r in rs]), np.array([r[f"{metric}_std"] for r in rs])
                colour = colours.get(method.split("+")[0], "tab:gray")
                recal = "bnrecal" in method
                ax.plot(x, y, marker="x" if recal else "o", ms=9 if recal else 5, label=method, color=colour,
                        ls="--" if recal else "-")
                if not recal:
                    ax.fill_between(x, y - e, y + e, alpha=0.1, color=colour)
            ax.set_title(f"{model}: {'argmax over all classes' if metric == 'acc_all' else 'argmax over targets'}")
            ax.set_xlabel("per-layer pruning ratio r (unstructured)")
            ax.set_ylabel("accuracy on the target classes")
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle("NNSlicer class-focused pruning (mean +- std over target subsets), no fine-tuning")
    fig.tight_layout()
    from onnxslice.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="10 seeds, 200/100 slice samples, every test sample "
                    "(default: the quick run, 3 seeds, 50 slice samples, 500 test samples per subset)")
    ap.add_argument("--seeds", type=int, help="number of target subsets (default 3, 10 with --full)")
    ap.add_argument("--first-seed", type=int, default=0, help="first seed (default 0), to split seeds over runs")
    ap.add_argument("--merge", action="append", default=[],
                    help="rows of another run's JSON to merge in (e.g. other seeds; default none)")
    ap.add_argument("--model", action="append", default=[], help="lenet5 and/or resnet8_mnist (default both)")
    ap.add_argument("--ratios", default="0.1,0.2,0.3,0.4,0.55,0.6", help="per-layer ratios (default 0.1-0.6)")
    ap.add_argument("--bn-recalibrate", default="",
                    help="comma list of ratios at which every method is also measured after re-estimating the "
                         "BatchNormalization statistics (default none)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma list (default all)")
    ap.add_argument("--theta", type=float, default=0.3, help="NNSlicer's theta for every slice (default 0.3)")
    ap.add_argument("--granularity", choices=("element", "channel"), default="element",
                    help="slice granularity (default element)")
    ap.add_argument("--slice-samples", type=int,
                    help="criterion samples per slice (default 50; --full: 200 on LeNet-5, 100 on ResNet-8)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "classprune.json"),
                    help="JSON results (default benchmarks/results/classprune.json; the PNG goes beside it)")
    args = ap.parse_args()
    n_seeds = args.seeds if args.seeds is not None else (10 if args.full else 3)
    seeds = list(range(args.first_seed, args.first_seed + n_seeds))
    ratios = [float(r) for r in args.ratios.split(",")]
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    diag: dict[str, Any] = {}
    methods = args.methods.split(",")
    for name in args.model or list(MODELS):
        n_slice = args.slice_samples or ((200 if name == "lenet5" else 100) if args.full else 50)
        bn = [float(x) for x in args.bn_recalibrate.split(",") if x]
        r, d = run_model(name, seeds, ratios, n_slice, None if args.full else 500, bn, methods, theta=args.theta,
                         granularity=args.granularity)
        rows += r
        diag.update(d)
    out = Path(args.out)
    # keep the rows of earlier runs (other models, methods or seeds) that this run did not redo
    commands: list[str] = []
    for src in [out, *map(Path, args.merge)]:
        if src.is_file():
            old = json.loads(src.read_text())
            commands += old.get("commands", [old.get("command", "")])
            done = {(r["model"], r["method"], r["seed"]) for r in rows}
            rows = [r for r in old.get("rows", []) if (r["model"], r["method"], r["seed"]) not in done] + rows
            diag = {**old.get("slice_diagnostics", {}), **diag}
    seeds = sorted({r["seed"] for r in rows})
    ratios = sorted({r["ratio"] for r in rows})
    summary = summarise(rows)
    print(format_table([{k: v for k, v in s.items() if not k.endswith("_std")} for s in summary],
                       title="class-focused pruning: accuracy on the target classes (mean over seeds)"))
    command = "python " + " ".join(["benchmarks/bench_classprune.py", *sys.argv[1:]])
    payload = {"command": command, "commands": list(dict.fromkeys([*commands, command] if seeds else commands)),
               "machine": {"cpus": os.cpu_count(), "loadavg_start": load0, "loadavg_end": os.getloadavg(),
                           "note": "2 cores shared by 8 concurrent sessions"},
               "theta": args.theta, "granularity": args.granularity,
               "seeds": seeds, "targets": {s: target_subset(s) for s in seeds}, "ratios": ratios,
               "paper_r055": PAPER_055, "summary": summary, "rows": rows, "slice_diagnostics": diag,
               "seconds": round(time.perf_counter() - t0, 1)}
    save_json(out, payload)
    plot(summary, out.with_suffix(".png"))
    print(f"saved {out} and {out.with_suffix('.png')} ({payload['seconds']} s)")


if __name__ == "__main__":
    main()
