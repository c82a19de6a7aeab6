"""Latency-aware pruning: a knapsack of kept importance against measured latency (HALP, Shen et al. 2022).

Every prunable group ``g`` may keep any count ``k`` of its :class:`~onnxslice.latency.LatencyTable`
row (the full count, multiples of the kernel block, one count between blocks). Keeping ``k`` channels
costs the measured latency ratio ``r_g(k)`` and keeps the importance ``V_g(k)``: the sum of the ``k``
largest channel importances. The plan maximises ``sum_g V_g(k_g)`` subject to the predicted latency
``1 + sum_g (r_g(k_g) - 1) <= target``, exactly, by dynamic programming over the latency saving
discretised in steps of ``resolution`` (of the original latency). Counts whose measurement shows no
saving are never chosen, so on CPU the planner keeps NCHWc-friendly counts by itself.

Channel importance (globally comparable across groups, so that the knapsack can trade them):

- with per-weight relevance arrays (e.g. ``onnxslice.relevance(model, data, "wgrad")``, the first-order
  Taylor ``|w * dL/dw|`` that HALP uses), a channel's importance is its relevance summed over the
  group's source layers;
- otherwise (data-free) the group's channel scores (``l1`` by default, see
  :mod:`~onnxslice.rewrite.channel_scores`) as a share of the group's total, times the group's
  prunable parameters: keeping a group's channels is worth the parameters they carry, weighted by
  their norm. :class:`~onnxslice.LayerScores` (``scores=``) further weight each group by its layers'
  mean score over the mean of all.

:func:`prune_to_latency` closes the loop: it prunes, measures the pruned model against the original
(round-robin), and when the measurement misses the target it tightens the predicted target by the
miss and solves again (a few rounds), so that the latency reported is measured, not predicted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnxslice.console import progress
from onnxslice.errors import PlanError
from onnxslice.latency import LatencyTable, latency_table, median_ratios, random_feed, timed_sessions
from onnxslice.model import Model
from onnxslice.plans.prune_plan import MAX_LAYER_RATIO, RATIO_DEFINITION, PrunePlan
from onnxslice.record import as_feed, make_session, runtime_proto, validate_inputs
from onnxslice.rewrite.channel_scores import ChannelScore, group_scores, per_channel, select_channels
from onnxslice.rewrite.fidelity import compare_outputs
from onnxslice.rewrite.groups import ChannelGroup, GroupSet, discover_groups
from onnxslice.rewrite.prune import _apply_structured, prune

#: An off-block count must save at least this much (whole-model measurement) to be chosen.
OFF_GRID_MARGIN = 0.02

__all__ = [
    "LatencyPruneResult",
    "channel_importance",
    "damage_table",
    "plan_greedy",
    "plan_latency",
    "prune_to_latency",
]


def _out_ref(g: ChannelGroup, weight: str) -> Any:
    for name, ref in g.cuts:
        if name == weight:
            return ref
    raise PlanError(f"group '{g.leader}' has no output slice for weight '{weight}' (a bug)")


def channel_importance(model: Model, gset: GroupSet, channel_score: ChannelScore = "l1", scores: Any = None,
                       seed: int = 0) -> dict[str, np.ndarray]:
    """Globally comparable importance of every channel of every prunable group (see the module docstring)."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    layer_w: dict[str, float] = {}
    if scores is not None:
        raw = {k: float(v) for k, v in dict(getattr(scores, "scores", scores)).items()}
        vals = np.array(list(raw.values()), dtype=np.float64)
        shift = min(0.0, float(vals.min())) if vals.size else 0.0
        mean = float((vals - shift).mean()) if vals.size else 1.0
        layer_w = {k: (v - shift) / (mean or 1.0) for k, v in raw.items()}
    for g in gset.prunable:
        if isinstance(channel_score, Mapping):
            total = np.zeros(g.size)
            for name in g.layers:
                layer = model.layer(name)
                rel = channel_score.get(name, channel_score.get(layer.weight))
                if rel is None:
                    raise PlanError(f"the channel relevance has no entry for layer '{name}'")
                rel = np.asarray(rel)
                w = model.initializer(layer.weight)
                total += per_channel(rel, _out_ref(g, layer.weight), g.size) if rel.shape == w.shape else \
                    np.abs(rel.reshape(-1).astype(np.float64))
            imp = total
        else:
            s = np.abs(group_scores(model, g, channel_score, rng))
            per = gset.removed_params({g.leader: g.segments}) / g.segments
            imp = s / max(float(s.sum()), 1e-30) * per * g.size
        if layer_w:
            ws = [layer_w[n] for n in g.layers if n in layer_w]
            if ws:
                imp = imp * float(np.mean(ws))
        out[g.leader] = imp
    return out


