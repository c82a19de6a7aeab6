"""Conformance matrix: every verb of the CLI on models nobody on the team designed.

Builds the models of ``models/conformance.py`` on demand (cache: ``models/build/conformance/``), runs
each through ``inspect``, ``profile``, ``slice`` (2 samples), ``grad``, ``rank`` (wgrad), ``prune``
(uniform and sensitivity, ratio 0.3) and ``quantize`` (average 6 bits) in this process through the
CLI's ``main(argv)``, and classifies every cell:

- ``ok``: exit 0 and a non-empty result (a slice with neurons, a gradient or score that is not all
  zero; a verb that printed a warning about an empty result is not ok);
- ``refused``: exit 2 or 3 with the one-line reason the CLI printed;
- ``FAIL``: a traceback, another exit code, or a silent empty result.

Run ``python benchmarks/conformance.py [--quick] [--models a,b] [--verbs v,w]`` or
``python -m benchmarks.conformance``. ``--quick`` (the default) runs the CI-sized models; ``--full``
adds the large ``light_*`` ImageNet models. Results: ``benchmarks/results/conformance.json`` and the
table in ``docs/conformance.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from onnxslice.io import atomic_write_bytes

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LARGE_NOTE = ("The large `light_*` ImageNet models (shufflenet, inception v1, densenet121, resnet50) run with "
              "`--full` (minutes per verb).")
VERBS = ("inspect", "profile", "slice", "grad", "rank", "prune-uniform", "prune-sensitivity", "quantize")
SAMPLES = 8


@dataclass
class Cell:
    """One model x verb result."""

    model: str
    verb: str
    status: str  # ok | refused | FAIL
    reason: str
    seconds: float


def _argv(verb: str, model: Path, data: str, work: Path, target: str, output: str,
          rewrite: tuple[str, ...] = ()) -> list[str]:
    prof = work / "profile.npz"
    tgt = ["--target", target] if target else []
    out = ["--output", output] if output else []
    if verb == "inspect":
        return ["inspect", str(model), "--json"]
    if verb == "profile":
        return ["profile", str(model), "--data", data, "--out", str(prof), "--json", "--device", "cpu"]
    if verb == "slice":
        return ["slice", str(model), "--profile", str(prof), "--data", data, "--samples", "0:2", "--out",
                str(work / "slice.npz"), "--workers", "1", "--json", "--device", "cpu", *tgt, *out]
    if verb == "grad":
        return ["grad", str(model), "--data", data, "--samples", f"0:{SAMPLES}", "--json", "--device", "cpu",
                *tgt, *out]
    if verb == "rank":
        return ["rank", str(model), "--data", data, "--criterion", "wgrad", "--samples", str(SAMPLES), "--json",
                "--device", "cpu", *tgt, *out]
    if verb.startswith("prune"):
        budget = verb.split("-", 1)[1]
        extra = [*tgt, *out] if budget == "sensitivity" else []
        return ["prune", str(model), "--ratio", "0.3", "--budget", budget, "--data", data, "--samples", str(SAMPLES),
                "--repeats", "2", "--out", str(work / f"{verb}.onnx"), "--json", *extra, *rewrite]
    if verb == "quantize":
        return ["quantize", str(model), "--avg-bits", "6", "--data", data, "--samples", str(SAMPLES), "--out",
                str(work / "q.onnx"), "--json", "--device", "cpu", *tgt, *out, *rewrite]
    raise ValueError(verb)


def _empty(verb: str, out: str) -> str | None:
    """Why a successful run's JSON is an empty result (None when it is not)."""
    try:
        res = json.loads(out)
    except ValueError:
        return None
    if verb == "slice":
        layers = res.get("layers") or []
        if not any((row.get("neurons_in_slice") or row.get("neurons") or 0) for row in layers if isinstance(row, dict)):
            frac = [row.get("neuron_fraction", row.get("neurons_fraction")) for row in layers if isinstance(row, dict)]
            if not any(f for f in frac if f):
                return "slice holds no neuron"
    if verb == "grad":
        layers = res.get("layers") or []
        norms = [v for row in layers if isinstance(row, dict) for k, v in row.items() if "norm" in k
                 and isinstance(v, (int, float))]
        if norms and not any(norms):
            return "all gradients are zero"
    if verb == "rank":
        scores = (res.get("scores") or {}).get("scores") or {}
        vals = [v for v in scores.values() if isinstance(v, (int, float))]
        if vals and not any(vals):
            return "all scores are zero"
    return None


