"""Pruning budgets: how much each layer loses, as a :class:`Plan` that :func:`prune` applies.

**The planned ratio.** In structured mode, ``ratio`` is the fraction of the model's *prunable
parameters* that the plan removes: the scalars of every initializer that a prunable channel group
slices (the groups' filters and biases, their BatchNormalization and per-channel parameters, and the
input columns of the layers that consume them), counted exactly, the cross terms of a weight losing
both input and output channels included. In unstructured mode it is the fraction of the layers'
weights that are zeroed.

**Budgets** (ALGORITHMS.md "Budgets"):

- ``uniform``: every group loses the same fraction of its channels (Torch-Pruning's default with L1);
  the fraction is solved so that the planned ratio is met.
- ``sensitivity``: SAfER's ``gamma_l = alpha * gamma * C_l`` from any :class:`LayerScores` (given, or
  computed here from ``data`` with a real criterion, ``wgrad`` reduced by ``linf`` by default). The exact
  normalisation: with ``s_l`` the layer scores (higher = more important; shifted to be >= 0) and
  ``m`` their mean, ``C_l = m / max(s_l, 1e-3 m)``: inverse-proportional, so a layer half as important
  gets twice the share. A coupled group takes the parameter-weighted mean of its layers' ``C_l``.
  ``gamma_l`` is clipped to [0, 0.9] and ``alpha`` is found by bisection so that the parameters removed
  are ``gamma`` of the prunable parameters: the excess of clipped layers goes to the others.
- ``slice``: NNSlicer class-focused pruning from a Slice's synapse CONTRIB. Per layer the fraction
  ``ratio`` of synapses with the smallest ``|CONTRIB|`` goes (ties: smallest ``|w|`` first); a neuron
  whose synapses all went goes with its bias. Unstructured (masks); with ``mode="structured"`` the
  channels are chosen by their summed ``|CONTRIB|`` with uniform budgets. :func:`class_slice` computes
  the Slice of NNSlicer's criterion (I_T, O_T): the samples of the target classes and their output
  neurons.

Channel counts are whole numbers: the channels are first floored, then single channels (a segment's
worth for grouped Convs) go to the groups with the largest remainders until the target is closest.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxslice.data import Dataset, load_data
from onnxslice.errors import PlanError
from onnxslice.io import load_npz, save_npz
from onnxslice.model import Model
from onnxslice.profile import profile
from onnxslice.rewrite.channel_scores import ChannelScore, group_scores, select_channels
from onnxslice.rewrite.groups import ChannelGroup, GroupSet, discover_groups
from onnxslice.rewrite.plan import Plan
from onnxslice.sensitivity import sensitivity
from onnxslice.slicing import slice as slice_model
from onnxslice.slicing.targets import parse_targets

__all__ = ["MAX_LAYER_RATIO", "PrunePlan", "class_slice", "plan_pruning", "sensitivity_scores"]

#: No layer loses more than this fraction (SAfER's clip).
MAX_LAYER_RATIO = 0.9
BUDGETS = ("uniform", "sensitivity", "slice")
RATIO_DEFINITION = {
    "structured": "fraction of prunable parameters removed (scalars of every initializer a prunable channel "
    "group slices, cross terms counted exactly)",
    "unstructured": "fraction of the layers' weights zeroed",
}


@dataclass(repr=False)
class PrunePlan(Plan):
    """A prune :class:`Plan` that may carry per-weight keep-masks (unstructured plans from synapse scores).

    The masks are saved beside the JSON as ``<plan>.npz`` and read back by :meth:`load`.
    """

    masks: dict[str, np.ndarray] = field(default_factory=dict)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the JSON plan (atomic) and, when there are masks, ``<path>.npz`` beside it."""
        out = super().save(path)
        if self.masks:
            arrays = {k: np.asarray(v, dtype=bool) for k, v in self.masks.items()}
            save_npz(f"{out}.npz", arrays, {"kind": "prune-masks", "plan": out.name})
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PrunePlan:
        """Read a plan written by :meth:`save` (masks included when the ``.npz`` is there)."""
        base = Plan.load(path)
        masks: dict[str, np.ndarray] = {}
        side = Path(f"{path}.npz")
        if side.is_file():
            arrays, _ = load_npz(side, "prune-masks")
            masks = {k: np.asarray(v, dtype=bool) for k, v in arrays.items()}
        return cls(base.kind, base.layers, base.budget, base.meta, masks)


