"""``onnxslice guard MODEL --layers K | --max-loss 0.01 --criterion wgrad --data D --out g.onnx``.

Writes a guarded model (:mod:`onnxslice.rewrite.guard`): each guarded layer is recomputed from its own
copy of the weights and compared, and the model gets one boolean output ``onnxslice_fault``.
``--layers`` takes layer names, or a count K (the K most important layers by ``--criterion``);
``--max-loss`` runs the SAfER fault experiment (faults at ``--rate`` in the unchecked layers, checked
layers taken from the top of the ``--criterion`` order) and guards the fewest layers that keep the mean
loss within it. With ``--data``, the written model is verified first (original outputs bit-identical,
flag false on every clean batch) and its latency is measured against the input model and against full
duplication.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from onnxslice.commands import add_common, emit_json
from onnxslice.commands._types import nonneg_float, nonneg_int, positive_int, repeats_help
from onnxslice.commands.faults import add_fault_arguments, fault_model
from onnxslice.console import format_table
from onnxslice.errors import DataError, OnnxSliceError
from onnxslice.record import Device

NAME = "guard"
HELP = "guard the most sensitive layers: recompute them from a second weight copy and flag disagreements"
ORDER = 74


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p, data=False)
    p.add_argument("--data", "-d", default=None,
                   help="data for ranking, --max-loss and verification (file.npz, folder, builtin:NAME; default: none)")
    p.add_argument("--out", "-o", required=True, help="where to write the guarded model (.onnx)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--layers", "-l", help="comma-separated layer names, or a count K of top layers by --criterion")
    which.add_argument("--max-loss", type=float, help="guard the fewest top layers keeping the mean fault loss "
                                                      "within this fraction (0.01 = one point; needs --data)")
    p.add_argument("--criterion", "-c", default="wgrad",
                   help="order of the layers: a sensitivity criterion (wgrad, gradcampp, grad, idgi, weight, ...) or "
                        "'vulnerability' (measured by faults) (default: wgrad)")
    p.add_argument("--reduction", "-r", default="linf", help="reduction of the criterion (default: linf)")
    p.add_argument("--rtol", type=nonneg_float, default=1e-4, help="relative tolerance per element (default: 1e-4)")
    p.add_argument("--atol", type=nonneg_float, default=1e-6, help="absolute floor of the tolerance (default: 1e-6)")
    add_fault_arguments(p)
    p.add_argument("--samples", type=positive_int, default=256, help="samples of --data used (default: 256)")
    p.add_argument("--batch-size", type=positive_int, default=256, help="samples per onnxruntime run (default: 256)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of ranking and fault draws (default: 0)")
    p.add_argument("--repeats", type=positive_int, default=30, help=repeats_help(30))


def _order(model: Any, args: argparse.Namespace, fm: Any, device: Device) -> list[str]:
    from onnxslice.apps.faults import vulnerability
    from onnxslice.sensitivity import sensitivity

    if args.criterion == "vulnerability":
        if args.data is None:
            raise DataError("criterion 'vulnerability' needs --data")
        scores, _ = vulnerability(model, args.data, fm, trials=args.trials, samples=args.samples,
                                  batch_size=args.batch_size, seed=args.seed, backend=args.backend,
                                  workers=args.workers, address=args.address, device=device)
        return scores.ranking()
    if args.criterion != "weight" and args.data is None:
        raise DataError(f"criterion '{args.criterion}' needs --data (or use --criterion weight, or name the layers)")
    scores = sensitivity(model, args.data, args.criterion, args.reduction, samples=args.samples, seed=args.seed,
                         batch_size=args.batch_size, device=device)
    return scores.ranking()


def run(args: argparse.Namespace) -> int:
    from onnxslice.apps.faults import check_float_inputs, checked_curve, fault_layers, min_checked
    from onnxslice.flops import count_macs
    from onnxslice.model import load
    from onnxslice.outputs import Outputs
    from onnxslice.rewrite.guard import FAULT_OUTPUT, full_duplication, guard, guard_unit

    fm = fault_model(args)
    if args.max_loss is not None and not 0.0 < args.max_loss < 1.0:
        raise DataError(f"--max-loss must be in (0, 1), got {args.max_loss}")
    if args.max_loss is not None and args.data is None:
        raise DataError("--max-loss needs --data (the fault experiment measures the loss on it)")
    outs = Outputs(NAME)
    outs.reads(args.model, "MODEL")
    out = outs.writes(args.out, "--out")
    device: Device = "cpu" if args.device == "auto" else args.device
    model = load(args.model)
    check_float_inputs(model)
    known = [x.name for x in fault_layers(model)]
    report: dict[str, Any] = {"model": str(args.model), "criterion": args.criterion}
    if args.layers is not None and not args.layers.strip().isdigit():
        chosen = [s.strip() for s in args.layers.split(",") if s.strip()]
    elif args.layers is not None:
        k = int(args.layers)
        if not 1 <= k <= len(known):
            raise DataError(f"--layers {k}: the model has {len(known)} layers; give a count in 1..{len(known)}")
        chosen = _order(model, args, fm, device)[:k]
    else:
        order = _order(model, args, fm, device)
        camp = checked_curve(model, args.data, order, fm, trials=args.trials, samples=args.samples,
                             batch_size=args.batch_size, seed=args.seed, backend=args.backend, workers=args.workers,
                             address=args.address, device=device)
        best = min_checked(camp, args.max_loss)
        if best is None:
            raise OnnxSliceError(f"no number of guarded layers keeps the loss within {args.max_loss} (a bug: guarding "
                                 "every layer leaves no fault)")
        if best == 0:
            raise DataError(f"faults at this rate cost at most {args.max_loss} even with no layer guarded; "
                            "raise --rate or lower --max-loss")
        chosen = order[:best]
        report["curve"] = {str(kk): s.mean_ci(camp.metric)[0] for kk, s in zip(camp.meta["checked"], camp.sets,
                                                                               strict=True)}
        report["clean"] = camp.clean
    guarded = guard(model, chosen, rtol=args.rtol, atol=args.atol)
    macs = count_macs(model).per_node
    total = sum(macs.values()) or 1
    share = sum(macs.get(n, 0) for c in chosen for n in guard_unit(model, c)) / total
    report.update({"guarded": chosen, "layers": len(known), "flops_share": share, "rtol": args.rtol,
                   "atol": args.atol, "output": FAULT_OUTPUT})
    if args.data is not None:
        report.update(_verify(model, guarded, full_duplication(model, rtol=args.rtol, atol=args.atol), args))
    outs.defer(out, lambda p: guarded.save(p))
    outs.commit()
    if args.json:
        emit_json(report)
        return 0
    rows = [{"layer": c, "unit": " + ".join(model.node(n).op_type for n in guard_unit(model, c))} for c in chosen]
    print(format_table(rows, title=f"guarded {len(chosen)} of {len(known)} layers ({share:.1%} of the MACs)"))
    if "latency_ms" in report:
        lat = report["latency_ms"]
        print(f"latency (median, 1 thread, round-robin): original {lat['original']:.3f} ms, guarded "
              f"{lat['guarded']:.3f} ms (+{report['overhead']['guarded']:.1%}), full duplication "
              f"{lat['full_duplication']:.3f} ms (+{report['overhead']['full_duplication']:.1%})")
        print(f"verified on {report['verified_samples']} samples: original outputs bit-identical, "
              f"{FAULT_OUTPUT} false on every clean batch")
    print(f"\nsaved {out}")
    return 0


def _verify(model: Any, guarded: Any, dup: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Bit-identical outputs and a false flag on the clean data; latency against the original and duplication."""
    from onnxslice.record import make_session, runtime_proto
    from onnxslice.rewrite.measure import paired_latency_ms
    from onnxslice.sensitivity.common import calibration

    cal = calibration(model, args.data, args.samples)
    s0 = make_session(runtime_proto(model.proto), "cpu", optimize=True)
    s1 = make_session(runtime_proto(guarded.proto), "cpu", optimize=True)
    for _, batch in cal.batches(args.batch_size):
        ref = s0.run(None, batch)
        got = s1.run(None, batch)
        for name, a, b in zip(model.output_names, ref, got, strict=False):
            if not np.array_equal(a, b, equal_nan=True):
                raise OnnxSliceError(f"guard changed output '{name}' on clean data (a bug; please report)")
        if bool(got[-1]):
            raise OnnxSliceError("the guarded model flags a fault on clean data (a bug: please report it)")
    one = {k: v[:1] for k, v in cal.feed.items()}
    lat = paired_latency_ms([model, guarded, dup], one, repeats=args.repeats, threads=1)
    return {"verified_samples": len(cal),
            "latency_ms": {"original": lat[0], "guarded": lat[1], "full_duplication": lat[2]},
            "overhead": {"guarded": lat[1] / lat[0] - 1, "full_duplication": lat[2] / lat[0] - 1}}
