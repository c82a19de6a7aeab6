"""The SAfER benchmark's departures from the paper, decided by experiment (issue 18).

Our moons benchmark (:mod:`onnxslice.sensitivity.benchmark`) makes four choices the paper leaves open or
states differently. Each is a *variant* here, measured on the same models and cases as the others:

- ``layers``: which layers are ranked: ``all`` weight layers (stem/embedding and head included, our
  default) or the sampled ``blocks`` only (the layers whose count and width the architecture sampler
  drew: ``hidden.*`` of vanilla nets, ``blocks.*`` of the others);
- ``magnitudes``: three perturbation strengths (0.1, 0.3, 0.5, our default) or the paper's full range
  ("between 0 and 100%", "sigma in ]0, max|w|]"): ten values 0.1, 0.2, ..., 1.0;
- ``sign``: the reduction psi over ``|phi|`` (our default) or over the signed relevance;
- ``gradients``: ``grad``/``wgrad`` from the batch gradient ``E_x[df/dw]`` (SAfER eqs. 5-6 as written,
  our default) or from per-sample gradients ``E_x[|df/dw|]`` / ``E_x[|w df/dw|]``.

Since a layer's ground truth does not depend on which other layers are ranked (each layer is perturbed
alone), one pass per model measures everything: the relevance of every criterion once, the ground
truth of every (perturbation, magnitude) of the full range once, and the variants are subsets and
re-reductions of those scores. :func:`evaluate_variants` stores layer scores (not agreements), so the
tables can be recomputed from a cache; :func:`variant_tables` compares the variants with 95% Wilson
intervals, a paired exact McNemar test where the cases pair up, and their distance to the paper's
Table 1.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from onnxslice.errors import UnsupportedOpError
from onnxslice.model import load
from onnxslice.sensitivity.agreement import agreement
from onnxslice.sensitivity.benchmark import SAFER_TABLE1, _pct, block_layers, family_of, settings_for, tables, wilson
from onnxslice.sensitivity.context import Context
from onnxslice.sensitivity.criteria import get_criterion
from onnxslice.sensitivity.groundtruth import perturbation_importances
from onnxslice.sensitivity.reductions import REDUCTIONS, check_name, reduce

__all__ = [
    "FULL_MAGNITUDES",
    "PER_SAMPLE",
    "THREE_MAGNITUDES",
    "block_layers",
    "evaluate_variants",
    "mcnemar",
    "per_sample_relevance",
    "reduce_signed",
    "variant_cases",
    "variant_tables",
]

#: the paper's range of perturbation strengths, sampled every 10%
FULL_MAGNITUDES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
#: our default three strengths
THREE_MAGNITUDES = (0.1, 0.3, 0.5)
#: per-sample counterparts of the batch-gradient criteria: name -> (base criterion, times weight)
PER_SAMPLE = {"grad": ("grad|ps", False), "wgrad": ("wgrad|ps", True)}


def reduce_signed(relevance: np.ndarray, name: str = "linf", percentile: float = 90.0) -> float:
    """The reduction ``name`` of the *signed* relevance (NaN as 0): the variant of
    :func:`~onnxslice.sensitivity.reductions.reduce`, which reduces ``|relevance|``."""
    fn = REDUCTIONS[check_name("reduction", name, list(REDUCTIONS))]
    a = np.nan_to_num(np.asarray(relevance, dtype=np.float64), nan=0.0)
    if a.size == 0:
        raise ValueError("cannot reduce an empty relevance array")
    return fn(a.ravel(), percentile)


def per_sample_relevance(ctx: Any, times_weight: bool = False, chunk: int = 32) -> dict[str, np.ndarray]:
    """``E_x[|df/dw|]`` (or ``E_x[|w df/dw|]``) per layer from per-sample gradients of ``ctx``."""
    cal = ctx.need_data("per-sample gradients")
    total: dict[str, np.ndarray] = {}
    for _, g in ctx.grad_chunks(None, per_sample=True, chunk=chunk):
        for x in ctx.layers:
            r = np.abs(np.asarray(g.weights[x.weight], np.float64))
            if times_weight:
                r = r * np.abs(np.asarray(ctx.model.initializer(x.weight), np.float64))[None]
            s = r.sum(axis=0)
            total[x.name] = total[x.name] + s if x.name in total else s
    return {k: v / len(cal) for k, v in total.items()}


def evaluate_variants(
    path: str,
    criteria: Sequence[str],
    magnitudes: Sequence[float] = FULL_MAGNITUDES,
    draws: int = 32,
    samples: int = 256,
    steps: int = 16,
    noise_samples: int = 16,
    seed: int = 0,
) -> dict[str, Any]:
    """Layer scores of one moons model for every variant: ``{"model", "family", "layers", "criteria":
    {criterion: {"abs"|"signed": {reduction: scores}}}, "truth": [{noise, on, magnitude, scores}],
    "seconds", "errors"}``."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("ONNXSLICE_THREADS", "1")
    model = load(path)
    family = family_of(path)
    ctx = Context.build(model, "builtin:moons?split=train", "pred", samples=samples, steps=steps,
                        noise_samples=noise_samples, seed=seed, batch_size=None)
    rels: dict[str, dict[str, np.ndarray]] = {}
    seconds: dict[str, float] = {}
    errors: dict[str, str] = {}
    for name in criteria:
        t0 = time.perf_counter()
        try:
            rels[name] = get_criterion(name).relevance(ctx)
        except (UnsupportedOpError, ValueError, RuntimeError) as e:
            errors[name] = f"{type(e).__name__}: {e}"
            continue
        seconds[name] = time.perf_counter() - t0
        if name in PER_SAMPLE:
            ps, times_w = PER_SAMPLE[name]
            t0 = time.perf_counter()
            rels[ps] = per_sample_relevance(ctx, times_w)
            seconds[ps] = time.perf_counter() - t0
    scores = {
        name: {
            "abs": {red: {x.name: reduce(rel[x.name], red) for x in ctx.layers} for red in REDUCTIONS},
            "signed": {red: {x.name: reduce_signed(rel[x.name], red) for x in ctx.layers} for red in REDUCTIONS},
        }
        for name, rel in rels.items()
    }
    truth = []
    sessions: dict[Any, Any] = {}
    t0 = time.perf_counter()
    for noise, on in settings_for(family):
        # every draw made once, applied at each magnitude (the same numbers as one call per magnitude)
        gts = perturbation_importances(model, "builtin:moons?split=test", noise, on, magnitudes, draws,
                                       samples=None, batch_size=None, seed=seed, sessions=sessions)
        for mag, gt in zip(magnitudes, gts, strict=True):
            truth.append({"noise": noise, "on": on, "magnitude": mag, "scores": gt.scores})
    seconds["groundtruth"] = time.perf_counter() - t0
    return {"model": Path(path).name, "family": family, "layers": [x.name for x in ctx.layers],
            "criteria": scores, "truth": truth, "seconds": seconds, "errors": errors}


