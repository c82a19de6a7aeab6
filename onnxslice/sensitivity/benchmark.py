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

from onnxslice.console import format_table
from onnxslice.console import progress as bar
from onnxslice.errors import UnsupportedOpError
from onnxslice.io import atomic_write_bytes, save_json
from onnxslice.model import load
from onnxslice.parallel import map_units
from onnxslice.scores import LayerScores
from onnxslice.sensitivity.agreement import agreement
from onnxslice.sensitivity.common import model_layers
from onnxslice.sensitivity.context import Context
from onnxslice.sensitivity.criteria import get_criterion
from onnxslice.sensitivity.groundtruth import perturbation_importances
from onnxslice.sensitivity.reductions import REDUCTIONS, check_name, reduce

__all__ = [
    "SAFER_TABLE1",
    "SAFER_TABLE1_AVG",
    "evaluate_model",
    "family_of",
    "run_benchmark",
    "run_sampled",
    "settings_for",
    "tables",
    "wilson",
]

#: SAfER Table 1, last row (exact-ranking %, linf, averaged over its 15 rows).
SAFER_TABLE1_AVG = {
    "weight": 35, "grad": 43, "wgrad": 43, "gradcampp": 43, "ig": 36, "gig": 39, "idgi": 40,
    "smoothgrad": 37, "vargrad": 31, "hsic": 33,
}
#: SAfER Table 1, every row: (family, perturbation) -> exact-ranking % per criterion (linf).
SAFER_TABLE1: dict[tuple[str, str], dict[str, int]] = {
    key: dict(zip(("weight", "grad", "wgrad", "gradcampp", "ig", "gig", "idgi", "smoothgrad", "vargrad", "hsic"),
                  vals, strict=True))
    for key, vals in {
        ("vanilla", "U on W"): (25, 76, 76, 76, 59, 49, 71, 71, 28, 38),
        ("vanilla", "N on W"): (42, 68, 68, 68, 59, 56, 66, 66, 36, 47),
        ("vanilla", "D on W"): (32, 60, 60, 33, 41, 60, 48, 60, 43, 60),
        ("vanilla", "U on act"): (82, 82, 82, 33, 67, 78, 78, 53, 29, 77),
        ("vanilla", "N on act"): (82, 82, 82, 33, 67, 78, 78, 53, 29, 63),
        ("vanilla", "D on act"): (82, 82, 82, 33, 67, 77, 77, 55, 28, 49),
        ("skip", "U on W"): (46, 47, 43, 64, 44, 43, 47, 52, 77, 28),
        ("skip", "N on W"): (23, 31, 32, 71, 27, 33, 28, 28, 39, 34),
        ("skip", "D on W"): (30, 30, 32, 72, 28, 31, 27, 31, 47, 16),
        ("skip+sd", "U on W"): (42, 42, 42, 25, 41, 42, 42, 17, 10, 22),
        ("skip+sd", "N on W"): (21, 24, 24, 53, 23, 23, 22, 22, 32, 40),
        ("skip+sd", "D on W"): (20, 21, 17, 47, 19, 19, 20, 20, 29, 12),
        ("transformer", "U on W"): (0, 0, 0, 22, 0, 0, 0, 6, 12, 0),
        ("transformer", "N on W"): (1, 1, 1, 10, 0, 1, 1, 18, 12, 7),
        ("transformer", "D on W"): (0, 0, 0, 7, 0, 0, 0, 5, 14, 0),
    }.items()
}
#: SAfER Table 2 (exact-ranking %, averaged over criteria).
SAFER_TABLE2 = {"mean": 37.086, "percentile": 38.636, "l1": 36.109, "l2": 38.234, "linf": 39.809}