def _output_runner(model: Model, data: Any, samples: int, batch_size: int) -> Callable[[Any], list[np.ndarray]]:
    """A function running a variant (proto) of ``model`` on the first ``samples`` of ``data``, in batches."""
    feed = validate_inputs(model, as_feed(model, data))
    feed = {k: v[:samples] for k, v in feed.items()}
    n = len(next(iter(feed.values())))

    def run(proto: Any) -> list[np.ndarray]:
        sess = make_session(runtime_proto(proto), "cpu", optimize=True)
        parts = [sess.run(model.output_names, {k: v[s : s + batch_size] for k, v in feed.items()})
                 for s in range(0, n, batch_size)]
        return [np.concatenate([p[i] for p in parts]) for i in range(len(model.output_names))]

    return run


def _damage(ref: list[np.ndarray], out: list[np.ndarray]) -> float:
    """Output damage of a variant: the mean ``KL(p_ref || p)`` when the first output is a class score, else
    the squared relative L2 error."""
    fid = compare_outputs(ref, out)
    return float(fid.kl) if fid.kl is not None else float(fid.rel_error) ** 2


def damage_table(
    model: Model,
    data: Any,
    table: LatencyTable,
    *,
    channel_score: ChannelScore = "l1",
    samples: int = 64,
    batch_size: int = 32,
    seed: int = 0,
    show_progress: bool | None = None,
) -> dict[str, dict[int, float]]:
    """Measured damage of every candidate count: the model with only that group cut, on ``data``.

    For every group and every count of its latency-table row, the channels ``channel_score`` ranks
    lowest go (as the plan will remove them) and the output error against the original is measured
    on the first ``samples`` samples: the mean ``KL(p_ref || p)`` when the first output is a class
    score (2-D), else the squared relative L2 error. The knapsack then minimises the summed damage.
    """
    run = _output_runner(model, data, samples, batch_size)

    gset = discover_groups(model)
    rng = np.random.default_rng(seed)
    ref = run(model.proto)
    out: dict[str, dict[int, float]] = {}
    groups = [g for g in gset.prunable if g.leader in table.groups]
    for g in progress(groups, len(groups), "damage table", show_progress):
        scores = group_scores(model, g, channel_score, rng)
        row = {g.size: 0.0}
        for k in table.groups[g.leader]:
            if k >= g.size or (g.size - k) % g.segments or g.size - k > g.max_removable():
                continue
            chans = select_channels(scores, g.size - k, g.segments)
            row[k] = _damage(ref, run(_apply_structured(model, {g.leader: chans}, gset)))
        out[g.leader] = row
    return out