def run_cell(name: str, verb: str, model: Path, data: str, work: Path, target: str, output: str,
             rewrite: tuple[str, ...] = ()) -> Cell:
    """Run one verb on one model in this process and classify the outcome."""
    from onnxslice.cli import main

    argv = _argv(verb, model, data, work, target, output, rewrite)
    out, err = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(argv)
    except SystemExit as e:
        rc = int(e.code or 0)
    except Exception as e:  # a traceback is a FAIL, whatever raised it
        tb = traceback.format_exc().strip().splitlines()
        return Cell(name, verb, "FAIL", f"{type(e).__name__}: {e}"[:300] + f" ({tb[-3].strip()[:120]})",
                    time.perf_counter() - t0)
    dt = time.perf_counter() - t0
    lines = [ln for ln in err.getvalue().strip().splitlines() if ln.startswith("onnxslice")]
    warned = [ln for ln in lines if "warning:" in ln]
    if rc == 0 and warned:  # an empty or all-zero result that the verb reported: not ok, not silent
        return Cell(name, verb, "refused", warned[0][:300], dt)
    if rc == 0:
        why = _empty(verb, out.getvalue())
        note = " ".join(ln for ln in lines if "falling back" in ln or "empty" in ln or "zero" in ln)
        if why:
            return Cell(name, verb, "FAIL", f"silent empty result: {why}", dt)
        return Cell(name, verb, "ok", note[:300], dt)
    if rc in (2, 3):
        return Cell(name, verb, "refused", (lines[-1] if lines else err.getvalue().strip()[-300:])[:300], dt)
    return Cell(name, verb, "FAIL", f"exit {rc}: {err.getvalue().strip()[-300:]}", dt)


def run_matrix(models: list[str], verbs: list[str], log: Any = print) -> list[Cell]:
    """Build each model and run every verb on it."""
    from models import conformance

    cells: list[Cell] = []
    for name in models:
        e = conformance.entry(name)
        try:
            path, data = conformance.build(name)
        except Exception as ex:
            cells.extend(Cell(name, v, "FAIL", f"build failed: {ex}"[:300], 0.0) for v in verbs)
            continue
        with tempfile.TemporaryDirectory(prefix="conformance-") as tmp:
            work = Path(tmp)
            for verb in verbs:
                if verb == "slice" and "profile" not in verbs:
                    run_cell(name, "profile", path, data, work, e.target, e.output)
                c = run_cell(name, verb, path, data, work, e.target, e.output, e.rewrite_args)
                cells.append(c)
                log(f"{name:20s} {verb:18s} {c.status:8s} {c.seconds:7.1f}s {c.reason[:140]}")
    return cells


def table(cells: list[Cell], models: list[str], verbs: list[str]) -> str:
    """Markdown models x verbs table, then the reasons of every non-ok cell."""
    by = {(c.model, c.verb): c for c in cells}
    lines = ["| model | " + " | ".join(verbs) + " |", "|---" * (len(verbs) + 1) + "|"]
    notes: list[str] = []
    for m in models:
        row = []
        for v in verbs:
            c = by.get((m, v))
            if c is None:
                row.append("")
                continue
            if c.status == "ok":
                row.append("ok")
            else:
                notes.append(f"- `{m}` / {v}: **{c.status}**: {c.reason}")
                row.append(f"{c.status} [{len(notes)}]")
        lines.append(f"| `{m}` | " + " | ".join(row) + " |")
    if notes:
        lines += ["", "Reasons:", ""] + [f"{i + 1}. {n[2:]}" for i, n in enumerate(notes)]
    return "\n".join(lines)


