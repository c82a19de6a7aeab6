"""The analyses behind ``onnxslice report``: each returns one JSON-ready section.

Every section is computed from the public API (profile, slice, sensitivity, perturbation ground truth,
plan/prune/quantize and the measured latency of the emitted models), so the page shows exactly what
the CLI verbs would print. Nothing here draws or writes files: plotting is :mod:`.figures`, the page
:mod:`.page`, and writing is the command's (through :class:`onnxslice.outputs.Outputs`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from onnxslice.data import Dataset
from onnxslice.describe import describe
from onnxslice.errors import OnnxSliceError
from onnxslice.model import Model
from onnxslice.plans import plan_pruning
from onnxslice.rewrite import plan_bits, prune, quantize
from onnxslice.rewrite.bits_plan import quantizable_layers, uniform_plan
from onnxslice.rewrite.fidelity import compare_outputs, run_outputs
from onnxslice.rewrite.formats import convert
from onnxslice.rewrite.measure import paired_latency_ms
from onnxslice.sensitivity import LayerScores, agreement, perturbation_importance, sensitivity
from onnxslice.slicing import slice as slice_model

__all__ = [
    "ReportOptions",
    "agreement_section",
    "overview_section",
    "prune_section",
    "quantize_section",
    "sensitivity_section",
    "slice_section",
    "spearman_interval",
    "verdict",
]


@dataclass
class ReportOptions:
    """What the report computes and how much it spends on it (every default is the CLI's).

    Attributes:
        samples: calibration samples for the criteria, the slices' profile and fidelity.
        criteria: SAfER criteria computed per layer (cheap ones by default).
        reduction: their reduction.
        gt_draws: draws of the perturbation ground truth per layer (0 skips the oracle).
        gt_noise: the ground truth's perturbation (``N:weights`` etc.).
        classes: classes whose slice is shown (default: the first three labels present).
        slice_samples: samples sliced per class.
        theta: NNSlicer's threshold.
        prune_ratios: pruning ratios of the sweep.
        quant_bits: average-bit budgets of the mixed-precision sweep (int4/int8).
        repeats: latency repeats (median, round-robin with the original).
        seed: every random draw's base seed.
    """

    samples: int = 256
    criteria: Sequence[str] = ("weight", "grad", "wgrad", "gradcampp")
    reduction: str = "linf"
    gt_draws: int = 8
    gt_noise: str = "N:weights"
    classes: Sequence[int] | None = None
    slice_samples: int = 8
    theta: float = 0.3
    prune_ratios: Sequence[float] = (0.1, 0.3, 0.5)
    quant_bits: Sequence[float] = (4.5, 6.0)
    repeats: int = 30
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def overview_section(model: Model) -> dict[str, Any]:
    """Inputs, outputs, size, ops and layers of the model."""
    d = describe(model)
    return {
        "name": model.path.name if model.path else "model",
        "inputs": d["inputs"], "outputs": d["outputs"], "params": d["params"], "nodes": d["nodes"],
        "ops": d["ops"], "opsets": d["opsets"], "fingerprint": d["fingerprint"],
        "layers": d["layers"], "missing_rules": d["missing_rules"], "bytes": model.proto.ByteSize(),
    }


def _normalised(scores: LayerScores, layers: list[str]) -> list[float]:
    v = np.array([abs(scores.scores.get(name, 0.0)) for name in layers], dtype=np.float64)
    top = v.max() if v.size else 0.0
    return (v / top if top > 0 else v).tolist()


def sensitivity_section(
    model: Model, calib: Dataset, opts: ReportOptions, given: Sequence[LayerScores] = (),
) -> tuple[dict[str, Any], dict[str, LayerScores]]:
    """Per-layer scores of every criterion (given ones reused), plus the ground truth when asked."""
    layers = [x.name for x in model.layers]
    computed: dict[str, LayerScores] = {s.criterion: s for s in given}
    timings: dict[str, float] = {}
    for name in opts.criteria:
        if name in computed:
            continue
        t0 = time.perf_counter()
        computed[name] = sensitivity(model, calib, name, opts.reduction, samples=opts.samples, seed=opts.seed)
        timings[name] = round(time.perf_counter() - t0, 3)
    truth = None
    if opts.gt_draws > 0:
        noise, _, on = opts.gt_noise.partition(":")
        t0 = time.perf_counter()
        truth = perturbation_importance(model, calib, noise, on or "weights", draws=opts.gt_draws,
                                        samples=opts.samples, seed=opts.seed)
        timings["oracle"] = round(time.perf_counter() - t0, 3)
    section: dict[str, Any] = {
        "layers": layers,
        "ops": [x.op_type for x in model.layers],
        "params": [x.params for x in model.layers],
        "criteria": {k: {"raw": [s.scores.get(n, 0.0) for n in layers], "normalised": _normalised(s, layers),
                         "reduction": s.reduction} for k, s in computed.items()},
        "oracle": None if truth is None else {"criterion": truth.criterion, "raw": [truth.scores[n] for n in layers],
                                              "normalised": _normalised(truth, layers)},
        "seconds": timings,
    }
    if truth is not None:
        computed["oracle"] = truth
    return section, computed


def spearman_interval(rho: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Confidence interval of a Spearman correlation over ``n`` layers (Fisher z with the Bonett-Wright
    variance ``(1 + rho^2 / 2) / (n - 3)``); the whole range [-1, 1] when ``n <= 3``."""
    from statistics import NormalDist

    if n <= 3:
        return -1.0, 1.0
    z = float(np.arctanh(np.clip(rho, -0.999999, 0.999999)))
    half = NormalDist().inv_cdf(0.5 + level / 2) * float(np.sqrt((1 + rho * rho / 2) / (n - 3)))
    return float(np.tanh(z - half)), float(np.tanh(z + half))


def agreement_section(scores: dict[str, LayerScores]) -> dict[str, Any]:
    """Spearman (with a 95% interval) and Kendall of each criterion with the oracle, and the verdict:
    which criterion to trust on this model."""
    truth = scores.get("oracle")
    if truth is None:
        return {"rows": [], "verdict": "no oracle was measured (--gt-draws 0): no criterion can be checked"}
    n = len(truth.scores)
    rows: list[dict[str, Any]] = []
    for name, s in scores.items():
        if name == "oracle":
            continue
        stats = agreement(s, truth)
        rho = float(stats["spearman"])
        lo, hi = spearman_interval(rho, n)
        rows.append({"criterion": name, "spearman": round(rho, 4), "spearman_lo": round(lo, 4),
                     "spearman_hi": round(hi, 4), "kendall": round(float(stats["kendall"]), 4),
                     "exact": bool(stats["exact"])})
    rows.sort(key=lambda r: -r["spearman"])
    return {"rows": rows, "verdict": verdict(rows, n), "layers": n, "oracle": truth.criterion}


def verdict(rows: list[dict[str, Any]], n_layers: int) -> str:
    """One sentence: the criterion to trust, how sure that is, and when to prefer the oracle."""
    if not rows:
        return "no criterion was computed"
    best = rows[0]
    text = (f"trust '{best['criterion']}' on this model: Spearman {best['spearman']:.2f} with the measured "
            f"oracle (95% interval {best['spearman_lo']:.2f} to {best['spearman_hi']:.2f}, {n_layers} layers)")
    tied = [r["criterion"] for r in rows[1:] if r["spearman_hi"] >= best["spearman_lo"]]
    if n_layers < 8:
        text += (f"; with only {n_layers} layers no criterion is significantly better than another, so the order "
                 "is indicative")
    elif tied:
        text += f"; statistically tied with {', '.join(tied)} (their intervals overlap)"
    if best["spearman"] < 0.5:
        text += "; every criterion agrees weakly with the oracle here: prefer the oracle itself for decisions"
    return text + "."


def slice_section(model: Model, data: Dataset, opts: ReportOptions, profile: Any) -> dict[str, Any]:
    """Per class: the share of each layer's neurons and synapses in the class's slice."""
    if data.labels is None:
        return {"classes": [], "note": "the data has no labels: class slices need labelled samples"}
    classes = list(opts.classes) if opts.classes is not None else sorted(set(data.labels.tolist()))[:3]
    out: dict[str, Any] = {"classes": [], "layers": [], "theta": opts.theta}
    for k in classes:
        idx = np.flatnonzero(data.labels == k)[: opts.slice_samples]
        if idx.size == 0:
            continue
        t0 = time.perf_counter()
        s = slice_model(model, profile, data, f"class:{k}", opts.theta, samples=idx)
        rows = s.per_layer()
        out["layers"] = [r["layer"] for r in rows]
        out["classes"].append({"class": int(k), "samples": int(idx.size), "seconds": round(time.perf_counter() - t0, 3),
                               "neurons_in": [r["neurons_in"] for r in rows],
                               "synapses_in": [r["synapses_in"] for r in rows]})
    return out


def _latency_feed(model: Model, data: Dataset) -> dict[str, np.ndarray]:
    return {k: v[:1] for k, v in data.bind(model).items()}


def _row(label: str, kind: str, budget: float, model: Model, new: Model, ref_out: list[np.ndarray],
         data: Dataset, latency: tuple[float, float]) -> dict[str, Any]:
    fid = compare_outputs(ref_out, run_outputs(new, data), data.labels)
    return {"plan": label, "kind": kind, "budget": budget, "params": new.num_params,
            "bytes": new.proto.ByteSize(), "size_ratio": new.proto.ByteSize() / model.proto.ByteSize(),
            "latency_ms": latency[1], "latency_ratio": latency[1] / max(latency[0], 1e-9),
            "top1_agreement": fid.top1_agreement, "accuracy": fid.accuracy, "kl": fid.kl,
            "rel_error": fid.rel_error}


def _sweep(model: Model, data: Dataset, opts: ReportOptions, variants: list[tuple[str, float, Callable[[], Model]]],
           kind: str, tick: Callable[[], None]) -> dict[str, Any]:
    ref_out = run_outputs(model, data)
    base = compare_outputs(ref_out, ref_out, data.labels)
    feed = _latency_feed(model, data)
    rows: list[dict[str, Any]] = []
    refused: list[dict[str, str]] = []
    for label, budget, build in variants:
        try:
            new = build()
        except OnnxSliceError as e:
            refused.append({"plan": label, "budget": str(budget), "reason": str(e)})
            tick()
            continue
        lat = paired_latency_ms([model, new], feed, opts.repeats)
        rows.append(_row(label, kind, budget, model, new, ref_out, data, (lat[0], lat[1])))
        tick()
    return {"rows": rows, "refused": refused, "original": {"params": model.num_params,
            "bytes": model.proto.ByteSize(), "accuracy": base.accuracy, "threads": 1,
            "latency_batch": 1, "repeats": opts.repeats}}


def _pruned(model: Model, ratio: float, budget: str, **options: Any) -> Model:
    return prune(model, plan_pruning(model, ratio, budget, **options))


def _quantized(model: Model, data: Dataset, scores: LayerScores | None, avg_bits: float, uniform: str = "",
               per_parameter: bool = True) -> Model:
    if uniform:
        return quantize(model, uniform_plan(model, uniform), data)
    assert scores is not None  # a bug, not user input: every non-uniform variant passes scores
    return quantize(model, plan_bits(scores, model, avg_bits=avg_bits, per_parameter=per_parameter), data)


def _converted(model: Model, data: Dataset, fmt: str) -> Model:
    return convert(model, fmt, data)


def prune_section(model: Model, data: Dataset, opts: ReportOptions, scores: LayerScores | None,
                  tick: Callable[[], None]) -> dict[str, Any]:
    """Structured pruning at each ratio: uniform (L1), random channels, and the sensitivity budget."""
    variants: list[tuple[str, float, Callable[[], Model]]] = []
    for r in opts.prune_ratios:
        variants.append(("uniform", r, partial(_pruned, model, r, "uniform")))
        variants.append(("random", r, partial(_pruned, model, r, "uniform", channel_score="random", seed=opts.seed)))
        if scores is not None:
            variants.append((f"sensitivity ({scores.criterion})", r,
                             partial(_pruned, model, r, "sensitivity", scores=scores)))
    return _sweep(model, data, opts, variants, "prune", tick)


def quantize_section(model: Model, data: Dataset, opts: ReportOptions, scores: LayerScores | None,
                     tick: Callable[[], None]) -> dict[str, Any]:
    """Static int8 QDQ (onnxruntime's integer kernels), then weight-only mixed precision (int4/int8) at each
    average-bits budget with uniform and random plans."""
    names = [x.name for x in quantizable_layers(model)]
    rnd = np.random.default_rng(opts.seed + 1000).permutation(len(names)).astype(float)
    random_scores = LayerScores(dict(zip(names, rnd.tolist(), strict=True)), "random")
    variants: list[tuple[str, float, Callable[[], Model]]] = [
        ("qdq int8 (static)", 8.0, partial(_converted, model, data, "qdq")),
        ("uniform int8", 8.0, partial(_quantized, model, data, None, 8.0, "int8")),
        ("uniform int4", 4.0, partial(_quantized, model, data, None, 4.0, "int4")),
    ]
    for b in opts.quant_bits:
        variants.append(("random", b, partial(_quantized, model, data, random_scores, b, per_parameter=False)))
        if scores is not None:
            variants.append((f"sensitivity ({scores.criterion})", b, partial(_quantized, model, data, scores, b)))
    return _sweep(model, data, opts, variants, "quantize", tick)