def plan_greedy(
    model: Model,
    target: float,
    table: LatencyTable,
    data: Any,
    *,
    channel_score: ChannelScore = "l1",
    samples: int = 64,
    batch_size: int = 32,
    seed: int = 0,
    show_progress: bool | None = None,
) -> PrunePlan:
    """Latency-aware plan by greedy removal with re-measured damage (interactions included).

    Starting from the whole model, every step tries, for every group, its next smaller kernel-aligned count
    of the latency table *on top of the cuts already made*, measures the model's output damage on ``data``
    (mean KL to the original, as :func:`damage_table`), and takes the step with the least added damage per
    unit of predicted latency saved; until the predicted latency is at most ``target``; then, while it
    lowers the damage and stays within the target, it gives one step back to a group (the last step may
    overshoot the target by a large step). Unlike the knapsack
    over single-group damages, each choice sees how earlier cuts interact with it. Cost: one forward pass
    over ``samples`` samples per group and step.

    Raises:
        PlanError: a target outside (0, 1], a table of another model, or a target no step sequence reaches.
    """
    t = float(target)
    if not (0.0 < t <= 1.0) or math.isnan(t):
        raise PlanError(f"the latency target is {target}; give a fraction of the original latency in (0, 1]")
    if table.fingerprint != model.fingerprint:
        raise PlanError("the latency table was measured on another model; measure this model")
    run = _output_runner(model, data, samples, batch_size)

    gset = discover_groups(model)
    rng = np.random.default_rng(seed)
    groups = [g for g in gset.prunable if g.leader in table.groups]
    scores = {g.leader: group_scores(model, g, channel_score, rng) for g in groups}
    ladder = {g.leader: sorted({k for k, _, _ in _options(g, table.groups[g.leader], scores[g.leader], table.block)},
                               reverse=True) for g in groups}
    ref = run(model.proto)
    kept = {g.leader: g.size for g in groups}

    def chosen(counts: Mapping[str, int]) -> dict[str, np.ndarray]:
        return {g.leader: select_channels(scores[g.leader], g.size - counts[g.leader], g.segments) for g in groups
                if counts[g.leader] < g.size}

    def damage(counts: Mapping[str, int]) -> float:
        return _damage(ref, run(_apply_structured(model, chosen(counts), gset)))

    current, steps = 0.0, []
    bar = iter(progress(range(10**6), None, "greedy latency plan", show_progress))
    while table.predict(kept) > t + 1e-12:
        best: tuple[float, str, int, float] | None = None
        for g in groups:
            lower = [k for k in ladder[g.leader] if k < kept[g.leader]]
            if not lower:
                continue
            trial = {**kept, g.leader: lower[0]}
            saved = table.predict(kept) - table.predict(trial)
            if saved <= 0:
                continue
            d = damage(trial)
            cost = (d - current) / saved
            if best is None or cost < best[0]:
                best = (cost, g.leader, lower[0], d)
        next(bar, None)
        if best is None:
            raise PlanError(f"latency target {t:g} cannot be reached with the measured channel counts (greedy stopped "
                            f"at {table.predict(kept):.3f}); choose a larger target")
        _, leader, k, current = best
        kept[leader] = k
        steps.append({"group": leader, "kept": k, "damage": round(current, 6),
                      "predicted": round(table.predict(kept), 5)})
    while True:  # the last step may overshoot: give back the channels whose return hurts the damage most
        back: tuple[float, str, int] | None = None
        for g in groups:
            higher = [k for k in ladder[g.leader] if k > kept[g.leader]]
            if not higher:
                continue
            trial = {**kept, g.leader: higher[-1]}
            if table.predict(trial) > t + 1e-12:
                continue
            d = damage(trial)
            if d < current and (back is None or d < back[0]):
                back = (d, g.leader, higher[-1])
        if back is None:
            break
        current, leader, k = back
        kept[leader] = k
        steps.append({"group": leader, "kept": k, "damage": round(current, 6),
                      "predicted": round(table.predict(kept), 5), "back": True})
    layers: dict[str, Any] = {}
    for g in groups:
        chans = select_channels(scores[g.leader], g.size - kept[g.leader], g.segments)
        layers[g.leader] = {"ratio": round(chans.size / g.size, 6), "remove": chans.tolist(), "layers": g.layers}
    removed = gset.removed_params({g.leader: g.size - kept[g.leader] for g in groups})
    prunable = gset.prunable_params()
    meta = {
        "mode": "structured", "ratio_definition": RATIO_DEFINITION["structured"], "latency_target": t,
        "predicted_latency": round(table.predict(kept), 5), "kept_channels": kept, "prunable_params": prunable,
        "removed_params": removed, "achieved_ratio": removed / prunable if prunable else 0.0,
        "channel_score": channel_score if isinstance(channel_score, str) else "custom",
        "importance": "greedy, re-measured damage", "steps": steps, "damage": round(current, 6),
        "latency_table": {"device": table.device, "batch": table.batch, "threads": table.threads,
                          "block": table.block, "base_ms": table.base_ms},
        "left_alone": gset.skipped, "seed": seed,
    }
    return PrunePlan("prune", layers, "latency", meta)


