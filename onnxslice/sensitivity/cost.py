"""How long a ranking will take, estimated before it starts (so long work is announced up front).

The unit is one forward pass of the model over the calibration set, measured once; a criterion costs a
known number of such passes (a backward pass counts as about two forwards), from the criterion's own
definition. This module runs nothing but that one measured pass.
"""

from __future__ import annotations

import time
from typing import Any

from onnxslice.data import load_data
from onnxslice.rewrite.fidelity import run_outputs

__all__ = ["criterion_passes", "forward_seconds", "groundtruth_passes"]

#: Forward-pass equivalents of one gradient evaluation over the calibration set (forward + backward).
GRADIENT = 3.0
#: Share of a full gradient pass that a point of a per-layer path costs: it runs the graph below its
#: layer only, stacked with the layer's other points, and computes that layer's gradient alone. Measured
#: on EfficientNet-Lite0 (64 samples x 16 steps x 50 layers, session 7): 819 s against the 1920 s that
#: 0.6 (measured on 5 unstacked layers before the points were stacked) predicted.
SUFFIX = 0.25


def criterion_passes(name: str, n_layers: int, *, steps: int = 16, noise_samples: int = 16,
                     path: str = "layer", hsic_masks: int = 64) -> float:
    """Forward-pass equivalents that criterion ``name`` costs on a model with ``n_layers`` layers."""
    if name == "weight":
        return 0.0
    if name in ("grad", "wgrad", "gradcampp"):
        return GRADIENT
    if name in ("smoothgrad", "vargrad"):
        return GRADIENT * noise_samples
    if name in ("ig", "gig", "idgi"):
        points = steps + 1 if name == "idgi" else steps
        return GRADIENT * points * (n_layers * SUFFIX if path == "layer" else 1)
    if name == "hsic":
        return 0.5 * hsic_masks * n_layers  # suffix runs: about half a model each
    if name == "fd":
        return 2.0 * n_layers * 0.5
    return GRADIENT


def groundtruth_passes(n_layers: int, draws: int) -> float:
    """Forward-pass equivalents of the perturbation ground truth (suffix runs: about half a model each)."""
    return 0.5 * draws * n_layers + 1.0


def forward_seconds(model: Any, data: Any, samples: int) -> float:
    """Seconds of one forward pass of ``model`` over the first ``samples`` samples of ``data``."""
    ds = load_data(data) if isinstance(data, str) else data
    sub = ds.subset(slice(0, samples)) if hasattr(ds, "subset") else ds
    t0 = time.perf_counter()
    run_outputs(model, sub)
    return time.perf_counter() - t0