def _subset(scores: dict[str, float], keep: list[str]) -> dict[str, float]:
    return {k: scores[k] for k in keep}


def variant_cases(result: dict[str, Any], variant: dict[str, str]) -> list[dict[str, Any]]:
    """The cases of one model under one variant: ``{"family", "noise", "on", "magnitude", "criterion",
    "reduction", "exact", "spearman", "kendall"}`` (criteria named as in the paper: ``grad|ps`` counts
    as ``grad`` under ``gradients=per-sample``; models with fewer than 2 ranked layers give none)."""
    layers = result["layers"] if variant["layers"] == "all" else block_layers(result["layers"])
    if len(layers) < 2:
        return []
    mags = FULL_MAGNITUDES if variant["magnitudes"] == "full" else THREE_MAGNITUDES
    crits = dict(result["criteria"])
    if variant["gradients"] == "per-sample":
        for base, (ps, _) in PER_SAMPLE.items():
            if ps in crits:
                crits[base] = crits[ps]
    cases = []
    for t in result["truth"]:
        if not any(abs(t["magnitude"] - m) < 1e-9 for m in mags):
            continue
        truth = _subset(t["scores"], layers)
        for name, by_sign in crits.items():
            if "|" in name:
                continue
            for red, sc in by_sign[variant["sign"]].items():
                agr = agreement(_subset(sc, layers), truth)
                cases.append({"family": result["family"], "model": result["model"], "noise": t["noise"],
                              "on": t["on"], "magnitude": t["magnitude"], "criterion": name, "reduction": red,
                              "exact": agr["exact"], "spearman": agr["spearman"], "kendall": agr["kendall"],
                              "top1": agr["top1"], "ranked": len(layers)})
    return cases


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> dict[str, float]:
    """Exact two-sided McNemar test of paired successes: ``{"a_only", "b_only", "p"}``."""
    from scipy.stats import binomtest

    x = np.asarray(a, bool)
    y = np.asarray(b, bool)
    a_only, b_only = int((x & ~y).sum()), int((~x & y).sum())
    n = a_only + b_only
    p = float(binomtest(a_only, n, 0.5).pvalue) if n else 1.0
    return {"a_only": a_only, "b_only": b_only, "p": p}


#: the baseline (our defaults) and the one-factor departures compared with it
VARIANTS: dict[str, dict[str, str]] = {
    "baseline": {"layers": "all", "magnitudes": "three", "sign": "abs", "gradients": "batch"},
    "layers=blocks": {"layers": "blocks", "magnitudes": "three", "sign": "abs", "gradients": "batch"},
    "magnitudes=full": {"layers": "all", "magnitudes": "full", "sign": "abs", "gradients": "batch"},
    "sign=signed": {"layers": "all", "magnitudes": "three", "sign": "signed", "gradients": "batch"},
    "gradients=per-sample": {"layers": "all", "magnitudes": "three", "sign": "abs", "gradients": "per-sample"},
}


