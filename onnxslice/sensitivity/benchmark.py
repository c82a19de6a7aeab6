"""The SAfER synthetic benchmark (section 3.1): criteria against ground truths on the moons families.

For every model: each available criterion's relevance is computed once on a calibration set (256
training points of ``builtin:moons``), reduced with all five reductions, and compared with the
perturbation ground truth measured on the test split for every setting of SAfER's Table 1 (U, N, D
on weights for every family, and on activations for ``vanilla``) at several magnitudes. Each
(model, noise, target, magnitude) is one case. Models run in parallel (one process per model; each
model has its own seeds, so the results do not depend on the number of workers).

The ground truth is itself an estimate: ``draws`` (default 32) perturbation draws per layer, with
per-sample activation patterns. Measured on 4 moons models (vanilla x2, skip, skip+sd; 54 settings),
two seeds give the same exact order in 61% of the settings with 8 draws, 80% with 32 and 96% with 128
(one activation pattern shared by all samples, the former default: 44% at 8 draws on 3 of these models,
57% at 32, 80% at 128): no criterion can score above that ceiling.

:func:`tables` aggregates the cases into Table 1 (exact-ranking % per family x perturbation x
criterion, ``linf``), Table 2 (exact-ranking % per reduction, averaged over criteria) and mean
Spearman/Kendall per criterion.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from onnxslice.errors import UnsupportedOpError
from onnxslice.sensitivity.agreement import agreement
from onnxslice.sensitivity.context import Context
from onnxslice.sensitivity.criteria import get_criterion
from onnxslice.sensitivity.groundtruth import perturbation_importance
from onnxslice.sensitivity.reductions import REDUCTIONS, reduce
from onnxslice.sensitivity.scores import LayerScores
from onnxslice.table import format_table

__all__ = ["SAFER_TABLE1_AVG", "evaluate_model", "family_of", "run_benchmark", "settings_for", "tables"]

#: SAfER Table 1, last row (exact-ranking %, linf, averaged over its 15 rows).
SAFER_TABLE1_AVG = {
    "weight": 35, "grad": 43, "wgrad": 43, "gradcampp": 43, "ig": 36, "gig": 39, "idgi": 40,
    "smoothgrad": 37, "vargrad": 31, "hsic": 33,
}
#: SAfER Table 2 (exact-ranking %, averaged over criteria).
SAFER_TABLE2 = {"mean": 37.086, "percentile": 38.636, "l1": 36.109, "l2": 38.234, "linf": 39.809}


def family_of(path: str | Path) -> str:
    """The family from a moons file name (``skipsd-3000.onnx`` -> ``skip+sd``)."""
    stem = Path(path).stem.split("-")[0]
    return {"skipsd": "skip+sd"}.get(stem, stem)


def settings_for(family: str) -> list[tuple[str, str]]:
    """(noise, on) pairs of SAfER Table 1 for a family."""
    ons = ("weights", "activations") if family == "vanilla" else ("weights",)
    return [(n, on) for on in ons for n in ("U", "N", "D")]


def evaluate_model(
    path: str,
    criteria: Sequence[str],
    magnitudes: Sequence[float] = (0.1, 0.3, 0.5),
    draws: int = 32,
    samples: int = 256,
    steps: int = 16,
    noise_samples: int = 16,
    seed: int = 0,
) -> dict[str, Any]:
    """All cases of one model: ``{"model", "family", "layers", "cases": [...], "seconds": {...}, "errors"}``."""
    from onnxslice.model import load

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    model = load(path)
    family = family_of(path)
    ctx = Context.build(model, "builtin:moons?split=train", "pred", samples=samples, steps=steps,
                        noise_samples=noise_samples, seed=seed, batch_size=None)
    scores: dict[tuple[str, str], LayerScores] = {}
    seconds: dict[str, float] = {}
    errors: dict[str, str] = {}
    for name in criteria:
        t0 = time.perf_counter()
        try:
            rel = get_criterion(name).relevance(ctx)
        except UnsupportedOpError as e:
            errors[name] = str(e)
            continue
        except Exception as e:  # a criterion bug must not lose the other criteria's results
            errors[name] = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"
            continue
        seconds[name] = time.perf_counter() - t0
        for red in REDUCTIONS:
            scores[(name, red)] = LayerScores({x.name: reduce(rel[x.name], red) for x in ctx.layers}, name, red)
    cases: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for noise, on in settings_for(family):
        for mag in magnitudes:
            gt = perturbation_importance(model, "builtin:moons?split=test", noise, on, mag, draws, samples=None,
                                         batch_size=None, seed=seed)
            for (name, red), s in scores.items():
                cases.append({"noise": noise, "on": on, "magnitude": mag, "criterion": name, "reduction": red,
                              **agreement(s, gt)})
    seconds["groundtruth"] = time.perf_counter() - t0
    return {"model": Path(path).name, "family": family, "layers": len(ctx.layers), "cases": cases,
            "seconds": seconds, "errors": errors}


def _run_one(shared: dict[str, Any], path: str, unit_seed: int) -> dict[str, Any]:
    # every model uses the configured seed (not its position), so a model's cases never depend on the set
    return evaluate_model(path, **shared)


def run_benchmark(
    paths: Sequence[str | Path], criteria: Sequence[str], workers: int = 2, *, backend: str = "local",
    address: str | None = None, **kw: Any,
) -> list[dict[str, Any]]:
    """Evaluate every model with :func:`onnxslice.parallel.map_units` (local processes or Ray; one model
    per unit; ``workers=1`` runs in this process). Results do not depend on the backend or worker count."""
    from onnxslice.parallel import map_units

    return map_units(_run_one, [str(p) for p in paths], {"criteria": list(criteria), **kw},
                     backend=backend, workers=workers, address=address)  # type: ignore[arg-type]


def _pct(values: list[bool]) -> float:
    return 100.0 * float(np.mean(values)) if values else float("nan")


def tables(results: list[dict[str, Any]], criteria: Sequence[str]) -> dict[str, Any]:
    """Table 1 (linf), Table 2 (reductions) and rank correlations from :func:`run_benchmark` results."""
    cases = [{**c, "family": r["family"]} for r in results for c in r["cases"]]
    crits = [c for c in criteria if any(x["criterion"] == c for x in cases)]
    rows = []
    keys = sorted({(c["family"], c["noise"], c["on"]) for c in cases},
                  key=lambda k: (["vanilla", "skip", "skip+sd", "transformer"].index(k[0])
                                 if k[0] in ("vanilla", "skip", "skip+sd", "transformer") else 9, k[2] != "weights",
                                 "UND".index(k[1])))
    for fam, noise, on in keys:
        row: dict[str, Any] = {"family": fam, "perturbation": f"{noise} on {'W' if on == 'weights' else 'act'}"}
        sel = [c for c in cases if (c["family"], c["noise"], c["on"]) == (fam, noise, on) and c["reduction"] == "linf"]
        row["cases"] = len([c for c in sel if c["criterion"] == crits[0]]) if crits else 0
        for cr in crits:
            row[cr] = _pct([c["exact"] for c in sel if c["criterion"] == cr])
        rows.append(row)
    avg: dict[str, Any] = {"family": "avg", "perturbation": "", "cases": sum(r["cases"] for r in rows)}
    for cr in crits:
        avg[cr] = float(np.nanmean([r[cr] for r in rows])) if rows else float("nan")
    rows.append(avg)
    red_rows = [{"reduction": red, "exact %": float(np.mean([
        _pct([c["exact"] for c in cases if c["reduction"] == red and (c["family"], c["noise"], c["on"]) == k])
        for k in keys])) if keys else float("nan"), "SAfER": SAFER_TABLE2[red]} for red in REDUCTIONS]
    corr = []
    for cr in crits:
        sel = [c for c in cases if c["criterion"] == cr and c["reduction"] == "linf"]
        corr.append({
            "criterion": cr, "exact %": _pct([c["exact"] for c in sel]),
            "spearman": float(np.nanmean([c["spearman"] for c in sel])),
            "kendall": float(np.nanmean([c["kendall"] for c in sel])),
            "top-1 %": _pct([c["top1"] for c in sel]),
            "SAfER avg exact %": SAFER_TABLE1_AVG.get(cr, float("nan")),
        })
    return {"table1": rows, "table2": red_rows, "correlations": corr}


def render(tabs: dict[str, Any], title: str = "") -> str:
    """The three tables as text."""
    return "\n\n".join([
        format_table(tabs["table1"], title=f"Table 1: exact-ranking % (linf){title}"),
        format_table(tabs["table2"], title="Table 2: exact-ranking % per reduction (mean over criteria and rows)"),
        format_table(tabs["correlations"], title="rank agreement per criterion (linf, all cases)"),
    ])
