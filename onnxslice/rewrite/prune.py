"""The ``prune`` pass: apply a pruning :class:`Plan` to a model and emit a smaller ONNX model.

**Structured** (the default): every channel group the plan names loses the chosen channels. Each
initializer slice of the group goes (the layers' filters and biases, BatchNormalization and other
per-channel parameters, the consumers' input columns, the H*W feature blocks of a Flatten -> Gemm),
and channel counts stored in nodes shrink (a depthwise Conv's ``group``, a Reshape's target shape), so
the file really gets smaller and faster. **Unstructured**: chosen weights are zeroed (masks); the file
keeps its size.

The edits are passes on the graph IR (:class:`~onnxslice.rewrite.passes.prune.ChannelCut`, or
:class:`~onnxslice.rewrite.passes.initializers.ReplaceInitializers` for masks) run by the
:class:`~onnxslice.rewrite.passes.manager.PassManager` (full ONNX check, I/O kept, plan in
``metadata_props``). The input model is never modified.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx

from onnxslice.errors import PlanError
from onnxslice.model import Model
from onnxslice.rewrite.channel_scores import ChannelScore, group_scores, select_channels
from onnxslice.rewrite.groups import GroupSet, discover_groups
from onnxslice.rewrite.passes.base import to_ir, to_proto
from onnxslice.rewrite.passes.initializers import ReplaceInitializers
from onnxslice.rewrite.passes.manager import PassManager
from onnxslice.rewrite.passes.prune import ChannelCut, reinfer_shapes
from onnxslice.rewrite.plan import Plan

__all__ = ["prune", "resolve_channels", "unstructured_masks"]


def _decision(name: str, d: Any) -> tuple[float | None, list[int] | None]:
    """(ratio, explicit channels) of one plan decision: a number, or ``{"ratio": r, "remove": [...]}``."""
    if isinstance(d, bool):
        raise PlanError(f"the decision for layer '{name}' is a boolean; give a ratio in [0, 1)")
    ratio: float | None
    if isinstance(d, (int, float)):
        ratio, remove = float(d), None
    elif isinstance(d, Mapping):
        ratio = float(d["ratio"]) if d.get("ratio") is not None else None
        remove = d.get("remove")
        if remove is not None:
            if not isinstance(remove, (list, tuple)) or not all(isinstance(c, (int, np.integer)) for c in remove):
                raise PlanError(f"'remove' of layer '{name}' must be a list of channel indices")
            remove = [int(c) for c in remove]
        if ratio is None and remove is None:
            raise PlanError(f"the decision for layer '{name}' needs 'ratio' or 'remove'")
    else:
        raise PlanError(f"the decision for layer '{name}' must be a ratio or an object with 'ratio'/'remove'")
    if (ratio is not None and not (0.0 <= ratio < 1.0)) or (ratio is not None and math.isnan(ratio)):
        raise PlanError(f"the pruning ratio of layer '{name}' is {ratio}; it must be in [0, 1)")
    return ratio, remove


def resolve_channels(
    model: Model,
    plan: Plan,
    groups: GroupSet | None = None,
    channel_score: ChannelScore = "l1",
    seed: int = 0,
) -> tuple[dict[str, np.ndarray], dict[str, str], GroupSet]:
    """The channels each group loses under a structured ``plan``, and the named layers left alone.

    Returns:
        (group leader -> sorted removed channels, layer -> reason it is left alone, the groups).

    Raises:
        PlanError: unknown layers, ratios outside [0, 1), bad channel lists, or coupled layers given
            different decisions.
    """
    plan.validate(model)
    groups = groups or discover_groups(model)
    rng = np.random.default_rng(seed)
    chosen: dict[str, np.ndarray] = {}
    by_group: dict[str, tuple[str, Any]] = {}
    skipped: dict[str, str] = {}
    for name, d in plan.layers.items():
        ratio, remove = _decision(name, d)
        g = groups.of_layer(name)
        if g is None:
            skipped[name] = "it is not a layer whose output channels can be pruned"
            continue
        if not g.prunable:
            skipped[name] = str(g.reason)
            continue
        key = json_key(ratio, remove)
        if g.leader in by_group and by_group[g.leader][1] != key:
            other = by_group[g.leader][0]
            raise PlanError(
                f"layers '{other}' and '{name}' are coupled (one channel group, e.g. through a residual Add) "
                "but the plan gives them different decisions; give the group one decision"
            )
        by_group[g.leader] = (name, key)
        if remove is not None:
            arr = np.unique(np.asarray(remove, dtype=np.int64))
            if arr.size != len(remove) or (arr.size and (arr[0] < 0 or arr[-1] >= g.size)):
                raise PlanError(f"'remove' of layer '{name}' must hold distinct channels in 0..{g.size - 1}")
            if arr.size > g.max_removable():
                raise PlanError(f"'remove' of layer '{name}' leaves no channel in some group of {g.size // g.segments}")
            if g.segments > 1:
                seg = g.size // g.segments
                per = np.bincount(arr // seg, minlength=g.segments)
                if not np.all(per == per[0]):
                    raise PlanError(f"layer '{name}' is a grouped Conv: remove the same number from each of "
                                    f"its {g.segments} groups")
            chosen[g.leader] = arr
        else:
            assert ratio is not None
            k = min(math.floor(ratio * g.size / g.segments) * g.segments, g.max_removable())
            chosen[g.leader] = select_channels(group_scores(model, g, channel_score, rng), k, g.segments)
    return chosen, skipped, groups


def json_key(ratio: float | None, remove: list[int] | None) -> str:
    """A comparable form of a decision (coupled layers must agree)."""
    return f"{ratio}|{sorted(remove) if remove is not None else None}"


def _apply_structured(model: Model, chosen: Mapping[str, np.ndarray], groups: GroupSet) -> onnx.ModelProto:
    """The :class:`ChannelCut` of ``chosen`` as an unchecked proto, for measuring many candidate cuts (latency
    tables); with nothing to cut, the source through the same export (fresh shapes), so timings compare."""
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    result = ChannelCut(chosen, groups)(to_ir(proto))
    return to_proto(result.model) if result.changed else reinfer_shapes(to_proto(result.model))


def unstructured_masks(model: Model, plan: Plan) -> dict[str, np.ndarray]:
    """Keep-masks (True = keep) per weight initializer for an unstructured plan.

    Masks stored with the plan (``plan.masks``: a Slice's CONTRIB or another synapse score) are used
    as they are; otherwise the fraction ``ratio`` of each layer's weights with the smallest magnitude
    goes (ties to the lower flat index).
    """
    plan.validate(model)
    stored: Mapping[str, np.ndarray] = getattr(plan, "masks", {}) or {}
    out: dict[str, np.ndarray] = {}
    for name, d in plan.layers.items():
        ratio, remove = _decision(name, d)
        if remove is not None:
            raise PlanError(f"layer '{name}': 'remove' lists channels, which only structured pruning uses")
        layer = model.layer(name)
        w = model.initializer(layer.weight)
        if layer.weight in stored:
            mask = np.asarray(stored[layer.weight], dtype=bool)
            if mask.shape != w.shape:
                raise PlanError(f"the stored mask of '{layer.weight}' has shape {mask.shape}, not {w.shape}")
        elif plan.meta.get("synapse_scores"):
            raise PlanError(
                f"the plan selects synapses by {plan.meta['synapse_scores']} but carries no mask for "
                f"'{layer.weight}'; load it with PrunePlan.load so that its .npz masks come along"
            )
        else:
            k = round((ratio or 0.0) * w.size)
            order = np.argsort(np.abs(w).reshape(-1), kind="stable")
            mask = np.ones(w.size, dtype=bool)
            mask[order[:k]] = False
            mask = mask.reshape(w.shape)
        out[layer.weight] = mask
    return out


def _unstructured_arrays(model: Model, plan: Plan) -> tuple[dict[str, np.ndarray], int]:
    """The masked weights (and biases of neurons whose synapses all went) of an unstructured plan."""
    masks = unstructured_masks(model, plan)
    arrays: dict[str, np.ndarray] = {}
    zeroed = 0
    for layer_name in plan.layers:
        layer = model.layer(layer_name)
        mask = masks[layer.weight]
        w = np.asarray(arrays.get(layer.weight, model.initializer(layer.weight)))
        arrays[layer.weight] = np.where(mask, w, np.zeros_like(w))
        zeroed += int((~mask).sum())
        if layer.bias is not None:  # a neuron whose synapses all went goes too
            axis = layer.out_axis
            dead = ~np.moveaxis(mask, axis, 0).reshape(mask.shape[axis], -1).any(1)
            b = np.asarray(arrays.get(layer.bias, model.initializer(layer.bias)))
            if dead.any() and b.shape[-1] == dead.size:
                arrays[layer.bias] = np.where(dead, np.zeros_like(b), b)
    return arrays, zeroed


def prune(model: Model, plan: Plan, *, channel_score: ChannelScore = "l1", seed: int = 0) -> Model:
    """Apply a pruning plan; return the pruned model (the input is never modified).

    Args:
        model: the model to prune.
        plan: a plan of kind ``"prune"`` (from :func:`onnxslice.plan_pruning`, or hand-written:
            layer -> ratio, or ``{"ratio": r}`` / ``{"remove": [channels]}``); ``plan.meta["mode"]``
            is ``"structured"`` (default) or ``"unstructured"``.
        channel_score: how channels are chosen for decisions given only as a ratio.
        seed: for the ``"random"`` channel score.

    Returns:
        The pruned, checked :class:`Model`; its ``metadata_props`` record the plan and what was removed.

    Raises:
        PlanError: the plan is not a prune plan, names unknown layers, has ratios outside [0, 1), ...
    """
    if plan.kind != "prune":
        raise PlanError(f"prune() takes a plan of kind 'prune', not '{plan.kind}'")
    mode = plan.meta.get("mode", "structured")
    before = model.num_params
    if mode == "unstructured":
        arrays, zeroed = _unstructured_arrays(model, plan)
        extra = {"mode": mode, "zeroed_weights": zeroed, "params": before}
        return PassManager("prune", [ReplaceInitializers(arrays, extra)]).run(model, plan=plan, extra=extra).model
    if mode != "structured":
        raise PlanError(f"unknown pruning mode '{mode}'; use 'structured' or 'unstructured'")
    chosen, skipped, groups = resolve_channels(model, plan, channel_score=channel_score, seed=seed)
    sizes = {g.leader: g.size for g in groups.prunable}
    decisions = {k: {"ratio": round(v.size / sizes[k], 6), "remove": v.tolist()} for k, v in chosen.items()}
    record = Plan(plan.kind, decisions, plan.budget, dict(plan.meta))
    removed = groups.removed_params({k: int(v.size) for k, v in chosen.items()})
    info = {
        "mode": mode,
        "params_before": before,
        "params_removed": removed,
        "prunable_params": groups.prunable_params(),
        "left_alone": skipped,
    }
    return PassManager("prune", [ChannelCut(chosen, groups, info)]).run(model, plan=record, extra=info).model