def _check_ratio(ratio: float) -> float:
    r = float(ratio)
    if not (0.0 <= r < 1.0) or math.isnan(r):
        raise PlanError(f"the pruning ratio is {ratio}; it must be in [0, 1)")
    return r


def _importance_share(model: Model, scores: Any, layers: list[str]) -> dict[str, float]:
    """``C_l = m / max(s_l, 1e-3 m)`` for the named layers (see the module docstring)."""
    if scores is None:
        raise PlanError("the sensitivity budget needs LayerScores (scores=..., e.g. from onnxslice.sensitivity) "
                        "or calibration data (data=..., criterion='wgrad')")
    raw = dict(getattr(scores, "scores", scores))
    known = {x.name for x in model.layers}
    unknown = [k for k in raw if k not in known]
    if unknown:
        raise PlanError(f"the layer scores name unknown layer(s) {', '.join(unknown[:5])}; were they computed "
                        "on another model?")
    missing = [n for n in layers if n not in raw]
    if missing:
        raise PlanError(f"the layer scores have no score for layer(s) {', '.join(missing[:5])}")
    s = np.array([float(raw[n]) for n in layers], dtype=np.float64)
    if not np.all(np.isfinite(s)):
        raise PlanError("the layer scores contain NaN or Inf")
    s = s - min(0.0, float(s.min()))
    m = float(s.mean()) or 1.0
    return {n: m / max(v, 1e-3 * m) for n, v in zip(layers, s, strict=True)}


def _group_share(model: Model, g: ChannelGroup, share: Mapping[str, float]) -> float:
    names = [n for n in [*g.layers, *g.followers] if n in share]
    w = np.array([model.layer(n).params for n in names], dtype=np.float64)
    c = np.array([share[n] for n in names])
    return float((w * c).sum() / w.sum())


RoundTo = int | Mapping[str, int]


def _r(g: ChannelGroup, round_to: RoundTo) -> int:
    """The channel multiple of group ``g`` (one for all, or per group leader)."""
    return int(round_to.get(g.leader, 1)) if isinstance(round_to, Mapping) else int(round_to)


