"""``onnxslice grad MODEL --data D --target pred --out G.npz``: gradients of a target w.r.t. every weight."""

from __future__ import annotations

import argparse

import numpy as np

from onnxslice.commands import add_common, emit_json, warn_if_zero
from onnxslice.commands._types import positive_int
from onnxslice.data import load_data, parse_samples
from onnxslice.errors import DataError
from onnxslice.grad import GradientEngine
from onnxslice.model import load
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
    p.add_argument("--weights", default="all", help="all (default), layers, or a comma list of initializer names")
    p.add_argument("--per-sample", action="store_true", help="keep one weight gradient per sample in the file")
    p.add_argument("--batch-size", type=positive_int, default=64, help="samples per run (default 64)")
    p.add_argument("--exact", action="store_true", help="refuse ops without a VJP rule (no finite differences)")


def run(args: argparse.Namespace) -> int:
    outs = Outputs(NAME)
    outs.reads_model(args.model)
    outs.reads_data(args.data)
    path = outs.writes(args.out, "--out", suffix=".npz")
    model = load(args.model, dequantize=True)  # a pre-quantized model is analysed on its float view
    ds = load_data(args.data)
    ds = ds.subset(parse_samples(args.samples, len(ds)))
    weights: str | list[str] = args.weights if args.weights in ("all", "layers") else args.weights.split(",")
    engine = GradientEngine(model, args.target, weights=weights, device=args.device, exact=args.exact,
                            output=args.output)
    grads = engine(ds, per_sample=args.per_sample, batch_size=args.batch_size)
    bad = [k for k, v in [*grads.weights.items(), *grads.inputs.items(), ("target", grads.target_values)]
           if np.issubdtype(v.dtype, np.floating) and not np.all(np.isfinite(v))]
    if bad:
        raise DataError(f"the gradient of '{bad[0]}' is not finite (NaN/Inf): the data drive the model out of "
                        "float32 range; check the data's scale")
    zero = warn_if_zero("grad", grads.target, [grads.weights, grads.inputs])
    outs.defer(path, grads.save)
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
            }
        )
        return 0
    print(grads.table(f"d {grads.target} over {grads.num_samples} samples of {ds.name} ({engine.value})"))
    if path:
        print(f"\nsaved {path}")
    return 0