def _key(c: dict[str, Any]) -> tuple[Any, ...]:
    return (c["model"], c["noise"], c["on"], c["magnitude"], c["criterion"], c["reduction"])


def _findings(cases: list[dict[str, Any]], crits: list[str]) -> dict[str, Any]:
    """The paper's qualitative findings measured on ``cases`` (linf unless stated), with 95% intervals."""
    def pct(sel: list[dict[str, Any]]) -> dict[str, Any]:
        k, n = int(sum(c["exact"] for c in sel)), len(sel)
        lo, hi = wilson(k, n)
        return {"exact %": 100.0 * k / n if n else float("nan"), "ci": [lo, hi], "n": n}

    linf = [c for c in cases if c["reduction"] == "linf"]
    gfam = ("grad", "wgrad", "gradcampp", "idgi")
    out: dict[str, Any] = {}
    van = [c for c in linf if c["family"] == "vanilla"]
    out["vanilla: gradient family (grad, wgrad, gradcampp, idgi) vs the others"] = {
        "gradient family": pct([c for c in van if c["criterion"] in gfam]),
        "others": pct([c for c in van if c["criterion"] not in gfam and c["criterion"] in crits]),
    }
    skip = [c for c in linf if c["family"] in ("skip", "skip+sd")]
    out["skip nets: exact % per criterion"] = {cr: pct([c for c in skip if c["criterion"] == cr]) for cr in crits}
    out["reductions: exact % over all criteria"] = {
        red: pct([c for c in cases if c["reduction"] == red]) for red in REDUCTIONS}
    return out


def variant_tables(results: list[dict[str, Any]], criteria: Sequence[str]) -> dict[str, Any]:
    """Per variant: exact % (linf) per criterion with 95% intervals, Table 2, the paper's findings, the
    mean absolute distance to the paper's Table 1 cells, and a paired McNemar test against the baseline."""
    crits = [c for c in criteria if "|" not in c]
    base_cases = [c for r in results for c in variant_cases(r, VARIANTS["baseline"])]
    base_idx = {_key(c): c["exact"] for c in base_cases}
    out: dict[str, Any] = {}
    for name, var in VARIANTS.items():
        cases = [c for r in results for c in variant_cases(r, var)]
        by_model: dict[str, dict[str, Any]] = {}
        for c in cases:
            by_model.setdefault(c["model"], {"family": c["family"], "cases": []})["cases"].append(c)
        tabs = tables(list(by_model.values()), crits)
        dist = []
        for row in tabs["table1"][:-1]:
            paper = SAFER_TABLE1.get((row["family"], row["perturbation"]), {})
            dist += [abs(row[cr] - paper[cr]) for cr in crits if cr in paper and row.get(cr) == row.get(cr)]
        per_crit = {}
        for cr in crits:
            sel = [c["exact"] for c in cases if c["criterion"] == cr and c["reduction"] == "linf"]
            lo, hi = wilson(int(sum(sel)), len(sel))
            per_crit[cr] = {"exact %": _pct(sel), "ci": [lo, hi], "n": len(sel),
                            "spearman": float(np.nanmean([c["spearman"] for c in cases
                                                          if c["criterion"] == cr and c["reduction"] == "linf"]))
                            if sel else float("nan")}
        linf = [c["exact"] for c in cases if c["reduction"] == "linf"]
        lo, hi = wilson(int(sum(linf)), len(linf))
        # a random order of L layers is exact with probability 1 / L!: fewer ranked layers, easier by chance
        chance = [1.0 / math.factorial(c["ranked"]) for c in cases if c["reduction"] == "linf"]
        entry: dict[str, Any] = {
            "settings": var, "cases": len(cases), "exact % (linf, all criteria)": _pct(linf), "ci": [lo, hi],
            "chance % (random order)": 100.0 * float(np.mean(chance)) if chance else float("nan"),
            "distance to paper (mean |ours - paper| over Table 1 cells, points)": float(np.mean(dist)) if dist
            else float("nan"),
            "per criterion": per_crit, "table1": tabs["table1"], "table2": tabs["table2"],
            "findings": _findings(cases, crits),
        }
        paired = [(base_idx[_key(c)], c["exact"]) for c in cases if c["reduction"] == "linf" and _key(c) in base_idx]
        if name != "baseline" and paired and var["magnitudes"] == "three":
            entry["vs baseline (paired, linf)"] = mcnemar([p[1] for p in paired], [p[0] for p in paired])
            every = [(base_idx[_key(c)], c["exact"]) for c in cases if _key(c) in base_idx]
            entry["vs baseline (paired, every reduction)"] = mcnemar([p[1] for p in every], [p[0] for p in every])
        out[name] = entry
    return out
