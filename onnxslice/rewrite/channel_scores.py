"""Which channels of a group go: per-channel scores and the selection of the lowest ones.

The default score of a channel is the L1 norm of its filter (Li et al., Torch-Pruning's default),
summed over the group's source layers after dividing each layer's norms by their mean (coupled layers
of different scales count equally). Any per-weight relevance (a SAfER criterion's phi, a Slice's
synapse CONTRIB) is reduced per channel the same way, from its absolute values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from onnxslice.errors import PlanError
from onnxslice.model import Layer, Model
from onnxslice.rewrite.groups import ChannelGroup

__all__ = ["ChannelScore", "group_scores", "per_channel", "select_channels"]

#: ``"l1"``, ``"l2"``, ``"random"``, a callable ``(layer, weight) -> scores[C]``, or relevance arrays
#: keyed by layer or weight name (the weight's shape, or one value per output channel).
ChannelScore = str | Callable[[Layer, np.ndarray], np.ndarray] | Mapping[str, np.ndarray]


def _out_cut(model: Model, group: ChannelGroup, layer: Layer) -> Any:
    for name, ref in group.cuts:
        if name == layer.weight:
            return ref
    raise PlanError(f"layer '{layer.name}' has no output slice in its group (a bug)")


def per_channel(values: np.ndarray, ref: Any, size: int, norm: str = "l1") -> np.ndarray:
    """Reduce a weight-shaped array to one number per group channel along ``ref`` (L1 or L2)."""
    moved = np.moveaxis(np.abs(np.asarray(values, dtype=np.float64)), ref.axis, 0)
    flat = moved.reshape(moved.shape[0], -1)
    rows = flat[ref.indices(np.arange(size))].reshape(size, -1)
    return np.sqrt((rows**2).sum(1)) if norm == "l2" else rows.sum(1)


def group_scores(model: Model, group: ChannelGroup, score: ChannelScore, rng: np.random.Generator) -> np.ndarray:
    """One importance per channel of ``group`` (higher = keep).

    Raises:
        PlanError: relevance arrays lack a source layer of the group or have the wrong shape.
    """
    if isinstance(score, str) and score == "random":
        return rng.random(group.size)
    total = np.zeros(group.size)
    for name in group.layers:
        layer = model.layer(name)
        w = model.initializer(layer.weight)
        ref = _out_cut(model, group, layer)
        if isinstance(score, str):
            if score not in ("l1", "l2"):
                raise PlanError(f"unknown channel score '{score}'; use l1, l2, random, a callable or arrays")
            s = per_channel(w, ref, group.size, score)
        elif callable(score):
            s = np.asarray(score(layer, w), dtype=np.float64).reshape(-1)
        else:
            rel = score.get(name, score.get(layer.weight))
            if rel is None:
                raise PlanError(f"the channel scores have no entry for layer '{name}' (or its weight '{layer.weight}')")
            rel = np.asarray(rel)
            if rel.shape == w.shape:
                s = per_channel(rel, ref, group.size)
            elif rel.size == group.size:
                s = np.abs(rel.reshape(-1).astype(np.float64))
            else:
                raise PlanError(
                    f"channel scores for '{name}' have shape {rel.shape}; expected the weight's {w.shape} "
                    f"or one value per channel ({group.size})"
                )
        if s.shape != (group.size,):
            raise PlanError(f"channel scores for '{name}' have {s.size} values; the group has {group.size} channels")
        mean = float(np.mean(np.abs(s)))
        total += s / mean if mean > 0 else s
    return total


def select_channels(scores: np.ndarray, k: int, segments: int = 1) -> np.ndarray:
    """The ``k`` lowest-scoring channels (sorted), ``k / segments`` from each equal segment.

    Ties go to the lower index (stable sort), so a selection is reproducible.
    """
    size = scores.size
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    per, seg = k // segments, size // segments
    picked = [s * seg + np.argsort(scores[s * seg : (s + 1) * seg], kind="stable")[:per] for s in range(segments)]
    return np.sort(np.concatenate(picked)).astype(np.int64)
