"""CLI verbs, one module each (discovered by ``onnxslice.cli``), plus their shared helpers."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from onnxslice.io import _default

__all__ = [
    "add_common",
    "criterion_or_fd",
    "emit_json",
    "empty_slice_reason",
    "gradient_failure",
    "load_for_rewrite",
    "warn",
    "warn_if_zero",
]


def add_common(p: argparse.ArgumentParser, *, model: bool = True, data: bool = False) -> None:
    """Arguments most verbs share: MODEL, --data, --json, --device."""
    if model:
        p.add_argument("model", metavar="MODEL", help="path to an .onnx file")
    if data:
        p.add_argument(
            "--data",
            "-d",
            required=True,
            help="data: file.npz, an image folder, or builtin:NAME (mnist, moons, digits, samples-*)",
        )
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of tables")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="onnxruntime device")


def emit_json(obj: Any) -> None:
    """Print ``obj`` as JSON on stdout."""
    json.dump(obj, sys.stdout, indent=2, default=_default)
    sys.stdout.write("\n")


_DEFERRED: list[str] | None = None


@contextmanager
def deferred_warnings() -> Iterator[list[str]]:
    """Collect :func:`warn` lines while a verb runs; the CLI prints them once the verb has succeeded, so a
    user error that comes later is still the only line on stderr."""
    global _DEFERRED
    previous, _DEFERRED = _DEFERRED, []
    try:
        yield _DEFERRED
    finally:
        _DEFERRED = previous


def warn(verb: str, message: str) -> None:
    """One warning line on stderr (``onnxslice VERB: warning: ...``), deferred while the CLI runs a verb."""
    line = f"onnxslice {verb}: warning: {message}\n"
    if _DEFERRED is not None:
        _DEFERRED.append(line)
    else:
        sys.stderr.write(line)


def warn_if_zero(verb: str, target: str, tables: Any) -> str | None:
    """Warn (and return the message) when every array of ``tables`` (dicts of arrays) is zero."""
    import numpy as np

    arrays = [np.asarray(v) for t in tables for v in t.values()]
    if any(a.size and np.any(a != 0) for a in arrays):
        return None
    msg = (f"every gradient of target '{target}' is zero (zero gradient: the target does not depend on the "
           "weights or inputs on these samples, e.g. a dead output or saturated activations); try another "
           "--target, --output or more --samples")
    warn(verb, msg)
    return msg


def empty_slice_reason(sl: Any, theta: float) -> str | None:
    """Why a slice holds no neuron of any layer (None when it holds some)."""
    rows = sl.per_layer()
    if any(r["neurons_in"] > 0 or r["synapses_in"] > 0 for r in rows):
        return None
    if not rows:
        return ("the slice is empty: the model has no layer (no node owns a float weight); for a pre-quantized "
                "model load its float view (dequantize) first")
    seeded = [k for k, v in sl.neurons.items() if getattr(v, "size", 0) and (v != 0).any()]
    if not seeded:
        return ("the slice is empty: the target seeds no neuron (a dead output, or a target that selects nothing); "
                "choose another --target or --output")
    return (f"the slice is empty: no synapse reaches theta {theta} (theta too strict, or zero contributions); "
            "lower --theta")


DEQUANTIZE_HELP = ("rewrite the float view of a pre-quantized model (weights dequantized, integer ops as float ops; "
                   "the output is then built from float weights); off by default: a quantized model is refused")


def load_for_rewrite(path: Any, verb: str, dequantize: bool) -> Any:
    """Load the model a rewrite verb edits; a pre-quantized model is refused unless ``dequantize``.

    Raises:
        QuantizedModelError: the model is already quantized and ``--dequantize`` was not given.
    """
    from onnxslice.dequantize import is_quantized
    from onnxslice.errors import QuantizedModelError
    from onnxslice.model import load

    model = load(path, dequantize="strip" if dequantize else False)
    ops = is_quantized(model.skeleton) if not dequantize else []
    if ops:
        raise QuantizedModelError(
            f"'{path}' is already quantized ({', '.join(ops)}): {verb} rewrites float weights. Pass --dequantize to "
            f"{verb} its float view (weights dequantized), or start from the float model"
        )
    return model


def gradient_failure(name: str, model: Any, output: str | None = None) -> str | None:
    """Why gradient criterion ``name`` cannot run on ``model`` (None when it can)."""
    from onnxslice.errors import UnsupportedOpError
    from onnxslice.sensitivity import get_criterion
    from onnxslice.sensitivity.criteria import GRADIENT_CRITERIA

    if name not in GRADIENT_CRITERIA and not get_criterion(name).needs_gradients:
        return None
    try:
        from onnxslice.grad import GradientEngine

        GradientEngine(model, exact=True, output=output)
    except ImportError:
        return "the gradient engine is not part of this build"
    except UnsupportedOpError as e:
        return str(e)
    return None


def criterion_or_fd(verb: str, model: Any, criterion: str, output: str | None = None) -> str:
    """``criterion``, or the black-box ``fd`` when it needs gradients the model cannot give (said on stderr),
    as ``rank`` does."""
    why = gradient_failure(criterion, model, output)
    if why is None:
        return criterion
    warn(verb, f"criterion '{criterion}' needs gradients, which are unavailable ({why}); falling back to 'fd'")
    return "fd"
