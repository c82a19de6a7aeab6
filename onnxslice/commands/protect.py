"""``onnxslice protect MODEL --data D --classes 3,5 --fraction 0.5 --out locked.onnx --key owner.key``.

Hides the layer weights that matter most for the target classes (NNSlicer slices, or the weight /
random baselines), writes the locked model and the owner's key, and prints the accuracy of the
original and the locked model on the target classes and the others. Nothing is written until the key
has been checked to restore the original bit for bit; the key is written before the model.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from onnxslice.commands import add_common, emit_json
from onnxslice.commands._types import fraction_open01, nonneg_int, positive_int, repeats_help
from onnxslice.console import format_table
from onnxslice.outputs import Outputs

NAME = "protect"
HELP = "lock a model: hide the weights that matter for chosen classes in a key file (NNSlicer protection)"
ORDER = 80


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p, data=True)
    p.add_argument("--classes", "-c", required=True, help="target classes to protect, e.g. 3,5 (required)")
    p.add_argument(
        "--fraction",
        "-f",
        type=float,
        default=0.5,
        help="share of the layer weights to hide, strictly between 0 and 1 (default 0.5)",
    )
    p.add_argument(
        "--select",
        choices=("slice", "weight", "random"),
        default="slice",
        help="how to choose them: largest |CONTRIB| for the classes, largest |w|, or at random (default slice)",
    )
    p.add_argument(
        "--keep-others",
        action="store_true",
        help="slice only: prefer weights that matter for the classes but little for the others, so the "
        "other classes keep working (default off)",
    )
    p.add_argument(
        "--scope",
        choices=("layer", "global"),
        default=None,
        help="hide the fraction of every layer weight, or of all layer weights ranked together "
        "(default: global with --keep-others, else layer)",
    )
    p.add_argument(
        "--fill",
        choices=("normal", "zero"),
        default="normal",
        help="replacement values: a normal with each layer's mean and std (hides which entries were "
        "chosen) or zeros (shows them) (default normal)",
    )
    p.add_argument(
        "--profile",
        "-p",
        default=None,
        help="profile of the model (.npz from `onnxslice profile`) for --select slice "
        "(default: profiled on the first 1,000 samples of --data)",
    )
    p.add_argument(
        "--slice-samples",
        type=positive_int,
        default=256,
        help="samples of the target classes (and of the others with --keep-others) sliced (default 256)",
    )
    p.add_argument("--theta", type=fraction_open01, default=0.3, help="NNSlicer significance threshold (default 0.3)")
    p.add_argument("--eval-data", default=None, help="labelled data for the accuracy report (default: --data)")
    p.add_argument("--workers", type=positive_int, default=1, help="slicing processes (default 1: in this process)")
    p.add_argument("--seed", type=nonneg_int, default=0,
                   help="seed of tie-breaks, random selection and fill (default 0)")
    p.add_argument(
        "--passphrase-env",
        default=None,
        metavar="VAR",
        help="encrypt the key with the passphrase in environment variable VAR (default: no encryption)",
    )
    p.add_argument(
        "--encrypt", action="store_true", help="encrypt the key with a passphrase asked on the terminal (default off)"
    )
    p.add_argument("--repeats", type=positive_int, default=20,
                   help=repeats_help(20, "latency repeats of the original and locked model (batch 1)"))
    p.add_argument("--out", "-o", required=True, help="where to write the locked model (.onnx; never MODEL)")
    p.add_argument("--key", "-k", required=True, help="where to write the owner's key (keep it private)")


def data_file(spec: str | None) -> str | None:
    """The file or folder a data spec reads (None for built-in sets)."""
    if spec is None or spec.startswith("builtin:"):
        return None
    return spec.split("?", 1)[0]


def run(args: argparse.Namespace) -> int:
    from onnxslice.apps.protect import check_fraction, parse_classes, protect, unlock, weights_hash
    from onnxslice.apps.protect_key import ProtectKey, passphrase_from, write_key_bytes
    from onnxslice.data import load_data
    from onnxslice.model import load
    from onnxslice.profile import Profile

    outs = Outputs(NAME)
    outs.reads(args.model, "MODEL")
    outs.reads(args.profile, "--profile")
    outs.reads(data_file(args.data), "--data")
    outs.reads(data_file(args.eval_data), "--eval-data")
    key_path = outs.writes(args.key, "--key")
    out_path = outs.writes(args.out, "--out")
    check_fraction(args.fraction)
    model = load(args.model)
    classes = parse_classes(args.classes, model)
    if args.keep_others and args.select != "slice":
        from onnxslice.errors import DataError

        raise DataError("--keep-others needs --select slice (it compares slices of the target and other classes)")
    secret = passphrase_from(args.passphrase_env, prompt=args.encrypt, confirm=True)
    data = load_data(args.data)
    eval_data = load_data(args.eval_data) if args.eval_data else None
    prof = Profile.load(args.profile) if args.profile and args.select == "slice" else None
    res = protect(model, data, classes, args.fraction, select=args.select, profile=prof, keep_others=args.keep_others,
                  scope=args.scope, fill=args.fill, samples=args.slice_samples, theta=args.theta, seed=args.seed,
                  eval_data=eval_data, workers=args.workers, device=args.device)  # fmt: skip
    # fidelity: the key, as it will be written and read back, restores the original bit for bit
    blob = res.key.to_bytes(secret)
    restored = unlock(res.locked, ProtectKey.from_bytes(blob, str(key_path), secret))
    if weights_hash(restored) != weights_hash(model):  # unlock checks this too; a failure is a bug
        raise RuntimeError("protect: the key does not restore the original weights (a bug; please report)")
    from onnxslice.rewrite.measure import paired_latency_ms

    ev = eval_data if eval_data is not None else data
    one = {k: v[:1] for k, v in ev.bind(model).items()}
    latency = paired_latency_ms([model, res.locked], one, max(1, args.repeats))
    outs.defer(key_path, lambda p: write_key_bytes(p, blob))
    outs.defer(out_path, lambda p: res.locked.save(p))
    outs.commit()
    result: dict[str, Any] = {
        "out": str(out_path),
        "key": str(key_path),
        "encrypted": secret is not None,
        "classes": classes,
        "settings": res.info,
        "hidden": res.hidden,
        "hidden_total": res.key.hidden,
        "accuracy": res.accuracy,
        "latency_ms": {"original": latency[0], "locked": latency[1], "batch": 1, "repeats": args.repeats},
        "eval_data": args.eval_data or args.data,
    }
    if args.json:
        emit_json(result)
        return 0
    pairs = zip(res.accuracy.items(), latency, strict=True)
    rows = [{"model": k, "target classes": v["target"], "other classes": v["others"], "all": v["all"],
             "latency ms (batch 1)": round(lat, 4)} for (k, v), lat in pairs]  # fmt: skip
    print(format_table(rows, title=f"protect {Path(args.model).name}: classes {args.classes}, {args.select}, "
                                   f"fraction {args.fraction} ({res.info['scope']})"))  # fmt: skip
    total = sum(model.initializer(n).size for n in res.hidden)
    print(f"\nhidden {res.key.hidden:,} of {total:,} layer-weight entries in {len(res.hidden)} weights")
    print(f"saved {out_path} (locked) and {key_path} (key{', encrypted' if secret is not None else ', NOT encrypted'})")
    return 0