def _options(g: ChannelGroup, row: Mapping[int, float], imp: np.ndarray, block: int,
             damage: Mapping[int, float] | None = None, off_grid: bool = False) -> list[tuple[int, float, float]]:
    """(kept, saving, value) of every allowed count, the full count first.

    The value is the kept importance (sum of the ``k`` largest), or minus the measured damage. Counts
    off the kernel block are allowed only with ``off_grid`` (or in a group no larger than one block, which
    no count aligns) and where the whole model measured a clear saving (2%): on a loaded machine single
    whole-model measurements are too noisy to trust, and onnxruntime's layout changes around an
    off-block count reach beyond the group.
    """
    order = np.sort(imp)[::-1]
    cum = np.concatenate([[0.0], np.cumsum(order)])
    floor = max(g.segments, math.ceil((1 - MAX_LAYER_RATIO) * g.size))

    def value(k: int) -> float:
        return -float(damage[k]) if damage is not None else float(cum[k])

    opts = [(g.size, 0.0, value(g.size) if damage is None else 0.0)]
    for k, r in row.items():
        if k >= g.size or k < floor or (g.size - k) % g.segments:
            continue
        if damage is not None and k not in damage:
            continue
        if k % block and not off_grid and g.size > block:  # a group within one block is never aligned anyway
            continue
        if 1.0 - r > (0 if k % block == 0 else OFF_GRID_MARGIN):
            opts.append((int(k), 1.0 - float(r), value(int(k))))
    return opts


def _step(x: float, resolution: float, nearest: bool) -> int:
    return round(x / resolution) if nearest else math.floor(x / resolution + 1e-9)


def _knapsack(options: list[list[tuple[int, float, float]]], units: int, resolution: float,
              nearest: bool = False) -> list[int] | None:
    """Option index per group maximising total importance with total saving >= ``units * resolution``.

    Exact dynamic programme over the saving in ``resolution`` steps (savings beyond the need count as
    the need); the tables are small (groups x (units + 1)). None when no choice reaches the need.
    """
    neg = -np.inf
    tables = [np.full(units + 1, neg)]
    tables[0][0] = 0.0
    steps = [[_step(s, resolution, nearest) for _, s, _ in opts] for opts in options]
    idx = np.arange(units + 1)
    for opts, st in zip(options, steps, strict=True):
        prev = tables[-1]
        new = np.full(units + 1, neg)
        for (_, _, value), s in zip(opts, st, strict=True):
            cand = np.full(units + 1, neg)
            np.maximum.at(cand, np.minimum(idx + s, units), prev + value)
            new = np.maximum(new, cand)
        tables.append(new)
    if not np.isfinite(tables[-1][units]):
        return None
    picks: list[int] = []
    j = units
    for gi in range(len(options) - 1, -1, -1):
        prev, cur = tables[gi], tables[gi + 1]
        found = False
        for i, ((_, _, value), s) in enumerate(zip(options[gi], steps[gi], strict=True)):
            srcs = [j - s] if j < units else list(range(max(0, units - s), units + 1))
            for src in srcs:
                if 0 <= src <= units and np.isfinite(prev[src]) and math.isclose(prev[src] + value, cur[j],
                                                                                   rel_tol=1e-12, abs_tol=1e-12):
                    picks.append(i)
                    j = src
                    found = True
                    break
            if found:
                break
        if not found:  # numerically impossible; be safe
            return None
    return picks[::-1]


def _shift(a: np.ndarray, s: int, axis: int) -> np.ndarray:
    """``a`` moved ``s`` steps up ``axis``, saturating at the last index (the max of what lands there)."""
    if s <= 0:
        return a.copy()
    n = a.shape[axis]
    out = np.full_like(a, -np.inf)
    a0 = np.moveaxis(a, axis, 0)
    o0 = np.moveaxis(out, axis, 0)
    if n - 1 - s > 0:
        o0[s : n - 1] = a0[: n - 1 - s]
    o0[n - 1] = a0[max(0, n - 1 - s) :].max(axis=0)
    return out


