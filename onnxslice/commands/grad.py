"""``onnxslice grad MODEL --data D --target pred --out G.npz``: gradients of a target w.r.t. every weight."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from onnxslice.commands import add_common, emit_json, warn_if_zero
from onnxslice.commands._types import positive_int
from onnxslice.data import Dataset, load_data, parse_samples
from onnxslice.errors import DataError
from onnxslice.grad import GradientEngine
from onnxslice.grad.emit import EmissionError
from onnxslice.model import Model, load
from onnxslice.outputs import Outputs

NAME = "grad"
HELP = "gradients of a scalar target (pred, class:K, loss, output-norm) w.r.t. every weight and input"
ORDER = 30


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p, data=True)
    p.add_argument(
        "--target",
        "-t",
        default="pred",
        help="pred (logit of the predicted class, default), class:K, loss (needs labelled data), output-norm, "
        "value:NAME[idx]; any output layout (see docs/targets.md)",
    )
    p.add_argument("--output", default=None, help="the model output the target reads (default: the first output)")
    p.add_argument("--out", "-o", help="where to write the gradients (.npz; the suffix is added); omit to print the "
                   "table only")
    p.add_argument("--samples", help="which samples: START:STOP, an index or a comma list (default: all)")
    p.add_argument("--weights", default="all", help="all (default: every float initializer), params (what a "
                   "framework trains: no BatchNorm statistics or Clip bounds), layers, or a comma list of initializer "
                   "names")
    p.add_argument("--per-sample", action="store_true", help="keep one weight gradient per sample in the file")
    p.add_argument("--batch-size", type=positive_int, default=64, help="samples per run (default 64)")
    p.add_argument("--exact", action="store_true", help="refuse ops without a VJP rule (no finite differences)")
    p.add_argument("--no-fuse", action="store_true", help="differentiate Conv, BatchNormalization and their ReLU/Clip "
                   "node by node on the unoptimized forward (default: each such chain is one step, recorded fused "
                   "where that pays; its ReLU/Clip kinks then fall as onnxruntime's fused forward rounds them)")
    p.add_argument("--emit", metavar="GRAD.onnx", help="also write the backward pass as a standalone ONNX gradient "
                   "model (inputs: the model's inputs, plus labels for loss; outputs: target and grad:<name> per "
                   "weight and input), traced on the first --batch-size samples, whose shapes it keeps; checked "
                   "against the eager engine before it is written (default: not written)")


def run(args: argparse.Namespace) -> int:
    outs = Outputs(NAME)
    outs.reads_model(args.model)
    outs.reads_data(args.data)
    path = outs.writes(args.out, "--out", suffix=".npz")
    emit_path = outs.writes(args.emit, "--emit", suffix=".onnx")
    if emit_path is not None and args.per_sample:
        raise DataError("--emit writes a graph of batch-summed weight gradients; drop --per-sample to use it")
    model = load(args.model, dequantize=True)  # a pre-quantized model is analysed on its float view
    ds = load_data(args.data)
    ds = ds.subset(parse_samples(args.samples, len(ds)))
    weights: str | list[str] = args.weights if args.weights in ("all", "params", "layers") else args.weights.split(",")
    engine = GradientEngine(model, args.target, weights=weights, device=args.device, exact=args.exact,
                            output=args.output, fuse=not args.no_fuse)
    grads = engine(ds, per_sample=args.per_sample, batch_size=args.batch_size)
    bad = [k for k, v in [*grads.weights.items(), *grads.inputs.items(), ("target", grads.target_values)]
           if np.issubdtype(v.dtype, np.floating) and not np.all(np.isfinite(v))]
    if bad:
        raise DataError(f"the gradient of '{bad[0]}' is not finite (NaN/Inf): the data drive the model out of "
                        "float32 range; check the data's scale")
    zero = warn_if_zero("grad", grads.target, [grads.weights, grads.inputs])
    emitted = _emit(engine, model, ds, args) if emit_path is not None else None
    outs.defer(path, grads.save)
    if emit_path is not None and emitted is not None:
        outs.defer(emit_path, emitted[0])
    outs.commit()
    rows = grads.summary()
    if args.json:
        emit_json(
            {
                "out": str(path) if path else None,
                "target": grads.target,
                "samples": grads.num_samples,
                "mean_target": float(grads.target_values.mean()),
                "layers": rows,
                "inputs": {k: float((v**2).sum() ** 0.5) for k, v in grads.inputs.items()},
                "warning": zero,
                "emit": None if emitted is None else {"path": str(emit_path), **emitted[1]},
            }
        )
        return 0
    print(grads.table(f"d {grads.target} over {grads.num_samples} samples of {ds.name} ({engine.value})"))
    if path:
        print(f"\nsaved {path}")
    if emitted is not None:
        info = emitted[1]
        print(f"saved {emit_path}: gradient graph of {info['nodes']} nodes, traced at batch {info['batch']}; "
              f"max difference from the eager engine {info['max_rel_diff']:.1e} (relative)")
    return 0


#: Largest relative difference (see :func:`onnxslice.grad.emit.emission_error`) an emitted graph may show.
EMIT_TOLERANCE = 1e-4


def _emit(engine: GradientEngine, model: Model, ds: Dataset, args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The emitted gradient model's writer and facts, after checking it against the eager engine."""
    import onnx

    from onnxslice.grad.emit import emission_error, emit_gradient_model
    from onnxslice.io import atomic_path
    from onnxslice.record import as_feed, validate_inputs

    first = ds.subset(list(range(min(args.batch_size, len(ds)))))
    feed = validate_inputs(model, as_feed(model, first))
    labels = first.labels if engine.target.kind == "loss" else None
    if engine.target.kind == "loss" and labels is None:
        raise DataError("target 'loss' needs labelled data (--data with labels)")
    proto = emit_gradient_model(engine, feed, source=Path(args.model).name)
    err = emission_error(engine, proto, feed, labels)
    if not err <= EMIT_TOLERANCE:
        raise EmissionError(f"the emitted gradient graph differs from the eager engine by {err:.1e} (relative, more "
                            f"than {EMIT_TOLERANCE:g}); not written")
    entry = proto.metadata_props.add()
    entry.key, entry.value = "onnxslice.grad.fidelity", f"max relative difference from the eager engine {err:.2e}"

    def write(p: Path) -> None:
        with atomic_path(p) as tmp:
            onnx.save(proto, str(tmp))

    info = {"nodes": len(proto.graph.node), "batch": len(first), "max_rel_diff": err}
    return write, info