def block_layers(names: Sequence[str]) -> list[str]:
    """The layers of the sampled blocks (``hidden.*``, ``blocks.*``) among moons layer names, in order."""
    return [n for n in names if "/hidden." in n or "/blocks." in n]


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
    ceiling: bool = False,
    layers: str = "all",
) -> dict[str, Any]:
    """All cases of one model: ``{"model", "family", "layers", "cases": [...], "seconds": {...}, "errors"}``.

    With ``ceiling``, every ground truth is measured a second time with ``seed + 1`` and the agreement of
    the two estimates is recorded per setting under ``"ceiling"`` (what no criterion can exceed).
    ``layers="blocks"`` ranks only the layers of the sampled blocks (``hidden.*``/``blocks.*``: no stem,
    embedding or head), the setting that reproduced the paper best (docs/reproduction.md); ``"all"``
    (default) ranks every weight layer.
    """
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # one onnxruntime thread per worker: on a shared machine the default (all cores, spinning) was measured
    # twice as slow on the moons transformers (docs/reproduction.md)
    os.environ.setdefault("ONNXSLICE_THREADS", "1")
    model = load(path)
    family = family_of(path)
    check_name("layer set", layers, ("all", "blocks"))
    chosen = None
    if layers == "blocks":
        chosen = block_layers([x.name for x in model_layers(model)])
    ctx = Context.build(model, "builtin:moons?split=train", "pred", samples=samples, steps=steps,
                        noise_samples=noise_samples, seed=seed, batch_size=None, layers=chosen)
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
    ceil: list[dict[str, Any]] = []
    sessions: dict[Any, Any] = {}  # the suffix sessions, shared by every ground truth of this model
    t0 = time.perf_counter()
    for noise, on in settings_for(family):
        # one call per setting: every draw is made once and applied at each magnitude (same numbers as
        # one call per magnitude, a third of the random draws)
        gts = perturbation_importances(model, "builtin:moons?split=test", noise, on, magnitudes, draws, samples=None,
                                       batch_size=None, seed=seed, sessions=sessions, layers=chosen)
        gts2 = perturbation_importances(model, "builtin:moons?split=test", noise, on, magnitudes, draws,
                                        samples=None, batch_size=None, seed=seed + 1, sessions=sessions,
                                        layers=chosen) if ceiling else []
        for k, mag in enumerate(magnitudes):
            for (name, red), s in scores.items():
                cases.append({"noise": noise, "on": on, "magnitude": mag, "criterion": name, "reduction": red,
                              **agreement(s, gts[k])})
            if ceiling:
                ceil.append({"noise": noise, "on": on, "magnitude": mag, **agreement(gts2[k], gts[k])})
    seconds["groundtruth"] = time.perf_counter() - t0
    out = {"model": Path(path).name, "family": family, "layers": len(ctx.layers), "cases": cases,
           "seconds": seconds, "errors": errors}
    if ceiling:
        out["ceiling"] = ceil
    return out


def _run_one(shared: dict[str, Any], path: str, unit_seed: int) -> dict[str, Any]:
    # every model uses the configured seed (not its position), so a model's cases never depend on the set
    return evaluate_model(path, **shared)


def run_benchmark(
    paths: Sequence[str | Path], criteria: Sequence[str], workers: int = 2, *, backend: str = "local",
    address: str | None = None, **kw: Any,
) -> list[dict[str, Any]]:
    """Evaluate every model with :func:`onnxslice.parallel.map_units` (local processes or Ray; one model
    per unit; ``workers=1`` runs in this process). Results do not depend on the backend or worker count."""
    return map_units(_run_one, [str(p) for p in paths], {"criteria": list(criteria), **kw},
                     backend=backend, workers=workers, address=address)  # type: ignore[arg-type]