def _knapsack2(options: list[list[tuple[int, float, float, float]]], lat_units: int, lat_res: float,
               par_units: int, par_res: float, nearest: bool = False) -> list[int] | None:
    """Option index per group maximising the value with saving >= ``lat_units`` steps AND removed
    parameters >= ``par_units`` steps (both saturating); options are (kept, saving, value, removed share).

    Exact dynamic programme over the 2-D grid; None when no choice reaches both needs.
    """
    tables = [np.full((lat_units + 1, par_units + 1), -np.inf)]
    tables[0][0, 0] = 0.0
    steps = [[(_step(s, lat_res, nearest), _step(p, par_res, nearest)) for _, s, _, p in o] for o in options]
    for opts, st in zip(options, steps, strict=True):
        prev = tables[-1]
        new = np.full_like(prev, -np.inf)
        for (_, _, value, _), (sl, sp) in zip(opts, st, strict=True):
            new = np.maximum(new, _shift(_shift(prev, sl, 0), sp, 1) + value)
        tables.append(new)
    if not np.isfinite(tables[-1][lat_units, par_units]):
        return None
    picks: list[int] = []
    i, j = lat_units, par_units
    for gi in range(len(options) - 1, -1, -1):
        prev, cur = tables[gi], tables[gi + 1]
        found = False
        for oi, ((_, _, value, _), (sl, sp)) in enumerate(zip(options[gi], steps[gi], strict=True)):
            src_i = [i - sl] if i < lat_units else list(range(max(0, lat_units - sl), lat_units + 1))
            src_j = [j - sp] if j < par_units else list(range(max(0, par_units - sp), par_units + 1))
            for a in src_i:
                for b in src_j:
                    if 0 <= a <= lat_units and 0 <= b <= par_units and np.isfinite(prev[a, b]) and math.isclose(
                            prev[a, b] + value, cur[i, j], rel_tol=1e-12, abs_tol=1e-12):
                        picks.append(oi)
                        i, j = a, b
                        found = True
                        break
                if found:
                    break
            if found:
                break
        if not found:  # numerically impossible; be safe
            return None
    return picks[::-1]


def _relaxed(need: float, resolution: float, groups: int) -> int:
    """Grid steps low enough that every plan whose exact saving meets ``need`` meets them after rounding each
    group's saving to the nearest step (each rounding loses at most half a step); the planners then raise
    the steps until the optimum's exact saving meets the need, so the first exact plan is the best one."""
    return max(0, math.floor((need - groups * resolution / 2) / resolution - 1e-9)) if need > 0 else 0


def _plan_both(gset: GroupSet, groups: list[ChannelGroup], options: list[list[tuple[int, float, float]]], units: int,
               resolution: float, ratio: float, prunable: int, need: float,
               par_res: float = 0.005) -> dict[str, int] | None:
    """Kept counts meeting the latency need and removing >= ``ratio`` of the prunable parameters (exactly).

    The knapsack adds each group's removed parameters, which overcounts a layer that loses input and
    output channels (removed once, counted twice); when the exact count falls short the need is raised
    by the shortfall and the problem solved again. Steps are rounded to the nearest grid point and the
    exact latency saving checked too (rounding every group's saving down would make a plan exactly at
    the target infeasible).
    """
    share = [[gset.removed_params({g.leader: g.size - k}) / max(prunable, 1) for k, _, _ in o]
             for g, o in zip(groups, options, strict=True)]
    opts2 = [[(k, s, v, p) for (k, s, v), p in zip(o, sh, strict=True)] for o, sh in zip(options, share, strict=True)]
    want, lat_units = ratio, units
    for _ in range(40):
        picks = _knapsack2(opts2, lat_units, resolution, max(0, math.ceil(want / par_res - 1e-9)), par_res,
                           nearest=True)
        if picks is None:
            return None
        kept = {g.leader: options[i][p][0] for i, (g, p) in enumerate(zip(groups, picks, strict=True))}
        exact = gset.removed_params({g.leader: g.size - kept[g.leader] for g in groups}) / max(prunable, 1)
        saving = sum(o[p][1] for o, p in zip(options, picks, strict=True))
        if exact >= ratio - 1e-9 and saving >= need - 1e-9:
            return kept
        if exact < ratio - 1e-9:
            want += ratio - exact + par_res / 2
        if saving < need - 1e-9:
            lat_units += 1
    return None


