"""``onnxslice report MODEL --data D --out report.html``: one self-contained HTML page per model.

Writes the page and, in ``<stem>_data/`` beside it, one JSON file per section (the numbers behind every
plot). Earlier results can be reused with ``--profile`` and ``--scores``.
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path

from onnxslice.commands import add_common, emit_json
from onnxslice.commands._types import fraction_open01, nonneg_int, positive_int, repeats_help
from onnxslice.console import format_table
from onnxslice.errors import DataError
from onnxslice.io import atomic_write_bytes

NAME = "report"
HELP = "run the analyses a deployer needs and write one self-contained HTML page with interactive plots"
ORDER = 5


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got '{text}'") from e


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from e


def _write(body: bytes, path: Path) -> None:
    atomic_write_bytes(path, body)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p, data=True)
    p.add_argument("--out", "-o", required=True, help="the HTML page to write; section JSON goes to <stem>_data/")
    p.add_argument("--samples", type=positive_int, default=256,
                   help="calibration samples for criteria, oracle and fidelity")
    p.add_argument("--criteria", default="weight,grad,wgrad,gradcampp",
                   help="SAfER criteria to compute (comma-separated)")
    p.add_argument("--reduction", default="linf", help="reduction of the criteria")
    p.add_argument("--gt-draws", type=nonneg_int, default=8, help="oracle draws per layer (0: no oracle, no verdict)")
    p.add_argument("--ground-truth", default="N:weights", help="the oracle's perturbation NOISE:ON")
    p.add_argument("--classes", type=_ints, default=None, help="classes whose slices are shown (default: first 3)")
    p.add_argument("--slice-samples", type=positive_int, default=8, help="samples sliced per class")
    p.add_argument("--theta", type=fraction_open01, default=0.3, help="NNSlicer theta of the slices")
    p.add_argument("--ratios", type=_floats, default=[0.1, 0.3, 0.5], help="pruning ratios of the sweep")
    p.add_argument("--avg-bits", type=_floats, default=[4.5, 6.0], help="average-bit budgets of the int4/int8 sweep")
    p.add_argument("--repeats", type=positive_int, default=30,
                   help=repeats_help(30, "latency repeats per emitted model"))
    p.add_argument("--skip", action="append", choices=("slices", "prune", "quantize"), default=[],
                   help="sections not to compute (repeatable)")
    p.add_argument("--profile", "-p", default=None, help="reuse this profile (.npz from `onnxslice profile`)")
    p.add_argument("--scores", action="append", default=[],
                   help="reuse these LayerScores JSON files (from `onnxslice rank --out`); repeatable")
    p.add_argument("--seed", type=nonneg_int, default=0, help="base seed of every random draw")


def run(args: argparse.Namespace) -> int:
    from onnxslice.data import load_data
    from onnxslice.model import load
    from onnxslice.outputs import Outputs
    from onnxslice.profile import Profile
    from onnxslice.report import SECTIONS, ReportOptions, build_report, json_ready
    from onnxslice.sensitivity import LayerScores

    if any(not 0 <= r < 1 for r in args.ratios):
        raise DataError(f"--ratios {args.ratios}: every ratio must be in [0, 1)")
    if any(not 1 <= b <= 32 for b in args.avg_bits):
        raise DataError(f"--avg-bits {args.avg_bits}: every budget must be between 1 and 32 bits")
    outs = Outputs(NAME)
    outs.reads_model(args.model)
    outs.reads_data(args.data)
    outs.reads(args.profile, "--profile")
    for s in args.scores:
        outs.reads(s, "--scores")
    page = Path(args.out)
    outs.writes(page, "--out")
    data_dir = page.with_name(page.stem + "_data")
    json_paths = {name: outs.writes(data_dir / f"{name}.json", "--out") for name in SECTIONS}

    model = load(args.model)
    data = load_data(args.data)
    prof = Profile.load(args.profile) if args.profile else None
    if prof is not None:
        prof.check_model(model)
    given = [LayerScores.load(s) for s in args.scores]
    opts = ReportOptions(
        samples=args.samples, criteria=[c.strip() for c in args.criteria.split(",") if c.strip()],
        reduction=args.reduction, gt_draws=args.gt_draws, gt_noise=args.ground_truth, classes=args.classes,
        slice_samples=args.slice_samples, theta=args.theta, prune_ratios=args.ratios, quant_bits=args.avg_bits,
        repeats=args.repeats, seed=args.seed)
    report = build_report(model, data, opts, profile=prof, scores=given, skip=args.skip, data_spec=args.data,
                          data_dir=data_dir.name)
    for name, path in json_paths.items():
        body = json.dumps(json_ready(report.sections.get(name)), indent=1).encode()
        outs.defer(path, partial(_write, body))
    html = report.html.encode("utf-8")
    outs.defer(page, partial(_write, html))
    outs.commit()
    if args.json:
        emit_json({"out": str(page), "data": str(data_dir), "seconds": round(report.seconds, 2),
                   "verdict": report.sections["agreement"]["verdict"]})
        return 0
    rows = report.sections["agreement"]["rows"]
    if rows:
        print(format_table(rows, ["criterion", "spearman", "spearman_lo", "spearman_hi", "kendall"],
                           title="agreement of each criterion with the measured oracle"))
    print(f"\n{report.sections['agreement']['verdict']}")
    print(f"\nreport: {page.resolve()}  (open it in a browser; section data in {data_dir}/)")
    print(f"built in {report.seconds:.1f} s")
    return 0