def _pct(values: list[bool]) -> float:
    return 100.0 * float(np.mean(values)) if values else float("nan")


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval (95% by default) of a proportion ``k / n``, in percent; (nan, nan) for n = 0."""
    if n <= 0:
        return float("nan"), float("nan")
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return 100.0 * max(0.0, centre - half), 100.0 * min(1.0, centre + half)


def _interval(values: list[bool]) -> str:
    lo, hi = wilson(int(np.sum(values)), len(values))
    return f"[{lo:.0f}, {hi:.0f}]" if values else ""


def _sampled_key(config: dict[str, Any]) -> str:
    import hashlib
    import json

    return hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


def _load_builder(path: str) -> Any:
    import importlib.util
    import sys

    name = "onnxslice_models_moons"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def _find_or_build(builder: Any, family: str, index: int, committed: Path, built: Path) -> Path:
    """Model ``index`` of ``family``: the committed file if there is one, else trained into ``built``."""
    base = 1000 * builder.FAMILIES.index(family) + 1000 + 37 * index
    for folder in (committed, built):
        for s in range(base, base + 20):
            if (folder / builder.file_name(family, s)).is_file():
                return folder / builder.file_name(family, s)

    spec, data = builder.build_model(family, index)
    built.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(built / builder.file_name(family, spec.seed), data)


def _run_sampled_one(shared: dict[str, Any], unit: tuple[str, int], unit_seed: int) -> dict[str, Any]:
    import json

    family, index = unit
    done = Path(shared["cache"]) / f"{family.replace('+', '')}-{index}.json"
    if done.is_file():
        return dict(json.loads(done.read_text()))
    builder = _load_builder(shared["builder"])
    t0 = time.perf_counter()
    path = _find_or_build(builder, family, index, Path(shared["committed"]), Path(shared["built"]))
    train_s = time.perf_counter() - t0
    evaluate = shared.get("evaluator", evaluate_model)  # a module-level function (it crosses to workers)
    res = evaluate(str(path), **shared["evaluate"])
    res["index"], res["seconds"]["train"] = index, train_s
    save_json(done, res)
    return res


def run_sampled(
    families: Sequence[str], per_family: int, criteria: Sequence[str], *, builder: str | Path,
    committed: str | Path, cache: str | Path, workers: int = 2, backend: str = "local",
    address: str | None = None, ceiling: bool = True, progress: bool | None = None, order: str = "family",
    reverse: bool = False, **kw: Any,
) -> list[dict[str, Any]]:
    """Sample, train and evaluate ``per_family`` architectures per family, resumably.

    Model ``k`` of a family is drawn from a seed derived from (family, k) by ``builder``'s
    ``build_model`` (the moons builder: blocks uniform in 2-6, widths in 8-128, Adam lr 0.01 for 6
    epochs, kept when accurate); committed files in ``committed`` are reused, others are trained into
    ``cache/models``. Each unit (one model: train if needed, then :func:`evaluate_model`) runs on
    :func:`onnxslice.parallel.map_units` and writes its result to ``cache/<config digest>/<model>.json``;
    a rerun with the same configuration skips the models already there.

    ``order`` is the order the units run in (it changes neither a result nor the cache): ``"family"``
    (default: every model of the first family, then the next family) or ``"index"`` (model ``k`` of every
    family before model ``k + 1``), which keeps the families balanced when a long run is stopped part-way.
    ``reverse`` runs that order backwards: a second process started with it on the same ``cache`` works
    from the other end, and since every unit skips a model whose result is already there, the two meet
    in the middle (at most the model both reach at once is computed twice, to the same result).

    Returns:
        One :func:`evaluate_model` result per model, in the order they ran.
    """
    evaluate = {"criteria": list(criteria), "ceiling": ceiling, **kw}
    digest = _sampled_key({k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in evaluate.items()})
    root = Path(cache)
    shared: dict[str, Any] = {"cache": str(root / digest), "builder": str(builder), "committed": str(committed),
              "built": str(root / "models"), "evaluate": evaluate}
    Path(shared["cache"]).mkdir(parents=True, exist_ok=True)
    check_name("unit order", order, ("family", "index"))
    units = [(f, k) for f in families for k in range(per_family)]
    if order == "index":
        units.sort(key=lambda u: u[1])  # stable: families keep their order within an index
    if reverse:
        units.reverse()
    step = max(1, workers)
    results: list[dict[str, Any]] = []
    for start in bar(range(0, len(units), step), total=-(-len(units) // step), desc=f"models ({step} at a time)",
                     enabled=progress):
        results += map_units(_run_sampled_one, units[start : start + step], shared,
                             backend=backend, workers=workers, address=address)  # type: ignore[arg-type]
    return results


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
        ceil = [c["exact"] for r in results for c in r.get("ceiling", [])
                if (r["family"], c["noise"], c["on"]) == (fam, noise, on)]
        if ceil:
            row["ceiling"] = _pct(ceil)
        paper = SAFER_TABLE1.get((fam, row["perturbation"]))
        if paper:
            row["paper"] = {cr: paper[cr] for cr in crits if cr in paper}
        rows.append(row)
    avg: dict[str, Any] = {"family": "avg", "perturbation": "", "cases": sum(r["cases"] for r in rows)}
    for cr in crits:
        avg[cr] = float(np.nanmean([r[cr] for r in rows])) if rows else float("nan")
    if any("ceiling" in r for r in rows):
        avg["ceiling"] = float(np.nanmean([r["ceiling"] for r in rows if "ceiling" in r]))
    avg["paper"] = {cr: SAFER_TABLE1_AVG[cr] for cr in crits if cr in SAFER_TABLE1_AVG}
    rows.append(avg)
    red_rows = [{"reduction": red, "exact %": float(np.mean([
        _pct([c["exact"] for c in cases if c["reduction"] == red and (c["family"], c["noise"], c["on"]) == k])
        for k in keys])) if keys else float("nan"), "SAfER": SAFER_TABLE2[red]} for red in REDUCTIONS]
    corr = []
    for cr in crits:
        sel = [c for c in cases if c["criterion"] == cr and c["reduction"] == "linf"]
        corr.append({
            "criterion": cr, "exact %": _pct([c["exact"] for c in sel]),
            "95% CI": _interval([c["exact"] for c in sel]), "cases": len(sel),
            "spearman": float(np.nanmean([c["spearman"] for c in sel])),
            "kendall": float(np.nanmean([c["kendall"] for c in sel])),
            "top-1 %": _pct([c["top1"] for c in sel]),
            "SAfER avg exact %": SAFER_TABLE1_AVG.get(cr, float("nan")),
        })
    return {"table1": rows, "table2": red_rows, "correlations": corr}


def _with_paper(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        paper = r.get("paper", {})
        row = {}
        for k, v in r.items():
            if k == "paper":
                continue
            row[k] = f"{v:.0f}/{paper[k]}" if k in paper and isinstance(v, float) and v == v else v
        out.append(row)
    return out


def render(tabs: dict[str, Any], title: str = "") -> str:
    """The three tables as text (Table 1 cells read ``ours/paper``; ``ceiling`` = two ground-truth seeds)."""
    return "\n\n".join([
        format_table(_with_paper(tabs["table1"]), title=f"Table 1: exact-ranking % (linf), ours/paper{title}"),
        format_table(tabs["table2"], title="Table 2: exact-ranking % per reduction (mean over criteria and rows)"),
        format_table(tabs["correlations"], title="rank agreement per criterion (linf, all cases)"),
    ])