def plan_latency(
    model: Model,
    target: float,
    table: LatencyTable | None = None,
    *,
    channel_score: ChannelScore = "l1",
    scores: Any = None,
    damage: Mapping[str, Mapping[int, float]] | None = None,
    off_grid: bool = False,
    resolution: float = 0.002,
    min_ratio: float | None = None,
    seed: int = 0,
    **table_options: Any,
) -> PrunePlan:
    """Plan structured pruning whose predicted latency is at most ``target`` of the original's.

    Args:
        model: the model.
        target: latency budget as a fraction of the original's measured latency, in (0, 1].
        table: the measured :class:`LatencyTable` (measured here, or read from the cache, when None).
        channel_score: ``l1``/``l2``/``random``/a callable, or per-weight relevance arrays (HALP's Taylor).
        scores: optional :class:`onnxslice.LayerScores` weighting each group by its layers' importance.
        damage: measured damage per group and count (:func:`damage_table`, computed with the same
            ``channel_score`` and ``seed``): the knapsack then minimises the summed damage.
        off_grid: also allow counts off the kernel block (default: only multiples of the block, or
            the whole group).
        resolution: latency step of the dynamic programme (fraction of the original latency).
        min_ratio: also remove at least this fraction of the prunable parameters (a second knapsack
            constraint: the plan then chooses *where* the parameters go so that latency falls most for
            the least damage); target 1.0 with ``min_ratio`` asks for the ratio alone.
        seed: for ``channel_score="random"``.
        **table_options: passed to :func:`onnxslice.latency.latency_table` when ``table`` is None.

    Returns:
        A structured :class:`PrunePlan`; ``meta`` holds the target, the predicted latency ratio, the
        achieved parameter ratio and the table's provenance.

    Raises:
        PlanError: a target outside (0, 1], a table of another model, or a target the measured
            candidate counts cannot reach.
    """
    t = float(target)
    if not (0.0 < t <= 1.0) or math.isnan(t):
        raise PlanError(f"the latency target is {target}; give a fraction of the original latency in (0, 1]")
    if table is None:
        table = latency_table(model, **table_options)
    if table.fingerprint != model.fingerprint:
        raise PlanError(f"the latency table was measured on another model (fingerprint {table.fingerprint}, this "
                        f"model's is {model.fingerprint}); measure this model")
    gset = discover_groups(model)
    groups = [g for g in gset.prunable if g.leader in table.groups]
    if damage is not None:
        rng = np.random.default_rng(seed)
        imp = {g.leader: group_scores(model, g, channel_score, rng) for g in gset.prunable}
    else:
        imp = channel_importance(model, gset, channel_score, scores, seed)
    options = [_options(g, table.groups[g.leader], imp[g.leader], table.block,
                        None if damage is None else damage.get(g.leader, {}), off_grid) for g in groups]
    need = 1.0 - t
    units = max(0, math.ceil(need / resolution - 1e-9))
    most = sum(max(s for _, s, _ in o) for o in options)
    prunable = gset.prunable_params()
    if min_ratio is not None:
        r = float(min_ratio)
        if not (0.0 <= r < 1.0) or math.isnan(r):
            raise PlanError(f"the parameter ratio is {min_ratio}; it must be in [0, 1)")
        kept = _plan_both(gset, groups, options, _relaxed(need, resolution, len(groups)), resolution, r, prunable,
                          need)
        if kept is None:
            raise PlanError(f"no plan of the measured channel counts removes {r:g} of the prunable parameters within "
                            f"latency {t:g} (keeping >= {1 - MAX_LAYER_RATIO:g} of each group); relax --ratio or "
                            "--latency")
    else:
        picks: list[int] | None = [0] * len(groups)
        units = _relaxed(need, resolution, len(groups))
        while need > 0:  # nearest-step savings, checked exactly (a plan exactly at the target stays feasible)
            picks = _knapsack(options, units, resolution, nearest=True)
            if picks is None or sum(o[p][1] for o, p in zip(options, picks, strict=True)) >= need - 1e-9:
                break
            units += 1
        if picks is None:
            raise PlanError(f"latency target {t:g} cannot be reached with the measured channel counts: at most "
                            f"{1 - most:.3f} of the original latency is predicted (keeping >= "
                            f"{1 - MAX_LAYER_RATIO:g} of each group); choose a larger target")
        kept = {g.leader: options[i][p][0] for i, (g, p) in enumerate(zip(groups, picks, strict=True))}
    layers: dict[str, Any] = {}
    for g in groups:
        k = g.size - kept[g.leader]
        chans = select_channels(imp[g.leader], k, g.segments)
        layers[g.leader] = {"ratio": round(chans.size / g.size, 6), "remove": chans.tolist(), "layers": g.layers}
    removed = gset.removed_params({g.leader: g.size - kept[g.leader] for g in groups})
    meta = {
        "mode": "structured",
        "ratio_definition": RATIO_DEFINITION["structured"],
        "latency_target": t,
        "min_ratio": min_ratio,
        "predicted_latency": round(table.predict(kept), 5),
        "kept_channels": kept,
        "prunable_params": prunable,
        "removed_params": removed,
        "achieved_ratio": removed / prunable if prunable else 0.0,
        "channel_score": channel_score if isinstance(channel_score, str) else "relevance" if
        isinstance(channel_score, Mapping) else "custom",
        "criterion": getattr(scores, "criterion", None),
        "importance": "measured damage" if damage is not None else "channel importance",
        "latency_table": {"device": table.device, "batch": table.batch, "threads": table.threads,
                          "block": table.block, "base_ms": table.base_ms},
        "left_alone": gset.skipped,
        "seed": seed,
    }
    return PrunePlan("prune", layers, "latency", meta)


