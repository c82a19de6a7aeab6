"""``plan_bits``: a per-layer precision plan from layer scores and a size budget (ALGORITHMS.md, Budgets).

Every quantizable layer starts at the lowest precision of ``choices``. Upgrades (one precision step
of one layer) are then taken greedily, best value per byte first, while the budget allows; an upgrade
that does not fit ends that layer's upgrades and the next best is tried. Because that greedy fill can
strand budget (small layers first, then the large one no longer fits), it is rerun after each single
possible first upgrade and the plan with the highest total value is kept (the knapsack "greedy + best
seed" repair; L x choices greedy runs, cheap). The value of raising layer l
from b to b' bits is ``s_l * (4**-b - 4**-b')`` per byte it adds, where ``s_l`` is the layer's score
and ``4**-b`` models how the quantization noise power falls with the bit width; the bytes an upgrade
adds are proportional to the layer's weight count, so with two choices this is exactly "the highest
importance per parameter first". Negative scores (e.g. a ground truth ``-E||f' - f||``) are shifted so
that the least important layer scores 0.

Budgets: ``avg_bits`` is the mean nominal bit width over the weights of the quantizable layers
(int4 = 4, int8 = 8, fp16 = 16, fp32 = 32; scales not counted); ``size_mb`` is the estimated file
size in MB (10**6 bytes): the model's serialized size with each quantizable weight replaced by its
stored size at the chosen precision (quantized data plus float32 scales); the nodes that dequantize
and the plan recorded in ``metadata_props`` add a few hundred bytes per layer that it leaves out.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from onnxslice.errors import PlanError
from onnxslice.model import Model
from onnxslice.rewrite.plan import Plan
from onnxslice.rewrite.precision import BITS, check_precision, layer_bytes, parse_choices, quantizable_layers
from onnxslice.scores import LayerScores

__all__ = ["PlanCost", "plan_bits", "plan_cost", "uniform_plan"]


@dataclass(frozen=True)
class PlanCost:
    """What a precision plan costs.

    Attributes:
        avg_bits: mean nominal bits per weight of the quantizable layers.
        size_bytes: estimated file size in bytes.
    """

    avg_bits: float
    size_bytes: int

    @property
    def size_mb(self) -> float:
        """Estimated file size in MB (10**6 bytes)."""
        return self.size_bytes / 1e6


def _weights(model: Model) -> dict[str, int]:
    return {x.name: int(model.initializer(x.weight).size) for x in quantizable_layers(model)}


def plan_cost(model: Model, decisions: Mapping[str, str], block_size: int = 32) -> PlanCost:
    """Average bits and estimated file size of ``decisions`` (layer -> precision; absent layers stay fp32)."""
    sizes = _weights(model)
    total = sum(sizes.values()) or 1
    bits = sum(BITS[decisions.get(n, "fp32")] * k for n, k in sizes.items()) / total
    base = model.proto.ByteSize()
    delta = 0
    for layer in quantizable_layers(model):
        p = decisions.get(layer.name, "fp32")
        if p != "fp32":
            delta += layer_bytes(model, layer, p, block_size) - layer_bytes(model, layer, "fp32", block_size)
    return PlanCost(float(bits), int(base + delta))


def _importance(scores: LayerScores, model: Model) -> dict[str, float]:
    sizes = _weights(model)
    known = {x.name for x in model.layers}
    unknown = [n for n in scores.scores if n not in known]
    if unknown:
        raise PlanError(f"the scores name unknown layer(s) {', '.join(unknown[:5])}; were they computed on this model?")
    missing = [n for n in sizes if n not in scores.scores]
    if missing:
        raise PlanError(f"the scores have no value for layer(s) {', '.join(missing[:5])}; score every layer")
    raw = np.array([float(scores.scores[n]) for n in sizes], dtype=np.float64)
    if not np.isfinite(raw).all():
        raise PlanError("the scores hold NaN or Inf; recompute them")
    if raw.size and raw.min() < 0:  # e.g. a ground truth -E||f' - f||: shift so the least important is 0
        raw = raw - raw.min()
    return dict(zip(sizes, raw.tolist(), strict=True))


def _budget(model: Model, avg_bits: float | None, size_mb: float | None) -> tuple[str, float]:
    if (avg_bits is None) == (size_mb is None):
        raise PlanError("give exactly one budget: avg_bits=... or size_mb=...")
    if avg_bits is not None:
        if not avg_bits > 0:
            raise PlanError(f"avg_bits must be positive, got {avg_bits}")
        return "avg_bits", float(avg_bits)
    assert size_mb is not None
    if not size_mb > 0:
        raise PlanError(f"size_mb must be positive, got {size_mb}")
    return "size_mb", float(size_mb)


def plan_bits(
    scores: LayerScores,
    model: Model,
    choices: str | Iterable[str] = ("int4", "int8"),
    avg_bits: float | None = None,
    size_mb: float | None = None,
    *,
    block_size: int = 32,
    per_parameter: bool = True,
    errors: Mapping[str, Mapping[str, float]] | None = None,
) -> Plan:
    """Choose a precision per layer: the most important layers per parameter get the higher precision.

    Args:
        scores: layer importances (higher = more important), one per quantizable layer.
        model: the model the scores belong to.
        choices: the precisions to choose from (e.g. ``("int4", "int8")`` or ``"int4,int8,fp16"``).
        avg_bits: budget as mean nominal bits per weight (see the module docstring).
        size_mb: budget as estimated file size in MB.
        block_size: int4 block size (for the size estimate).
        per_parameter: divide each score by the layer's weight count (off: rank by the raw score).
        errors: predicted error of each layer at each precision (layer -> precision -> error; fp32 is
            0), e.g. ``scores.meta["errors"]`` of a quantizer-aware criterion (used by default when
            present): the value of an upgrade is then the error it removes, not ``s * 4**-b``.

    Returns:
        A ``Plan`` of kind ``"quantize"`` naming every quantizable layer; ``meta`` records the budget,
        the achieved average bits and the estimated size.

    Raises:
        PlanError: no or two budgets, unknown choices, scores that do not match the model, or a budget
            below what the lowest choice for every layer costs.
    """
    levels = parse_choices(choices)
    kind, limit = _budget(model, avg_bits, size_mb)
    pri = _importance(scores, model)
    layers = {x.name: x for x in quantizable_layers(model)}
    if not layers:
        raise PlanError("the model has no quantizable layers (Conv, ConvTranspose, Gemm, MatMul with float32 weights)")
    sizes = _weights(model)
    total = sum(sizes.values())
    fixed = model.proto.ByteSize() - sum(layer_bytes(model, x, "fp32", block_size) for x in layers.values())

    def layer_cost(name: str, p: str) -> float:
        if kind == "avg_bits":
            return BITS[p] * sizes[name] / total
        return layer_bytes(model, layers[name], p, block_size) / 1e6

    base = {n: levels[0] for n in layers}
    start = sum(layer_cost(n, p) for n, p in base.items()) + (fixed / 1e6 if kind == "size_mb" else 0.0)
    eps = 1e-9 * max(1.0, limit)
    if start > limit + eps:
        raise PlanError(
            f"no plan meets {kind}={limit:g}: the smallest, every layer at {levels[0]}, needs {kind}={start:.4g}; "
            "raise the budget or add a lower precision to the choices"
        )
    order = {n: i for i, n in enumerate(layers)}

    if errors is None and isinstance(scores.meta.get("errors"), Mapping):
        errors = scores.meta["errors"]
    if errors is not None:
        lacking = [n for n in layers if any(p != "fp32" and p not in errors.get(n, {}) for p in levels)]
        if lacking:
            raise PlanError(f"the predicted errors lack layer(s) {', '.join(lacking[:5])} at some of "
                            f"{', '.join(levels)}; compute them for every choice")

    def gain(name: str, p: str) -> float:  # predicted error removed by raising the layer from levels[0] to p
        if errors is not None:
            err = errors[name]
            return float(err.get(levels[0], 0.0)) - float(err.get(p, 0.0) if p != "fp32" else 0.0)
        return pri[name] * (4.0 ** -BITS[levels[0]] - 4.0 ** -BITS[p])

    def greedy(plan: dict[str, str], used: float) -> dict[str, str]:
        heap: list[tuple[float, int, str, int]] = []

        def push(name: str, level: int) -> None:
            if level + 1 < len(levels):
                lo, hi = levels[level], levels[level + 1]
                g = gain(name, hi) - gain(name, lo)
                extra = layer_cost(name, hi) - layer_cost(name, lo)
                key = g / max(extra, 1e-30) if per_parameter else g  # value per byte = importance per parameter
                heapq.heappush(heap, (-key, order[name], name, level + 1))

        for n in layers:
            push(n, levels.index(plan[n]))
        while heap:
            _, _, name, level = heapq.heappop(heap)
            extra = layer_cost(name, levels[level]) - layer_cost(name, plan[name])
            if used + extra <= limit + eps:
                plan[name] = levels[level]
                used += extra
                push(name, level)
        return plan

    plan = greedy(dict(base), start)
    if per_parameter:  # the greedy can leave budget unused; also try it after each single first upgrade
        best = sum(gain(n, p) for n, p in plan.items())
        for n in layers:
            for p in levels[1:]:
                extra = layer_cost(n, p) - layer_cost(n, levels[0])
                if start + extra > limit + eps:
                    break
                alt = greedy({**base, n: p}, start + extra)
                value = sum(gain(k, q) for k, q in alt.items())
                if value > best * (1 + 1e-12):
                    plan, best = alt, value
    cost = plan_cost(model, plan, block_size)
    meta = {
        "criterion": scores.criterion,
        "reduction": scores.reduction,
        "choices": list(levels),
        kind: limit,
        "achieved_avg_bits": round(cost.avg_bits, 4),
        "estimated_size_mb": round(cost.size_mb, 6),
        "block_size": block_size,
        "per_parameter": per_parameter,
        "value": "predicted error per precision" if errors is not None else "score * 4**-bits",
    }
    return Plan("quantize", plan, "sensitivity", meta)


def uniform_plan(model: Model, precision: str, block_size: int = 32) -> Plan:
    """Every quantizable layer at ``precision``."""
    check_precision(precision)
    plan = {x.name: precision for x in quantizable_layers(model)}
    cost = plan_cost(model, plan, block_size)
    meta = {"achieved_avg_bits": round(cost.avg_bits, 4), "estimated_size_mb": round(cost.size_mb, 6)}
    return Plan("quantize", plan, f"uniform-{precision}", {**meta, "block_size": block_size})
