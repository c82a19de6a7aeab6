"""``onnxslice detect {fit,score,attack}``: adversarial-input detection from slices (NNSlicer application I).

- ``detect fit MODEL --data D --profile P --out det.npz``: slice every normal training sample (criterion:
  the sample and its predicted class), fit the classifier on the correctly classified ones, save the
  detector (classifier as ONNX, profile, fingerprints); ``--onnx det.onnx`` also writes the classifier alone.
- ``detect score MODEL --detector det.npz --data X [--out scores.json]``: flag and score inputs.
- ``detect attack MODEL --data D --attack pgd --out adv.npz``: adversarial inputs from the model's own
  gradients (``x`` and the true labels ``y``), to score.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import numpy as np

from onnxslice.commands import add_common, emit_json
from onnxslice.commands._types import fraction_open01, nonneg_int, positive_float, positive_int
from onnxslice.errors import DataError
from onnxslice.outputs import Outputs

NAME = "detect"
HELP = "adversarial-input detection from slices: fit a detector, score inputs, make attacks"
ORDER = 75


def _executor(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=positive_int, default=16, help="samples per unit of slicing work (default 16)")
    p.add_argument("--backend", choices=("local", "ray"), default="local", help="executor (default local)")
    p.add_argument(
        "--workers", type=positive_int, default=None,
        help="processes / Ray CPUs (default: one per CPU; 1 = in this process)",
    )
    p.add_argument("--address", default=None, help="Ray cluster address to join (default: start a local one)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", parser_class=type(p))
    sub.required = True
    fit = sub.add_parser("fit", help="fit a detector on normal labelled samples")
    add_common(fit, data=True)
    fit.add_argument("--profile", "-p", default=None, help="profile of the model (.npz; required for slice features)")
    fit.add_argument("--out", "-o", required=True, help="where to write the detector (.npz)")
    fit.add_argument("--onnx", default=None, help="also write the classifier alone as ONNX (default: not written)")
    fit.add_argument(
        "--features",
        choices=("slice", "activation", "gradient"),
        default="slice",
        help="slice (NNSlicer, default), activation (feature-map baseline) or gradient (saliency baseline)",
    )
    fit.add_argument(
        "--classifier",
        choices=("forest", "tree", "boosting"),
        default="forest",
        help="scikit-learn model (default forest)",
    )
    fit.add_argument(
        "--keep-output-layer", action="store_true", help="also use the output layer's features (default off)"
    )
    fit.add_argument("--theta", type=fraction_open01, default=0.3, help="slicing threshold in (0, 1) (default 0.3)")
    fit.add_argument(
        "--granularity", choices=("element", "channel"), default="element", help="slicing neurons (default element)"
    )
    fit.add_argument(
        "--aggregate",
        choices=("channel", "none"),
        default="channel",
        help="per-channel sums or every synapse (default channel)",
    )
    fit.add_argument("--samples", "-s", default=None, help="samples of the data: START:STOP, i, or i,j,k (default all)")
    fit.add_argument("--min-per-class", type=positive_int, default=10,
                     help="fewest correct samples per class (default 10)")
    fit.add_argument(
        "--flag-rate",
        type=float,
        default=0.05,
        help="fraction of normal samples the calibrated rule may flag (default 0.05; 0: the paper's rule only)",
    )
    fit.add_argument("--seed", type=nonneg_int, default=0, help="classifier seed (default 0)")
    _executor(fit)

    score = sub.add_parser("score", help="flag and score inputs with a fitted detector")
    add_common(score, data=True)
    score.add_argument("--detector", required=True, help="detector file (.npz from `detect fit`)")
    score.add_argument("--profile", "-p", default=None, help="check that the detector was fitted with this profile")
    score.add_argument("--samples", "-s", default=None, help="samples of the data (default all)")
    score.add_argument("--out", "-o", default=None, help="write per-sample results as JSON (default: not written)")
    _executor(score)

    atk = sub.add_parser("attack", help="adversarial inputs from the model's own gradients")
    add_common(atk, data=True)
    atk.add_argument(
        "--attack",
        "-a",
        required=True,
        help="fgsm, bim, pgd, pgd-l2, deepfool, cw-l2, square, "
        "noise-uniform, noise-gaussian or spatial (at its documented strength)",
    )
    atk.add_argument("--epsilon", type=positive_float, default=None,
                     help="override the attack's bound (default: documented)")
    atk.add_argument("--samples", "-s", default=None, help="samples of the data (default all)")
    atk.add_argument("--successful", action="store_true", help="keep only inputs whose attack succeeded (default all)")
    atk.add_argument("--out", "-o", required=True, help="where to write the inputs (.npz with the input and 'y')")


def _npz_path(path: str, flag: str) -> str:
    if not path.endswith(".npz"):
        raise DataError(f"{flag} '{path}' must end in .npz")
    return path


def _load(args: argparse.Namespace, outs: Outputs) -> Any:
    from onnxslice.data import load_data
    from onnxslice.model import load

    outs.reads(args.model, "MODEL")
    if os.path.exists(args.data.split("?", 1)[0]):
        outs.reads(args.data.split("?", 1)[0], "--data")
    return load(args.model), load_data(args.data)


def _subset(ds: Any, samples: str | None) -> Any:
    from onnxslice.data import parse_samples

    return ds if samples is None else ds.subset(parse_samples(samples, len(ds)))


def _workers(args: argparse.Namespace) -> int:
    return int(args.workers or os.cpu_count() or 1)


def _fit(args: argparse.Namespace) -> int:
    from onnxslice.apps.detect import fit_detector
    from onnxslice.profile import Profile

    outs = Outputs("detect fit")
    if args.profile:
        outs.reads(args.profile, "--profile")
    model, ds = _load(args, outs)
    out = outs.writes(_npz_path(args.out, "--out"), "--out")
    onnx_out = outs.writes(args.onnx, "--onnx")
    prof = Profile.load(args.profile) if args.profile else None
    det = fit_detector(
        model,
        _subset(ds, args.samples),
        profile=prof,
        features=args.features,
        classifier=args.classifier,
        skip_output=not args.keep_output_layer,
        theta=args.theta,
        granularity=args.granularity,
        aggregate=args.aggregate,
        min_per_class=args.min_per_class,
        flag_rate=args.flag_rate,
        seed=args.seed,
        backend=args.backend,
        workers=_workers(args),
        address=args.address,
        device=args.device,
        batch_size=args.batch_size,
    )
    outs.defer(out, det.save)
    outs.defer(onnx_out, det.save_onnx)
    outs.commit()
    info = {
        "out": str(out),
        "onnx": str(onnx_out) if onnx_out else None,
        "features": det.kind,
        "classifier": det.classifier,
        "feature_length": det.feature_length,
        "columns_used": len(det.columns),
        **det.stats,
    }
    if args.json:
        emit_json(info)
        return 0
    print(
        f"detector: {det.kind} features ({det.feature_length}, {len(det.columns)} used), {det.classifier}; fitted on "
        f"{det.stats['used']} of {det.stats['samples']} samples (the correctly classified ones) in "
        f"{det.stats['seconds']:.1f}s of feature extraction\nsaved {out}"
        + (f"\nclassifier ONNX {onnx_out}" if onnx_out else "")
    )
    return 0


def _score(args: argparse.Namespace) -> int:
    from onnxslice.apps.detect import Detector
    from onnxslice.console import format_table
    from onnxslice.profile import Profile

    outs = Outputs("detect score")
    outs.reads(args.detector, "--detector")
    if args.profile:
        outs.reads(args.profile, "--profile")
    model, ds = _load(args, outs)
    out = outs.writes(args.out, "--out")
    det = Detector.load(args.detector)
    det.check(model, Profile.load(args.profile) if args.profile else None)
    ds = _subset(ds, args.samples)
    res = det.detect(
        model,
        ds,
        batch_size=args.batch_size,
        backend=args.backend,
        workers=_workers(args),
        address=args.address,
        device=args.device,
    )
    result: dict[str, Any] = {
        "samples": len(res.flagged),
        "flagged": int(res.flagged.sum()),
        "disagree": int(res.disagree.sum()),
        "threshold": det.threshold,
        "seconds_per_sample": res.seconds / max(1, len(res.flagged)),
        "predictions": res.predictions,
        "detector_labels": res.detector_labels,
        "scores": res.scores,
        "flagged_mask": res.flagged,
    }
    if ds.labels is not None:
        result["model_accuracy"] = float((res.predictions == ds.labels).mean())
    if out is not None:
        from onnxslice.io import save_json

        outs.defer(out, lambda p: save_json(p, result))
    outs.commit()
    if args.json:
        emit_json(result)
        return 0
    n = len(res.flagged)
    row: dict[str, Any] = {
        "samples": n,
        "flagged": int(res.flagged.sum()),
        "disagree": int(res.disagree.sum()),
        "seconds_per_sample": result["seconds_per_sample"],
    }
    row["flagged_fraction"] = row["flagged"] / max(1, n)
    row["mean_score"] = float(np.mean(res.scores)) if len(res.scores) else 0.0
    if "model_accuracy" in result:
        row["model_accuracy"] = result["model_accuracy"]
    print(format_table([row], title=f"detect score: {det.kind} features, {det.classifier}"))
    if out is not None:
        print(f"saved {out}")
    return 0


def _attack(args: argparse.Namespace) -> int:
    from onnxslice.attacks import predict, run_attack
    from onnxslice.io import save_npz

    outs = Outputs("detect attack")
    model, ds = _load(args, outs)
    out = outs.writes(_npz_path(args.out, "--out"), "--out")
    ds = _subset(ds, args.samples)
    if ds.labels is None:
        raise DataError(f"attacks need labelled data; '{args.data}' has no labels")
    x = ds.bind(model)[model.input_names[0]] if len(model.inputs) == 1 else ds.x
    kw = {} if args.epsilon is None else {"epsilon": args.epsilon}
    adv = run_attack(args.attack, model, x, ds.labels, **kw)
    before = predict(model, x)
    after = predict(model, adv)
    ok = (after != ds.labels) & (before == ds.labels)
    keep = ok if args.successful else np.ones(len(adv), bool)
    name = model.input_names[0]
    outs.defer(
        out, lambda p: save_npz(p, {name: adv[keep], "y": ds.labels[keep]}, {"kind": "Attack", "attack": args.attack})
    )
    outs.commit()
    info = {
        "attack": args.attack,
        "samples": len(x),
        "accuracy_before": float((before == ds.labels).mean()),
        "accuracy_after": float((after == ds.labels).mean()),
        "successful": int(ok.sum()),
        "written": int(keep.sum()),
        "out": str(out),
    }
    if args.json:
        emit_json(info)
    else:
        from onnxslice.console import format_table

        print(format_table([info], title=f"attack {args.attack}"))
    return 0


def run(args: argparse.Namespace) -> int:
    return {"fit": _fit, "score": _score, "attack": _attack}[args.action](args)
