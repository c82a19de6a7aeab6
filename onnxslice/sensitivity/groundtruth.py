"""The perturbation ground truth (SAfER eq. 1): how much the output moves when one layer is perturbed.

``I(f, eps_l) = E_X[ ||f^{eps_l}(x) - f(x)|| ]`` (higher = more important; SAfER writes it with a
minus sign and ranks by the loss of the predictive function, which is the same order). Perturbations:

- ``U`` (pepper): a proportion ``magnitude`` of the weights (activations) is set to 0;
- ``N`` (gaussian): additive ``N(0, sigma)``, ``sigma = magnitude * max|w_l|`` (``max|a_l|`` over the
  data for activations);
- ``D`` (dirac): a proportion ``proportion`` of the weights (activations) gets a spike of size
  ``magnitude * max|w_l|`` (random sign).

``structured=True`` draws whole output channels (weights) or channels (activations) instead of
elements. A weight draw is one perturbation pattern, regenerated from ``(seed, layer, draw)``. An
activation draw gives, by default (``act_pattern="sample"``), every sample its own independent pattern:
the expectation over the perturbation and the data is the same as with one pattern shared by all
samples (``act_pattern="shared"``), but the estimate averages ``samples x draws`` patterns instead of
``draws``, which is what makes activation rankings repeatable (measured on the moons models: with a
shared pattern two seeds agree on the exact order in ~1/3 of the activation settings at 32 draws).
Per-sample patterns come in fixed blocks of :data:`BLOCK` samples, each from its own stream, so results
never depend on batching.

Cost: one recording of the unperturbed model per batch (all boundary values at once), then for every
layer ``l`` and draw, one run of the *suffix* below ``l`` only (:class:`~onnxslice.sensitivity.cut.Suffix`),
in one onnxruntime session per layer with the perturbed weight fed as an input. For a chain of ``L``
layers the suffixes hold on average about half the graph, so the cost is ``~ draws * L / 2`` model runs
instead of ``draws * L`` (``cache_prefix=False`` runs the whole model per draw, for comparison).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from onnxslice.errors import DataError
from onnxslice.model import Layer, Model
from onnxslice.record import Device, Recorder
from onnxslice.scores import LayerScores
from onnxslice.sensitivity.common import activation_axis, as_model, calibration, channel_axis, model_layers
from onnxslice.sensitivity.cut import Suffix
from onnxslice.sensitivity.reductions import check_name

__all__ = [
    "BLOCK", "NOISES", "activation_patterns", "apply_noise", "draw_noise", "perturb", "perturbation_importance",
    "perturbation_importances",
]

NOISES = ("U", "N", "D")
_KIND = {"U": 1, "N": 2, "D": 3}
#: samples per independent stream of per-sample activation patterns
BLOCK = 64


def perturb(
    x: np.ndarray,
    noise: str,
    magnitude: float,
    scale: float,
    rng: np.random.Generator,
    *,
    proportion: float = 0.1,
    structured: bool = False,
    axis: int = 0,
) -> np.ndarray:
    """A perturbed copy of ``x``.

    Args:
        x: weights or one sample's activation pattern.
        noise: ``U``, ``N`` or ``D``.
        magnitude: U: proportion zeroed; N: sigma / scale; D: spike size / scale.
        scale: the layer's reference size (``max|w_l|`` or ``max|a_l|``).
        rng: the draw's generator.
        proportion: D: proportion of entries spiked.
        structured: draw whole slices along ``axis`` instead of elements.
        axis: the channel axis for structured draws.
    """
    check_name("noise", noise, NOISES)
    x = np.asarray(x)
    raw = draw_noise(noise, _draw_shape(x, structured, axis), rng, proportion)
    return apply_noise(x, noise, raw, magnitude, scale)


def _draw_shape(x: np.ndarray, structured: bool, axis: int) -> list[int]:
    if structured:
        shape = [1] * x.ndim
        shape[axis] = x.shape[axis]
        return shape
    return list(x.shape)


def draw_noise(noise: str, shape: list[int] | tuple[int, ...], rng: np.random.Generator,
               proportion: float = 0.1) -> np.ndarray:
    """The random part of a perturbation, independent of its magnitude (one draw of ``rng``).

    U: uniform numbers in [0, 1) (an entry is zeroed where it is below the magnitude); N: standard
    normal numbers; D: the spikes' signs (+-1) where an entry is hit (probability ``proportion``), 0
    elsewhere. :func:`apply_noise` turns it into the perturbed values at any magnitude, so one draw
    serves every magnitude of a ground truth: ``perturb`` at each magnitude gives the same arrays.
    """
    if noise == "U":
        return rng.random(shape)
    if noise == "N":
        # Generator.normal(0, s) computes 0 + s * z from the same standard normal stream: bit-identical
        return rng.standard_normal(shape)
    hit = rng.random(shape) < proportion
    sign = np.where(rng.random(shape) < 0.5, -1.0, 1.0)
    return hit * sign


def apply_noise(x: np.ndarray, noise: str, raw: np.ndarray, magnitude: float, scale: float) -> np.ndarray:
    """``x`` perturbed by the draw ``raw`` of :func:`draw_noise` at ``magnitude`` (same dtype as ``x``)."""
    out = np.asarray(x).astype(np.float64, copy=True)
    out = out * (raw >= magnitude) if noise == "U" else out + raw * (magnitude * scale)
    return out.astype(np.asarray(x).dtype)


def _rng(seed: int, layer: int, draw: int, noise: str) -> np.random.Generator:
    return np.random.default_rng([seed, layer, draw, _KIND[noise]])


def activation_patterns(
    shape: tuple[int, ...], rows: slice, noise: str, magnitude: float, scale: float, seed: int, layer: int,
    draw: int, *, proportion: float = 0.1, structured: bool = False, axis: int = -1,
) -> np.ndarray:
    """Per-sample patterns ``[rows, *shape]`` (``1 * mask`` for U, ``1 + offset`` for N and D).

    Sample ``i`` takes row ``i % BLOCK`` of the block drawn from ``(seed, layer, draw, noise, i // BLOCK)``,
    so a sample's pattern depends only on its index, never on the batch it is run in.
    """
    raw = _activation_draws(shape, rows, noise, seed, layer, draw, proportion, structured, axis)
    return _activation_pattern(raw, shape, noise, magnitude, scale)


def _activation_draws(
    shape: tuple[int, ...], rows: slice, noise: str, seed: int, layer: int, draw: int, proportion: float,
    structured: bool, axis: int,
) -> list[tuple[int, int, np.ndarray]]:
    """The magnitude-free draws behind :func:`activation_patterns`: ``(lo, hi, raw block)`` per block."""
    start, stop = rows.start or 0, rows.stop
    full = len(shape) + 1
    ax = axis % full  # the channel axis of [N, *shape]
    # structured: one draw per (sample, channel), broadcast over the other axes
    draw_shape = [BLOCK] + [shape[i - 1] if not structured or i == ax else 1 for i in range(1, full)]
    out = []
    for b in range(start // BLOCK, (stop - 1) // BLOCK + 1):
        rng = np.random.default_rng([seed, layer, draw, _KIND[noise], b])
        lo, hi = max(start - b * BLOCK, 0), min(stop - b * BLOCK, BLOCK)
        out.append((lo, hi, draw_noise(noise, draw_shape, rng, proportion)))
    return out


def _activation_pattern(
    raw: list[tuple[int, int, np.ndarray]], shape: tuple[int, ...], noise: str, magnitude: float, scale: float
) -> np.ndarray:
    parts = []
    for lo, hi, block in raw:
        pattern = apply_noise(np.ones(block.shape), noise, block, magnitude, scale)
        parts.append(np.broadcast_to(pattern[lo:hi], (hi - lo, *shape)))
    return np.concatenate(parts)


def _distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
    n = len(a[names[0]])
    sq = np.zeros(n)
    for name in names:
        d = (np.asarray(a[name], np.float64) - np.asarray(b[name], np.float64)).reshape(n, -1)
        sq += (d * d).sum(axis=1)
    return np.sqrt(sq)


def perturbation_importance(
    model: Model | Any,
    data: Any,
    noise: Literal["U", "N", "D"] | str = "N",
    on: Literal["weights", "activations"] | str = "weights",
    magnitude: float = 0.5,
    draws: int = 8,
    *,
    structured: bool = False,
    proportion: float = 0.1,
    metric: Literal["output", "accuracy"] | str = "output",
    samples: int | None = 256,
    batch_size: int | None = 256,
    layers: list[str] | None = None,
    seed: int = 0,
    cache_prefix: bool = True,
    act_pattern: Literal["sample", "shared"] | str = "sample",
    device: Device = "cpu",
    sessions: dict[Any, Any] | None = None,
) -> LayerScores:
    """The ground-truth importance of every layer under a perturbation of that layer alone.

    The one-magnitude case of :func:`perturbation_importances`, whose arguments these are (``magnitude``:
    the perturbation's strength in (0, 1]).
    """
    return perturbation_importances(
        model, data, noise, on, [magnitude], draws, structured=structured, proportion=proportion, metric=metric,
        samples=samples, batch_size=batch_size, layers=layers, seed=seed, cache_prefix=cache_prefix,
        act_pattern=act_pattern, device=device, sessions=sessions,
    )[0]


def perturbation_importances(
    model: Model | Any,
    data: Any,
    noise: Literal["U", "N", "D"] | str = "N",
    on: Literal["weights", "activations"] | str = "weights",
    magnitudes: Sequence[float] = (0.5,),
    draws: int = 8,
    *,
    structured: bool = False,
    proportion: float = 0.1,
    metric: Literal["output", "accuracy"] | str = "output",
    samples: int | None = 256,
    batch_size: int | None = 256,
    layers: list[str] | None = None,
    seed: int = 0,
    cache_prefix: bool = True,
    act_pattern: Literal["sample", "shared"] | str = "sample",
    device: Device = "cpu",
    sessions: dict[Any, Any] | None = None,
) -> list[LayerScores]:
    """The ground-truth importance of every layer under a perturbation of that layer alone, at each magnitude.

    Args:
        model: a Model or a path.
        data: calibration/test data (spec, Dataset, array or mapping).
        noise: ``U``, ``N`` or ``D`` (see the module docstring).
        on: ``weights`` or ``activations`` (the layer's output).
        magnitudes: the perturbation's strengths in (0, 1] (relative; see the module docstring). Every
            draw is made once and applied at each magnitude (the random numbers of a draw do not depend on
            its magnitude), so the result for each magnitude is the one of a separate call at it.
        draws: perturbation draws averaged per layer.
        structured: perturb whole channels.
        proportion: the share of entries a ``D`` perturbation hits.
        metric: ``output`` (mean L2 distance of the outputs) or ``accuracy`` (drop of the accuracy
            against the labels, or against the unperturbed predictions when the data has none).
        samples: use the first ``samples`` samples (None: all).
        batch_size: samples per onnxruntime run.
        layers: restrict to these layers (default: all).
        seed: base seed; every (layer, draw) gets its own stream.
        cache_prefix: run only the suffix below each layer on cached prefix values (default). False
            runs the full model per draw (weights only; for the cost comparison).
        act_pattern: activations: ``sample`` (default) draws an independent pattern per sample and draw;
            ``shared`` applies one pattern to every sample of a draw (see the module docstring).
        device: onnxruntime device.
        sessions: a dict the caller keeps to reuse the suffix and recording sessions across calls on the
            SAME model (several noises, magnitudes, seeds): building them is a tenth of the time of a
            transformer's ground truth. None (default): built for this call only.

    Returns:
        One LayerScores per magnitude, criterion ``groundtruth:<noise>:<on>``; ``meta`` holds the cost
        (of the whole call).

    Raises:
        UnknownNameError: unknown noise, target of ``on`` or metric.
        ModelError: no layers. DataError: bad data or a magnitude outside (0, 1].
    """
    check_name("noise", noise, NOISES)
    check_name("perturbation target", on, ("weights", "activations"))
    check_name("metric", metric, ("output", "accuracy"))
    check_name("activation pattern", act_pattern, ("sample", "shared"))
    mags = [float(v) for v in magnitudes]
    if not mags or not all(0.0 < v <= 1.0 for v in mags) or not 0.0 < proportion <= 1.0:
        raise DataError(f"magnitudes and proportion must be in (0, 1]; got {mags} and {proportion}")
    if draws < 1:
        raise DataError(f"draws must be at least 1, got {draws}")
    if not cache_prefix and on != "weights":
        raise DataError("cache_prefix=False is only available for weight perturbations")
    m = as_model(model)
    chosen = model_layers(m, layers)
    cal = calibration(m, data, samples)
    t0 = time.perf_counter()
    memo: dict[Any, Any] = {} if sessions is None else sessions
    if memo.get("model") is not m:  # sessions belong to one model object
        memo.clear()
        memo["model"] = m
    if cache_prefix:
        suffixes = {}
        for x in chosen:
            key = ("suffix", x.name, on, device)
            if key not in memo:
                memo[key] = Suffix.build(m, x.name, on, [x.weight] if on == "weights" else [], device)
            suffixes[x.name] = memo[key]
    else:
        full = Recorder(m, None, device, weight_inputs=[x.weight for x in chosen])
    wanted = {b for s in suffixes.values() for b in s.boundary} if cache_prefix else set()
    if on == "activations":
        wanted |= {x.output for x in chosen}
    needed = sorted(wanted - set(m.input_names))
    if ("base", tuple(needed), device) not in memo:
        memo[("base", tuple(needed), device)] = Recorder(m, needed, device)
    base = memo[("base", tuple(needed), device)]
    scales = _scales(m, chosen, on, base, cal, batch_size)
    t_setup = time.perf_counter() - t0
    first = m.output_names[0]
    totals = [dict.fromkeys((x.name for x in chosen), 0.0) for _ in mags]
    runs = 0
    for rows, batch in cal.batches(batch_size):
        ref = base.run(batch, validated=True)
        cache = {**batch, **ref}
        truth = cal.labels[rows] if cal.labels is not None else np.argmax(ref[first].reshape(len(ref[first]), -1), 1)
        for li, layer in enumerate(chosen):
            scale = scales[layer.name]
            for d in range(draws):
                rng = _rng(seed, li, d, noise)
                raw: Any
                if on == "weights":
                    w0 = np.asarray(m.initializer(layer.weight))
                    raw = draw_noise(noise, _draw_shape(w0, structured, channel_axis(m, layer)), rng, proportion)
                else:
                    raw = _activation_raw(cache[layer.output], layer, noise, rng, proportion, structured,
                                          rows if act_pattern == "sample" else None, (seed, li, d))
                for mi, mag in enumerate(mags):
                    if on == "weights":
                        w = apply_noise(w0, noise, raw, mag, scale)
                        if cache_prefix:
                            suf = suffixes[layer.name]
                            out, names = suf.run(cache, weights={layer.weight: w}), suf.outputs
                        else:
                            out = full.run(batch, validated=True, weights={layer.weight: w})
                            names = m.output_names
                    else:
                        suf = suffixes[layer.name]
                        act = _perturb_act(cache[layer.output], noise, raw, mag, scale)
                        out, names = suf.run(cache, replace={layer.output: act}), suf.outputs
                    runs += 1
                    if not names:
                        continue
                    if metric == "output":
                        totals[mi][layer.name] += float(_distance(out, ref, names).sum())
                    elif first in names:
                        y = out[first].reshape(len(out[first]), -1)
                        y0 = ref[first].reshape(len(ref[first]), -1)
                        totals[mi][layer.name] += float((np.argmax(y0, 1) == truth).sum()
                                                        - (np.argmax(y, 1) == truth).sum())
    n = len(cal)
    cost = {x.name: (suffixes[x.name].nodes if cache_prefix else len(m.nodes)) for x in chosen}
    seconds = time.perf_counter() - t0
    results = []
    for mi, mag in enumerate(mags):
        meta = {
            "noise": noise, "on": on, "magnitude": mag, "draws": draws, "structured": structured,
            "proportion": proportion, "metric": metric,
            "act_pattern": act_pattern if on == "activations" else None, "samples": n, "seed": seed,
            "data": cal.name, "cache_prefix": cache_prefix, "suffix_nodes": cost, "model_nodes": len(m.nodes),
            "runs": runs // len(mags), "seconds": seconds / len(mags), "setup_seconds": t_setup / len(mags),
            "magnitudes_per_call": len(mags),
        }
        results.append(LayerScores({x.name: totals[mi][x.name] / (n * draws) for x in chosen},
                                   f"groundtruth:{noise}:{on}", "", meta))
    return results


def _activation_raw(
    a: np.ndarray, layer: Layer, noise: str, rng: np.random.Generator, proportion: float, structured: bool,
    rows: slice | None, key: tuple[int, int, int],
) -> tuple[str, Any]:
    """The magnitude-free draw behind :func:`_perturb_act`: one shared pattern (``rows`` None) or per-sample."""
    axis = activation_axis(layer)
    if rows is None:
        shape = _draw_shape(np.empty(a.shape[1:], np.float64), structured, (axis - 1) if axis > 0 else axis)
        return "shared", draw_noise(noise, shape, rng, proportion)
    return "sample", _activation_draws(tuple(a.shape[1:]), rows, noise, *key, proportion, structured, axis)


def _perturb_act(a: np.ndarray, noise: str, raw: tuple[str, Any], magnitude: float, scale: float) -> np.ndarray:
    """``a`` perturbed at ``magnitude`` by the draw of :func:`_activation_raw`."""
    kind, draw = raw
    if kind == "shared":
        pattern = apply_noise(np.zeros(a.shape[1:], np.float64) + 1.0, noise, draw, magnitude, scale)[None]
    else:
        pattern = _activation_pattern(draw, tuple(a.shape[1:]), noise, magnitude, scale)
    # pattern = 1 * mask (U) or 1 + noise (N, D): apply as a multiplicative mask or an additive offset
    if noise == "U":
        return (a * pattern).astype(a.dtype)
    return (a + (pattern - 1.0)).astype(a.dtype)


def _scales(
    m: Model, chosen: list[Layer], on: str, base: Recorder, cal: Any, batch_size: int | None
) -> dict[str, float]:
    if on == "weights":
        return {x.name: float(np.max(np.abs(m.initializer(x.weight)))) or 1.0 for x in chosen}
    peak = dict.fromkeys((x.name for x in chosen), 0.0)
    for _, batch in cal.batches(batch_size):
        ref = base.run(batch, validated=True)
        for x in chosen:
            peak[x.name] = max(peak[x.name], float(np.max(np.abs(ref[x.output]))))
    return {k: v or 1.0 for k, v in peak.items()}
