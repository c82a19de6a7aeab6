"""Adversarial-input detection from slices (NNSlicer application I) against two baselines, beside Table 4.

    python benchmarks/bench_detect.py [--quick | --full] [--models lenet5,resnet8] [--train N] [--test N]

For each reference model (``models/lenet5.onnx``, ``models/resnet8_mnist.onnx``) on ``builtin:mnist``:
profile on the training split; extract features of ``--train`` normal training-split samples and fit
one detector per feature kind (slice = NNSlicer, activation = feature-map baseline, gradient = saliency
baseline) with the same classifier; attack ``--test`` test-split samples with every attack of
:mod:`onnxslice.attacks` at its documented strength, keep only the successful ones (the model was right
before and wrong after) as positives, and ``--test`` clean test samples as negatives. Reported per
attack and on average: precision, recall, F1 of the paper's rule (flag when the detector's label differs
from the model's) and ROC-AUC of the score (1 - the detector's probability of the model's label), plus
the time per sample of each feature extraction. The slice features are also scored with the other
classifiers (tree, forest, boosting) and without leaving the output layer out (an ablation).

The paper's Table 4 (ResNet-10 / CIFAR-10, 17 attacks x 500 inputs): NNSlicer average F1 0.91, precision
0.83, recall 1.00; EffectivePath F1 0.80; feature-map detector F1 0.62.

Everything runs single-threaded (``OMP_NUM_THREADS=1``, one onnxruntime thread) in one process; the
feature kinds are extracted on the same inputs in the same run, interleaved per input set. Results go to
``benchmarks/results/detect.json`` and ``benchmarks/results/detect_roc_<model>.png`` (named after ``--out``).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("ONNXSLICE_PROGRESS", "0")

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from onnxslice.io import atomic_write_bytes

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.simplefilter("ignore")

PAPER = {"f1": 0.91, "precision": 0.83, "recall": 1.00, "effectivepath_f1": 0.80, "featuremap_f1": 0.62}
MODELS = {
    "lenet5": ("models/lenet5.onnx", "element"),
    "resnet8": ("models/resnet8_mnist.onnx", "channel"),
}
KINDS = ("slice", "activation", "gradient")


def _attack_sets(model: Any, x: np.ndarray, y: np.ndarray, attacks: list[str], heavy: dict[str, int]) -> dict:
    from onnxslice.attacks import STRENGTHS, predict, run_attack

    clean_pred = predict(model, x)
    out = {}
    for name in attacks:
        n = min(len(x), heavy.get(name, len(x)))
        t = time.perf_counter()
        opts = dict(STRENGTHS[name])
        if name == "cw-l2":
            opts["steps"] = heavy.get("cw-steps", opts["steps"])
        adv = run_attack(name, model, x[:n], y[:n], **opts)
        pred = predict(model, adv)
        ok = (pred != y[:n]) & (clean_pred[:n] == y[:n])
        out[name] = {"x": adv[ok], "tried": n, "successful": int(ok.sum()), "seconds": time.perf_counter() - t}
        print(f"  attack {name:15s} {ok.sum():4d}/{n} successful  {out[name]['seconds']:.1f}s", flush=True)
    return out


def _roc(ax: Any, clean: np.ndarray, adv: np.ndarray, label: str) -> None:
    from sklearn.metrics import roc_curve

    y = np.r_[np.zeros(len(clean)), np.ones(len(adv))]
    fpr, tpr, _ = roc_curve(y, np.r_[clean, adv])
    ax.plot(fpr, tpr, label=label)


def run_model(key: str, args: argparse.Namespace) -> dict[str, Any]:
    from onnxslice.apps.detect import detection_metrics, fit_detector
    from onnxslice.apps.features import extract_features
    from onnxslice.data import load_data
    from onnxslice.model import load
    from onnxslice.profile import profile

    path, gran = MODELS[key]
    model = load(ROOT / path)
    tr = load_data("builtin:mnist?split=train")
    te = load_data("builtin:mnist?split=test")
    prof = profile(model, tr, show_progress=False)
    xtr = tr.x[: args.train]
    xte, yte = te.x[: args.test], te.labels[: args.test]
    print(f"{key}: train {len(xtr)}, test {len(xte)}, slice granularity {gran}", flush=True)
    attacks = args.attacks.split(",")
    heavy = {"cw-l2": args.heavy, "deepfool": args.heavy, "cw-steps": args.cw_steps}
    sets = _attack_sets(model, xte, yte, attacks, heavy)
    inputs = {"train": xtr, "clean": xte, **{a: s["x"] for a, s in sets.items() if len(s["x"])}}
    feats: dict[str, dict[str, Any]] = {k: {} for k in KINDS}
    secs: dict[str, list[float]] = {k: [] for k in KINDS}
    for name, xs in inputs.items():  # the three kinds interleaved on each input set
        for kind in KINDS:
            f = extract_features(
                model, xs, kind, profile=prof, granularity=gran, aggregate=args.aggregate, workers=args.workers
            )
            feats[kind][name] = f
            secs[kind].append(f.seconds / max(1, len(xs)))
        print(
            f"  features {name:15s} n={len(xs):4d} " + " ".join(f"{k} {secs[k][-1] * 1e3:.1f}ms" for k in KINDS),
            flush=True,
        )
    variants = [(k, "forest", True) for k in KINDS]
    variants += [("slice", "tree", True), ("slice", "boosting", True), ("slice", "forest", False)]
    if args.quick:
        variants = [v for v in variants if v[1] != "boosting"]
    rows = []
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for kind, clf, skip in variants:
        det = fit_detector(
            model,
            tr.subset(slice(0, args.train)),
            profile=prof,
            features=kind,
            classifier=clf,
            skip_output=skip,
            granularity=gran,
            aggregate=args.aggregate,
            precomputed=feats[kind]["train"],
        )

        def verdict(f: Any, det: Any = det) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            probs, labels = det.classify(f.values)
            idx = {c: i for i, c in enumerate(det.classes)}
            col = np.array([idx[int(p)] for p in f.predictions])
            p = probs[np.arange(len(col)), col]
            return 1 - p, labels != f.predictions, (labels != f.predictions) | (p < det.threshold)

        cs, cf, cc = verdict(feats[kind]["clean"])
        per, cal = {}, {}
        for a in sets:
            if a not in feats[kind]:
                continue
            s, fl, fc = verdict(feats[kind][a])
            per[a] = detection_metrics(cs, cf, s, fl)
            cal[a] = detection_metrics(cs, cc, s, fc)
            if clf == "forest" and skip:
                curves.setdefault(a, {})[kind] = (cs, s)
        real = [a for a in per if not a.startswith("noise")]
        avg = {m: float(np.mean([per[a][m] for a in real])) for m in ("precision", "recall", "f1", "auc")}
        avg_cal = {m: float(np.mean([cal[a][m] for a in real])) for m in ("precision", "recall", "f1")}
        name = f"{kind}/{clf}" + ("" if skip else "/with-output-layer")
        rows.append(
            {
                "detector": name,
                "features": kind,
                "classifier": clf,
                "skip_output": skip,
                "clean_flagged": float(cf.mean()),
                "per_attack": per,
                "average": avg,
                "threshold": det.threshold,
                "clean_flagged_calibrated": float(cc.mean()),
                "per_attack_calibrated": cal,
                "average_calibrated": avg_cal,
                "ms_per_sample": 1e3 * float(np.median(secs[kind])),
            }
        )
    _print_table(key, rows, sets)
    _plot(key, curves, Path(args.out))
    return {
        "model": path,
        "granularity": gran,
        "train": len(xtr),
        "test": len(xte),
        "attacks": {a: {k: v for k, v in s.items() if k != "x"} for a, s in sets.items()},
        "detectors": rows,
    }


def _print_table(key: str, rows: list[dict[str, Any]], sets: dict) -> None:
    print(f"\n{key}: detection (positives = successful adversarial inputs, negatives = clean test inputs)")
    print(f"{'':34s} {'paper rule (disagree)':^27s} | {'calibrated (5% train FPR)':^27s} |")
    hdr = f"{'P':>6s} {'R':>6s} {'F1':>6s} {'clean':>6s}"
    print(f"{'detector':34s} {hdr} | {hdr} | {'AUC':>6s} {'ms/smp':>7s}")
    for r in rows:
        a, c = r["average"], r["average_calibrated"]
        print(
            f"{r['detector']:34s} {a['precision']:6.3f} {a['recall']:6.3f} {a['f1']:6.3f} {r['clean_flagged']:6.3f} | "
            f"{c['precision']:6.3f} {c['recall']:6.3f} {c['f1']:6.3f} {r['clean_flagged_calibrated']:6.3f} | "
            f"{a['auc']:6.3f} {r['ms_per_sample']:7.1f}"
        )
    print(
        f"{'paper Table 4 NNSlicer (ResNet-10/C10)':34s} {PAPER['precision']:6.3f} {PAPER['recall']:6.3f} "
        f"{PAPER['f1']:6.3f} {'-':>6s}"
    )
    print(
        f"{'paper feature-map / EffectivePath':34s} {'':6s} {'':6s} {PAPER['featuremap_f1']:6.3f} / "
        f"{PAPER['effectivepath_f1']:.2f}"
    )
    print("per attack (F1 paper rule / F1 calibrated / AUC), forest:")
    for r in rows:
        if r["classifier"] != "forest" or not r["skip_output"]:
            continue
        cal = r["per_attack_calibrated"]
        print(
            f"  {r['features']:10s} "
            + "  ".join(
                f"{a}:{m['f1']:.2f}/{cal[a]['f1']:.2f}/{m['auc']:.2f}(n={m['adversarial']})"
                for a, m in r["per_attack"].items()
            )
        )


def _plot(key: str, curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], out_json: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(curves)
    if not n:
        return
    cols = min(4, n)
    fig, axes = plt.subplots(
        (n + cols - 1) // cols, cols, figsize=(3.2 * cols, 3.2 * ((n + cols - 1) // cols)), squeeze=False
    )
    for ax, (attack, kinds) in zip(axes.ravel(), curves.items(), strict=False):
        for kind, (cs, s) in kinds.items():
            _roc(ax, cs, s, kind)
        ax.plot([0, 1], [0, 1], ":", color="gray")
        ax.set_title(attack, fontsize=9)
        ax.set_xlabel("false positive rate", fontsize=8)
        ax.set_ylabel("true positive rate", fontsize=8)
        ax.legend(fontsize=7, loc="lower right")
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.suptitle(f"{key}: ROC of the detectors (forest) per attack", fontsize=10)
    fig.tight_layout()
    out = out_json.with_name(f"{out_json.stem}_roc_{key}.png")
    fig.savefig(out, dpi=90)
    plt.close(fig)
    print(f"saved {out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small scale: 600 train, 150 test (the default)")
    p.add_argument("--full", action="store_true", help="the issue's scale: 2000 train, 500 test")
    p.add_argument("--models", default="lenet5,resnet8", help="lenet5, resnet8 (default both)")
    p.add_argument("--train", type=int, default=None, help="normal training samples (quick 600, full 2000)")
    p.add_argument(
        "--test", type=int, default=None, help="test samples attacked, and clean negatives (quick 150, full 500)"
    )
    p.add_argument(
        "--heavy", type=int, default=None, help="samples for DeepFool and CW (default: --test; 50 in quick mode)"
    )
    p.add_argument("--cw-steps", type=int, default=20, help="CW Adam steps per binary-search round (default 20)")
    p.add_argument(
        "--attacks",
        default="fgsm,bim,pgd,pgd-l2,deepfool,cw-l2,square,spatial,noise-gaussian",
        help="attacks (default: all but noise-uniform)",
    )
    p.add_argument(
        "--aggregate",
        choices=("channel", "none"),
        default="channel",
        help="slice features per channel (default) or per synapse",
    )
    p.add_argument("--workers", type=int, default=1, help="slicing processes (default 1: this process)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "detect.json"), help="JSON results path")
    args = p.parse_args()
    args.quick = not args.full
    args.train = args.train or (2000 if args.full else 600)
    args.test = args.test or (500 if args.full else 150)
    args.heavy = args.heavy or (args.test if args.full else min(args.test, 50))
    start = time.perf_counter()
    results = {k: run_model(k, args) for k in args.models.split(",")}
    load = os.getloadavg()
    doc = {
        "paper_table4": PAPER,
        "conditions": {
            "scale": "full" if args.full else "quick",
            "argv": sys.argv[1:],
            "threads": 1,
            "load_average": load,
            "note": "shared machine (2 cores, eight concurrent jobs): wall times are inflated",
            "seconds": time.perf_counter() - start,
        },
        "models": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(Path(args.out), (json.dumps(doc, indent=2, default=float) + "\n").encode())
    print(f"saved {args.out} ({doc['conditions']['seconds']:.0f}s, load average {load[0]:.1f})")


if __name__ == "__main__":
    main()
