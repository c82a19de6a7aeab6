"""The public entry points: :func:`relevance` (phi per weight) and :func:`sensitivity` (psi of phi)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from onnxslice.errors import DataError
from onnxslice.model import Model
from onnxslice.record import Device
from onnxslice.scores import LayerScores
from onnxslice.sensitivity.common import as_model
from onnxslice.sensitivity.context import Context
from onnxslice.sensitivity.criteria import Criterion, get_criterion
from onnxslice.sensitivity.reductions import REDUCTIONS, check_name, reduce

__all__ = ["relevance", "sensitivity"]


def _context(
    model: Model | Any, data: Any, crit: Criterion, target: str, samples: int | None, steps: int,
    noise_samples: int, seed: int, batch_size: int | None, layers: list[str] | None, device: Device,
    options: dict[str, Any],
) -> Context:
    if steps < 1 or noise_samples < 1:
        raise DataError(f"steps and noise_samples must be at least 1; got {steps} and {noise_samples}")
    m = as_model(model)
    needs_data = crit.name != "weight"
    if needs_data and data is None:
        raise DataError(f"criterion '{crit.name}' needs calibration data")
    return Context.build(
        m, data if needs_data else None, target, samples=samples, layers=layers, steps=steps,
        noise_samples=noise_samples, seed=seed, batch_size=batch_size, device=device, options=options,
    )


def relevance(
    model: Model | Any,
    data: Any,
    criterion: str | Criterion = "wgrad",
    target: str = "pred",
    *,
    samples: int | None = 256,
    steps: int = 16,
    noise_samples: int = 16,
    seed: int = 0,
    batch_size: int | None = 128,
    layers: list[str] | None = None,
    device: Device = "cpu",
    **options: Any,
) -> dict[str, np.ndarray]:
    """phi: the relevance array of every layer (weight-shaped for gradient criteria and ``weight``;
    per output channel for ``hsic`` and ``fd`` with ``fd_granularity="channel"``).

    Pruning and quantization reuse these per channel. Arguments as for :func:`sensitivity`.
    """
    crit = get_criterion(criterion)
    ctx = _context(model, data, crit, target, samples, steps, noise_samples, seed, batch_size, layers, device, options)
    return crit.relevance(ctx)


def sensitivity(
    model: Model | Any,
    data: Any,
    criterion: str | Criterion = "wgrad",
    reduction: str = "linf",
    target: str = "pred",
    *,
    samples: int | None = 256,
    steps: int = 16,
    noise_samples: int = 16,
    seed: int = 0,
    percentile: float = 90.0,
    batch_size: int | None = 128,
    layers: list[str] | None = None,
    device: Device = "cpu",
    **options: Any,
) -> LayerScores:
    """SAfER layer sensitivity ``C_l = psi(phi(f, X)_l)``: one score per layer, higher = more important.

    Args:
        model: a Model, a path or a ModelProto.
        data: calibration data (spec such as ``builtin:moons``, Dataset, array or mapping); None only
            for the data-free ``weight`` criterion.
        criterion: ``weight``, ``grad``, ``wgrad``, ``gradcampp``, ``ig``, ``gig``, ``idgi``,
            ``smoothgrad``, ``vargrad``, ``hsic``, ``fd`` (or a :class:`Criterion` object).
        reduction: ``mean``, ``percentile``, ``l1``, ``l2`` or ``linf`` of ``|phi|``.
        target: the scalar f: ``pred`` (logit of the predicted class), ``class:K``, ``loss``, ``output-norm``.
        samples: calibration samples (the first ones; SAfER uses 256).
        steps: path steps of ig/gig/idgi.
        noise_samples: noise draws of smoothgrad/vargrad (and fd's noise mode).
        seed: base seed of every random draw.
        percentile: the percentile of ``percentile``.
        batch_size: samples per run.
        layers: restrict to these layers.
        device: onnxruntime device.
        **options: criterion options: ``path`` (``layer``/``global``), ``sigma``, ``ig_times_weight``,
            ``gig_fraction``, ``gig_max_dist``, ``hsic_masks``, ``hsic_drop``, ``hsic_bandwidth``, ``fd_h``,
            ``fd_mode``, ``fd_granularity``; how path and noise criteria batch their weight settings
            (:mod:`~onnxslice.sensitivity.stacked`): ``stack`` (default True: a per-layer path runs the
            graph below its layer, its points stacked), ``stack_all`` (also stack points that change every
            layer: noise draws, the global path; default False, measured slower), ``stack_mb`` (memory
            budget per call, default 1024), ``stack_max`` (settings per call, default 64),
            ``stack_per_sample`` (VarGrad's per-sample passes too, default False), ``stack_batched``
            (MatMul/Gemm layers as one batched MatMul, default True); ``batch_mb`` (memory budget of one
            gradient call's forward values and cotangents, default 1024: ``batch_size`` is lowered to fit).

    Returns:
        LayerScores (criterion, reduction, and ``meta`` with timing and settings).

    Raises:
        UnknownNameError: unknown criterion/reduction/target (lists the valid ones).
        ModelError: the model has no layers. DataError: data that does not fit the model.
        UnsupportedOpError: a gradient criterion on a model with an op that has no VJP rule.
    """
    check_name("reduction", reduction, list(REDUCTIONS))
    crit = get_criterion(criterion)
    t0 = time.perf_counter()
    ctx = _context(model, data, crit, target, samples, steps, noise_samples, seed, batch_size, layers, device, options)
    rel = crit.relevance(ctx)
    scores = {x.name: reduce(rel[x.name], reduction, percentile) for x in ctx.layers}
    meta: dict[str, Any] = {
        "target": target, "samples": len(ctx.cal) if ctx.cal is not None else 0,
        "data": ctx.cal.name if ctx.cal is not None else None, "steps": steps, "noise_samples": noise_samples,
        "seed": seed, "seconds": time.perf_counter() - t0, **{k: v for k, v in options.items()},
    }
    if reduction == "percentile":
        meta["percentile"] = percentile
    return LayerScores(scores, crit.name, reduction, meta)