def summary(cells: list[Cell]) -> dict[str, Any]:
    """Counts and the ok share."""
    n = len(cells)
    counts = {s: sum(c.status == s for c in cells) for s in ("ok", "refused", "FAIL")}
    return {"cells": n, **counts, "ok_fraction": round(counts["ok"] / n, 4) if n else 0.0}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    from models import conformance

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--quick", action="store_true", help="only the CI-sized models (default)")
    scale.add_argument("--full", action="store_true", help="also the large light_* ImageNet models")
    p.add_argument("--models", help="comma list of model names (default: the set for the scale)")
    p.add_argument("--verbs", help=f"comma list of verbs (default: all: {','.join(VERBS)})")
    p.add_argument("--json-out", default=str(ROOT / "benchmarks" / "results" / "conformance.json"),
                   help="where to save the JSON results (default benchmarks/results/conformance.json)")
    p.add_argument("--md-out", default=str(ROOT / "docs" / "conformance.md"),
                   help="where to write the Markdown table (default docs/conformance.md)")
    p.add_argument("--no-save", action="store_true", help="print only")
    p.add_argument("--keep-previous", action="store_true",
                   help="keep the cells of models not run now from the existing --json-out (e.g. a --full run of the "
                        "large models, then the small ones); off by default")
    args = p.parse_args(argv)
    os.environ.setdefault("ONNXSLICE_PROGRESS", "0")
    models = args.models.split(",") if args.models else conformance.names(small_only=not args.full)
    verbs = args.verbs.split(",") if args.verbs else list(VERBS)
    t0 = time.time()
    cells = run_matrix(models, verbs)
    seconds = time.time() - t0
    if args.keep_previous and Path(args.json_out).exists():
        old = json.loads(Path(args.json_out).read_text())
        kept = [Cell(**c) for c in old["cells"] if c["model"] not in models and c["verb"] in verbs]
        order = {n: i for i, n in enumerate(conformance.names())}
        models = sorted({*models, *(c.model for c in kept)}, key=lambda n: order.get(n, len(order)))
        cells = sorted([*cells, *kept], key=lambda c: order.get(c.model, len(order)))
        seconds += float(old.get("seconds", 0.0))
    tab = table(cells, models, verbs)
    s = summary(cells)
    print()
    print(tab)
    print(f"\n{s['cells']} cells: {s['ok']} ok, {s['refused']} refused, {s['FAIL']} FAIL "
          f"({100 * s['ok_fraction']:.1f}% ok) in {seconds:.0f}s")
    if not args.no_save:
        entries = {e.name: {"source": e.source, "licence": e.licence, "kind": e.kind, "small": e.small,
                            "options": " ".join([*(["--target", e.target] if e.target else []),
                                                 *(["--output", e.output] if e.output else []),
                                                 *(f"{a} (prune, quantize)" for a in e.rewrite_args)])}
                   for e in conformance.ENTRIES if e.name in models}
        res = {"summary": s, "models": entries, "verbs": verbs, "cells": [asdict(c) for c in cells],
               "seconds": round(seconds, 1),
               "machine": "2 shared CPU cores (eight sessions at once), onnxruntime CPU provider"}
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(Path(args.json_out), (json.dumps(res, indent=2) + "\n").encode())
        _write_md(Path(args.md_out), tab, s, entries, args.full or any(not e["small"] for e in entries.values()))
    return 0 if s["FAIL"] == 0 else 1


def _write_md(path: Path, tab: str, s: dict[str, Any], entries: dict[str, Any], full: bool) -> None:
    src = "\n".join(f"| `{k}` | {v['source']} | {v['licence']} | {v['kind']} | {v['options'] or ''} |"
                    for k, v in entries.items())
    text = f"""# Conformance matrix

Every verb of the CLI on models that nobody on the team designed, as a new user would bring them. The
models are built on demand by `models/conformance.py` into `models/build/conformance/` (git-ignored);
the matrix is produced by `python benchmarks/conformance.py{' --full' if full else ''}` (raw results in
`benchmarks/results/conformance.json`). Each verb runs in-process through the CLI's `main(argv)` with
{SAMPLES} samples (2 for `slice`), ratio 0.3 for `prune`, 6 average bits for `quantize`.

A cell is **ok** (exit 0, non-empty result), **refused** (exit 2/3 with the one-line reason shown below)
or **FAIL** (a traceback, or an empty result that was not reported).

**{s['cells']} cells: {s['ok']} ok, {s['refused']} refused, {s['FAIL']} FAIL ({100 * s['ok_fraction']:.1f}% ok).**

{tab}

## The models

| model | source | licence | what it exercises | options the matrix passes |
|---|---|---|---|---|
{src}

Torch models have seeded random weights (they are not trained: the matrix tests that the verbs run and
agree with onnxruntime, not accuracy). The `light_*` models' weights are constants (`ConstantOfShape`),
so their outputs do not vary between samples and slices at theta 0.3 come out empty (reported). The data
are seeded random inputs of the model's input shape (`builtin:mnist` / `builtin:digits` for the Keras and
scikit-learn models). Pre-quantized models are analysed on their float view; `prune` and `quantize`
refuse them without `--dequantize` (see [targets.md](targets.md)), so the matrix passes it.
{LARGE_NOTE if not full else ""}
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


if __name__ == "__main__":
    raise SystemExit(main())