def _snap(g: ChannelGroup, k: int, round_to: RoundTo) -> int:
    """The largest removal <= ``k`` that leaves a multiple of ``round_to`` channels (or removes none)."""
    round_to = _r(g, round_to)
    k = min(k, g.max_removable())
    if round_to <= 1 or g.segments > 1 or k <= 0:
        return k
    kept = min(g.size, -(-(g.size - k) // round_to) * round_to)
    return g.size - kept


def _next(g: ChannelGroup, k: int, round_to: RoundTo) -> int | None:
    """The next larger allowed removal after ``k``, or None."""
    round_to = _r(g, round_to)
    if round_to <= 1 or g.segments > 1:
        nxt = k + g.segments
        return nxt if nxt <= g.max_removable() else None
    kept = ((g.size - k - 1) // round_to) * round_to
    return g.size - kept if kept >= round_to else None


def _counts(groups: list[ChannelGroup], fractions: np.ndarray, round_to: RoundTo = 1) -> dict[str, int]:
    out = {}
    for g, f in zip(groups, fractions, strict=True):
        k = math.floor(f * g.size / g.segments) * g.segments
        out[g.leader] = _snap(g, k, round_to)
    return out


def _solve_counts(
    gset: GroupSet, groups: list[ChannelGroup], shares: np.ndarray, gamma: float, round_to: RoundTo = 1
) -> tuple[dict, float]:
    """Channel counts whose exact parameter removal is closest to ``gamma`` of the prunable parameters."""
    total = gset.prunable_params()
    target = gamma * total

    def frac(alpha: float) -> np.ndarray:
        return np.clip(alpha * gamma * shares, 0.0, MAX_LAYER_RATIO)

    def removed(alpha: float) -> int:
        return gset.removed_params(_counts(groups, frac(alpha), round_to))

    lo, hi = 0.0, 1.0
    while removed(hi) < target and hi < 1e9:
        hi *= 2
    if removed(hi) < target and all(_r(g, round_to) <= 1 for g in groups):
        most = removed(hi) / max(total, 1)
        raise PlanError(f"ratio {gamma} cannot be reached with each layer clipped to {MAX_LAYER_RATIO}: at most "
                        f"{most:.3f} of the prunable parameters can go")
    for _ in range(60):
        mid = (lo + hi) / 2
        if removed(mid) <= target:
            lo = mid
        else:
            hi = mid
    counts = _counts(groups, frac(lo), round_to)
    remainder = {g.leader: f * g.size - counts[g.leader] for g, f in zip(groups, frac(lo), strict=True)}
    best = abs(gset.removed_params(counts) - target)
    for g in sorted(groups, key=lambda g: -remainder[g.leader]):
        nxt = _next(g, counts[g.leader], round_to)
        if nxt is None:
            continue
        trial = dict(counts)
        trial[g.leader] = nxt
        err = abs(gset.removed_params(trial) - target)
        if err < best:
            counts, best = trial, err
        if gset.removed_params(counts) >= target:
            break
    return counts, lo


def _synapse_scores(model: Model, slice_: Any) -> Mapping[str, np.ndarray]:
    if slice_ is None:
        raise PlanError("the slice budget needs a Slice (slice=...) with per-synapse CONTRIB for the target classes")
    fingerprint = getattr(slice_, "fingerprint", "")
    if fingerprint and fingerprint != model.fingerprint:
        raise PlanError(f"the slice was computed on another model (fingerprint {fingerprint}, this model's is "
                        f"{model.fingerprint}); slice this model")
    syn = getattr(slice_, "synapses", slice_)
    if not isinstance(syn, Mapping):
        raise PlanError("slice= must be a Slice (with .synapses) or a mapping weight name -> CONTRIB array")
    return syn


def _plan_structured(
    model: Model, gamma: float, budget: str, scores: Any, slice_: Any, channel_score: ChannelScore, seed: int,
    round_to: int = 1,
    round_convs_only: bool = False,
) -> PrunePlan:
    gset = discover_groups(model)
    groups = gset.prunable
    if not groups:
        raise PlanError("no layer of this model can be pruned structurally: " +
                        "; ".join(f"{k}: {v}" for k, v in list(gset.skipped.items())[:5]))
    if budget == "sensitivity":
        names = [n for g in groups for n in [*g.layers, *g.followers]]
        share = _importance_share(model, scores, names)
        shares = np.array([_group_share(model, g, share) for g in groups])
    else:
        shares = np.ones(len(groups))
    if budget == "slice":
        channel_score = dict(_synapse_scores(model, slice_))
    rounding: RoundTo = round_to
    if round_convs_only:
        rounding = {g.leader: round_to if any(model.layer(n).op_type in ("Conv", "ConvTranspose") for n in g.layers)
                    else 1 for g in groups}
    counts, alpha = _solve_counts(gset, groups, shares, gamma, rounding)
    rng = np.random.default_rng(seed)
    layers: dict[str, Any] = {}
    for g in groups:
        chans = select_channels(group_scores(model, g, channel_score, rng), counts[g.leader], g.segments)
        layers[g.leader] = {"ratio": round(chans.size / g.size, 6), "remove": chans.tolist(), "layers": g.layers}
    removed = gset.removed_params(counts)
    prunable = gset.prunable_params()
    meta = {
        "mode": "structured",
        "ratio": gamma,
        "ratio_definition": RATIO_DEFINITION["structured"],
        "prunable_params": prunable,
        "removed_params": removed,
        "achieved_ratio": removed / prunable if prunable else 0.0,
        "alpha": alpha,
        "channel_score": channel_score if isinstance(channel_score, str) else
        ("slice CONTRIB" if budget == "slice" else "custom"),
        "left_alone": gset.skipped,
        "seed": seed,
        "round_to": round_to,
        "round_convs_only": round_convs_only,
    }
    if budget == "sensitivity":
        meta["criterion"] = getattr(scores, "criterion", "user")
        meta["group_share"] = {g.leader: float(c) for g, c in zip(groups, shares, strict=True)}
    return PrunePlan("prune", layers, budget, meta)


def _plan_unstructured(model: Model, gamma: float, budget: str, scores: Any, slice_: Any) -> PrunePlan:
    layers = [x for x in model.layers]
    sizes = np.array([model.initializer(x.weight).size for x in layers], dtype=np.float64)
    if budget == "sensitivity":
        share = _importance_share(model, scores, [x.name for x in layers])
        c = np.array([share[x.name] for x in layers])
        lo, hi = 0.0, 1.0
        while (np.clip(hi * gamma * c, 0, MAX_LAYER_RATIO) * sizes).sum() < gamma * sizes.sum() and hi < 1e9:
            hi *= 2
        for _ in range(80):
            mid = (lo + hi) / 2
            if (np.clip(mid * gamma * c, 0, MAX_LAYER_RATIO) * sizes).sum() < gamma * sizes.sum():
                lo = mid
            else:
                hi = mid
        ratios = np.clip(hi * gamma * c, 0, MAX_LAYER_RATIO)
    else:
        ratios = np.full(len(layers), gamma)
    plan = PrunePlan("prune", {x.name: {"ratio": round(float(r), 6)} for x, r in zip(layers, ratios, strict=True)},
                     budget, {"mode": "unstructured", "ratio": gamma,
                              "ratio_definition": RATIO_DEFINITION["unstructured"]})
    if budget == "slice":
        syn = _synapse_scores(model, slice_)
        for x, r in zip(layers, ratios, strict=True):
            contrib = syn.get(x.weight, syn.get(x.name))
            w = model.initializer(x.weight)
            if contrib is None:
                raise PlanError(f"the slice has no synapse CONTRIB for layer '{x.name}' (weight '{x.weight}')")
            contrib = np.asarray(contrib)
            if contrib.shape != w.shape:
                raise PlanError(f"the slice's CONTRIB for '{x.weight}' has shape {contrib.shape}, not {w.shape}")
            order = np.lexsort((np.abs(w).reshape(-1), np.abs(contrib).reshape(-1)))
            mask = np.ones(w.size, dtype=bool)
            mask[order[: round(r * w.size)]] = False
            plan.masks[x.weight] = mask.reshape(w.shape)
        plan.meta["synapse_scores"] = "slice CONTRIB"
    return plan


def sensitivity_scores(model: Model, data: Any, criterion: str = "wgrad", reduction: str = "linf",
                       **options: Any) -> Any:
    """SAfER layer scores for the sensitivity budget: :func:`onnxslice.sensitivity` on ``data``.

    Raises:
        PlanError: a criterion that needs data was given none.
    """
    if data is None and criterion != "weight":
        raise PlanError(f"the sensitivity budget with criterion '{criterion}' needs calibration data (data=... / "
                        "--data), or precomputed LayerScores (scores=... / --scores)")
    return sensitivity(model, data, criterion, reduction, **options)


def class_slice(
    model: Model,
    data: Any,
    targets: Any,
    *,
    samples: int | None = 256,
    profile_samples: int = 1000,
    theta: float = 0.3,
    accumulate: str = "abs",
    **options: Any,
) -> Any:
    """NNSlicer's class-focused criterion (I_T, O_T): the slice of the target classes' samples and outputs.

    Synapse CONTRIB is accumulated as the number of significant uses (``accumulate="abs"``) by default,
    not NNSlicer's signed sum: a conv weight's signed uses cancel over positions and samples, and the
    signed ranking prunes single weights much worse (``benchmarks/bench_classprune.py``, 10 target pairs;
    ResNet-8 at r = 0.2: 0.66 vs 0.90 accuracy on the target classes; LeNet-5 ahead at every ratio up to
    0.6). Whole channels are the other way round (LeNet-5, r = 0.55: signed 0.75 vs abs 0.50 with a
    fraction of each layer's channels, 0.88 vs 0.84 with the structured plan), so ``onnxslice prune``
    asks for ``accumulate="signed"`` in structured mode.

    The profile (mean activations) comes from the first ``profile_samples`` samples of ``data``, every
    class included; the slice runs over the first ``samples`` samples whose label is a target class
    (all samples when ``data`` has no labels or the targets are not classes), seeded at the target
    classes' output neurons.

    Args:
        model: the model.
        data: a Dataset (labels pick the target-class samples), a data spec, or arrays.
        targets: classes (``[0, 1]``, ``"class:0,1"``) or any :func:`onnxslice.slice` target.
        samples: at most this many criterion samples (None: all).
        profile_samples: samples used for the profile.
        theta: NNSlicer's significance threshold.
        accumulate: ``"abs"`` (default) or ``"signed"`` (NNSlicer's rule), see :func:`onnxslice.slice`.
        **options: passed to :func:`onnxslice.slice` (``workers``, ``batch_size``, ...).

    Returns:
        The :class:`onnxslice.Slice` (its ``samples`` index into ``data``).

    Raises:
        PlanError: no sample of ``data`` has a target class.
    """
    ds = data if isinstance(data, Dataset) else load_data(data) if isinstance(data, str) else None
    prof_data = ds.subset(slice(0, profile_samples)) if ds is not None else data
    prof = profile(model, prof_data, 256, show_progress=False)
    parsed = parse_targets(targets)
    classes = [k for t in parsed if t.kind == "class" for k in t.classes]
    idx: np.ndarray | None = None
    if ds is not None and ds.labels is not None and classes and all(t.kind == "class" for t in parsed):
        idx = np.flatnonzero(np.isin(ds.labels, classes))
        if idx.size == 0:
            raise PlanError(f"no sample of '{ds.name}' has a target class ({', '.join(map(str, classes))})")
    elif ds is not None:
        idx = np.arange(len(ds))
    if idx is not None and samples is not None:
        idx = idx[:samples]
    which: Any = idx if idx is not None else (f"0:{samples}" if samples is not None else None)
    return slice_model(model, prof, ds if ds is not None else data, [str(t) for t in parsed], theta, samples=which,
                       accumulate=accumulate, **options)


def plan_pruning(
    model: Model,
    ratio: float,
    budget: str = "uniform",
    scores: Any = None,
    slice: Any = None,
    channel_score: ChannelScore = "l1",
    *,
    mode: str = "structured",
    data: Any = None,
    criterion: str = "wgrad",
    reduction: str = "linf",
    round_to: int = 1,
    round_convs_only: bool = False,
    seed: int = 0,
) -> PrunePlan:
    """Plan how much each layer (channel group) loses for a global ``ratio``.

    Args:
        model: the model to plan for.
        ratio: the planned ratio in [0, 1): see the module docstring for its exact definition.
        budget: ``"uniform"``, ``"sensitivity"`` (needs ``scores``) or ``"slice"`` (needs ``slice``).
        scores: :class:`onnxslice.LayerScores` (or a mapping layer -> score; higher = more important).
        slice: an :class:`onnxslice.Slice` (or a mapping weight name -> synapse CONTRIB array).
        channel_score: within a group, ``"l1"`` (default), ``"l2"``, ``"random"``, a callable
            ``(layer, weight) -> scores[C]``, or relevance arrays keyed by layer or weight name.
        mode: ``"structured"`` (remove channels) or ``"unstructured"`` (zero weights).
        data: calibration data for the sensitivity budget when ``scores`` is not given.
        criterion: the SAfER criterion computed on ``data`` (default ``wgrad``).
        reduction: its reduction (default ``linf``).
        round_to: structured only: every pruned group keeps a multiple of this many channels (e.g. 16,
            onnxruntime's NCHWc block on AVX-512 CPUs, so that its Conv kernels do not pad the channels
            back); groups smaller than ``round_to`` are not pruned. The achieved ratio is then only as
            close to ``ratio`` as these steps allow (``meta["achieved_ratio"]``).
        round_convs_only: round only the groups whose source layers are Convs (their cost follows
            onnxruntime's channel blocks; a Gemm's is linear in its channels).
        seed: for ``channel_score="random"``.

    Returns:
        A :class:`PrunePlan` (kind ``"prune"``); structured plans list the removed channels of each
        group, so that applying them is reproducible.

    Raises:
        PlanError: ratio outside [0, 1), unknown budget or mode, scores naming unknown layers, missing
            scores or slice, a slice of another model, or a ratio that the 0.9 per-layer clip cannot reach.
    """
    gamma = _check_ratio(ratio)
    if budget not in BUDGETS:
        raise PlanError(f"unknown budget '{budget}'; use one of {', '.join(BUDGETS)}")
    if int(round_to) < 1:
        raise PlanError(f"round_to must be a positive channel count, got {round_to}")
    if mode not in RATIO_DEFINITION:
        raise PlanError(f"unknown pruning mode '{mode}'; use 'structured' or 'unstructured'")
    if budget == "sensitivity" and scores is None and data is not None:
        scores = sensitivity_scores(model, data, criterion, reduction)
    if mode == "structured":
        return _plan_structured(model, gamma, budget, scores, slice, channel_score, seed, int(round_to),
                                round_convs_only)
    if mode == "unstructured":
        return _plan_unstructured(model, gamma, budget, scores, slice)
    raise PlanError(f"unknown pruning mode '{mode}'; use 'structured' or 'unstructured'")