@dataclass
class LatencyPruneResult:
    """A latency-aware pruning, checked by measurement.

    Attributes:
        plan: the plan finally applied.
        model: the pruned model.
        measured: measured latency ratio (pruned / original, median per-repeat ratio, round-robin).
        rounds: per round: the predicted target solved for, the prediction and the measurement.
        met: whether the measured ratio is within ``tolerance`` of the target.
    """

    plan: PrunePlan
    model: Model
    measured: float
    rounds: list[dict[str, float]] = field(default_factory=list)
    met: bool = True


def prune_to_latency(
    model: Model,
    target: float,
    table: LatencyTable | None = None,
    *,
    channel_score: ChannelScore = "l1",
    scores: Any = None,
    damage: Mapping[str, Mapping[int, float]] | None = None,
    min_ratio: float | None = None,
    rounds: int = 3,
    repeats: int = 30,
    tolerance: float = 0.02,
    feed: Mapping[str, np.ndarray] | None = None,
    planner: Callable[[float], PrunePlan] | None = None,
    **table_options: Any,
) -> LatencyPruneResult:
    """Plan with :func:`plan_latency`, prune, measure; tighten and re-solve while the measurement misses.

    Args:
        model: the model.
        target: latency budget (fraction of the original's measured latency).
        table: the latency table (measured or read from the cache when None).
        channel_score: channel importance (see :func:`plan_latency`).
        scores: optional layer scores.
        damage: optional measured damage table (:func:`damage_table`).
        min_ratio: also remove at least this fraction of the prunable parameters (see :func:`plan_latency`).
        rounds: at most this many plan-prune-measure rounds.
        repeats: round-robin repeats of each check.
        tolerance: a measurement within ``target + tolerance`` counts as met (timing noise).
        feed: inputs to time with (default: random at the table's batch).
        planner: plans for a (tightened) latency target in place of :func:`plan_latency`, e.g. a
            :func:`plan_greedy` bound to the data; ``channel_score``, ``scores``, ``damage`` and ``min_ratio``
            are then the planner's business.
        **table_options: passed to :func:`onnxslice.latency.latency_table`.

    Returns:
        The best round: the most important plan among those measured within the target, else the fastest.
    """
    if table is None:
        table = latency_table(model, **table_options)
    x = dict(feed) if feed is not None else random_feed(model, table.batch)
    goal = float(target)
    history: list[dict[str, float]] = []
    tried: list[tuple[PrunePlan, Model, float]] = []
    for _ in range(max(1, rounds)):
        try:
            plan = planner(min(goal, 1.0)) if planner is not None else plan_latency(
                model, min(goal, 1.0), table, channel_score=channel_score, scores=scores, damage=damage,
                min_ratio=min_ratio)
        except PlanError:
            if tried:
                break
            raise
        pruned = prune(model, plan)
        sessions = timed_sessions([model.proto, pruned.proto], table.device, table.threads)
        measured = median_ratios(sessions, x, repeats)[1][1]
        history.append({"solved_for": round(goal, 5), "predicted": plan.meta["predicted_latency"],
                        "measured": round(measured, 5)})
        tried.append((plan, pruned, measured))
        if measured <= target + tolerance:
            break
        goal = goal - (measured - target)
        if goal <= 0:
            break
    ok = [t for t in tried if t[2] <= target + tolerance]
    plan, pruned, measured = ok[0] if ok else min(tried, key=lambda t: t[2])
    plan.meta["solved_for"] = plan.meta["latency_target"]  # a later round solves for a tightened target
    plan.meta["latency_target"] = float(target)  # what the user asked for, whichever round was kept
    plan.meta["measured_latency"] = round(measured, 5)
    plan.meta["rounds"] = history
    return LatencyPruneResult(plan, pruned, measured, history, bool(ok))
