"""``onnxslice slice MODEL --profile P.npz --data D --samples 0:100 --target pred --out S.npz``.

NNSlicer forward and backward analysis for a criterion; prints the per-layer table (fraction of
neurons and synapses in the slice) and saves the :class:`Slice`. ``--sliced-model`` also writes the
model with every synapse outside the slice zeroed.
"""

from __future__ import annotations

import argparse
import os

from onnxslice.commands import add_common, emit_json, empty_slice_reason, warn
from onnxslice.commands._types import fraction_open01, positive_int
from onnxslice.data import load_data
from onnxslice.model import load
from onnxslice.outputs import Outputs
from onnxslice.profile import Profile
from onnxslice.slicing import slice as slice_model

NAME = "slice"
HELP = "dynamic slice (NNSlicer): neurons and synapses that drive the targets for the chosen samples"
ORDER = 30


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p, data=True)
    p.add_argument("--profile", "-p", required=True, help="profile of the model (.npz from `onnxslice profile`)")
    p.add_argument("--samples", "-s", default=None, help="samples of the data: START:STOP, i, or i,j,k (default all)")
    p.add_argument(
        "--target",
        "-t",
        action="append",
        default=None,
        help="pred (default), class:K, class:K1,K2, value:NAME or value:NAME[i,j,...] (slices i:j allowed); "
        "repeatable; any output layout (see docs/targets.md)",
    )
    p.add_argument("--theta", type=fraction_open01, default=0.3, help="significance threshold in (0, 1) (default 0.3)")
    p.add_argument("--granularity", choices=("element", "channel"), default="element")
    p.add_argument("--theta-denominator", choices=("raw", "delta"), default="raw", help="|y_n| (raw) or |dy_n|")
    p.add_argument("--theta-sum", choices=("signed", "abs"), default="signed", help="partial sums of w*dx or |w*dx|")
    p.add_argument("--output", default=None,
                   help="the output (or value) that pred/class targets refer to (default: the first output)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="samples per unit of work (default 8)")
    p.add_argument("--backend", choices=("local", "ray"), default="local")
    p.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        help="processes / Ray CPUs (default: one per CPU; 1 = in this process)",
    )
    p.add_argument("--address", default=None, help="Ray cluster address to join")
    p.add_argument("--out", "-o", required=True, help="where to write the slice (.npz; the suffix is added)")
    p.add_argument("--sliced-model", default=None,
                   help="also write the model with synapses outside the slice zeroed (default: not written)")


def run(args: argparse.Namespace) -> int:
    outs = Outputs(NAME)
    outs.reads_model(args.model)
    outs.reads(args.profile, "--profile")
    outs.reads_data(args.data)
    path = outs.writes(args.out, "--out", suffix=".npz")
    sliced_path = outs.writes(args.sliced_model, "--sliced-model")
    model = load(args.model, dequantize=True)  # a pre-quantized model is analysed on its float view
    prof = Profile.load(args.profile)
    prof.check_model(model, args.profile)
    ds = load_data(args.data)
    s = slice_model(
        model,
        prof,
        ds,
        args.target or ["pred"],
        args.theta,
        granularity=args.granularity,
        theta_denominator=args.theta_denominator,
        theta_sum=args.theta_sum,
        samples=args.samples,
        output=args.output,
        batch_size=args.batch_size,
        backend=args.backend,
        workers=args.workers or os.cpu_count() or 1,
        address=args.address,
        device=args.device,
    )
    empty = empty_slice_reason(s, args.theta)
    if empty:
        warn("slice", empty)
    outs.defer(path, s.save)
    sliced = None
    if sliced_path is not None:
        from onnxslice.rewrite import slice_to_model

        sliced_model = slice_to_model(s, model)
        outs.defer(sliced_path, sliced_model.save)
        sliced = sliced_path
    outs.commit()
    if args.json:
        emit_json(
            {
                "out": str(path),
                "sliced_model": str(sliced) if sliced else None,
                "samples": s.count,
                "targets": s.targets,
                "theta": s.theta,
                "options": s.options,
                "layers": s.per_layer(),
                "warning": empty,
            }
        )
        return 0
    print(s.table())
    print(f"\n{s!r}\nsaved {path}" + (f"\nsliced model {sliced}" if sliced else ""))
    return 0
