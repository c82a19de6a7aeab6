"""``onnxslice report``: the analyses a deployer needs to decide, on one self-contained HTML page.

:func:`build_report` runs them (profile, class slices, the cheap SAfER criteria and the measured
oracle, pruning and mixed-precision sweeps with measured latency) and returns a :class:`Report`:
the sections as JSON-ready dicts and the rendered page. Writing files is the caller's business.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnxslice.console import progress_bar, warn_if_long
from onnxslice.data import Dataset
from onnxslice.model import Model
from onnxslice.profile import profile as run_profile
from onnxslice.report.analyses import (
    ReportOptions,
    agreement_section,
    overview_section,
    prune_section,
    quantize_section,
    sensitivity_section,
    slice_section,
)
from onnxslice.report.figures import agreement_figure, pareto_figure, sensitivity_figure, slice_figure, strip_figure
from onnxslice.report.page import render
from onnxslice.rewrite.fidelity import run_outputs
from onnxslice.sensitivity import LayerScores
from onnxslice.version import __version__

__all__ = ["SECTIONS", "Report", "ReportOptions", "build_report", "estimate_seconds", "json_ready"]

SECTIONS = ("overview", "sensitivity", "agreement", "slices", "prune", "quantize")


@dataclass
class Report:
    """The report's sections (JSON-ready) and its HTML page."""

    sections: dict[str, Any]
    html: str
    seconds: float
    commands: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        verdict = self.sections.get("agreement", {}).get("verdict", "")
        return f"Report({self.sections['overview']['name']}, {self.seconds:.1f} s; {verdict})"


def _forward_seconds(model: Model, data: Dataset) -> float:
    t0 = time.perf_counter()
    run_outputs(model, data)
    return time.perf_counter() - t0


def estimate_seconds(model: Model, calib: Dataset, opts: ReportOptions, skip: Sequence[str] = ()) -> float:
    """A rough duration from one measured forward pass over the calibration set x the work planned.

    Gradient criteria cost ~4 passes each, the oracle ``layers x draws`` passes, each rewritten model
    one fidelity pass plus its latency runs, and each sliced sample ~ the number of layers in passes.
    """
    fwd = _forward_seconds(model, calib)
    per_sample = fwd / max(len(calib), 1)
    n_layers = len(model.layers)
    est = 4 * fwd * len(opts.criteria) + fwd * n_layers * opts.gt_draws
    if "slices" not in skip:
        est += 3 * opts.slice_samples * per_sample * n_layers * 20
    n_rewrites = (3 * len(opts.prune_ratios) if "prune" not in skip else 0) + (
        3 + 2 * len(opts.quant_bits) if "quantize" not in skip else 0)
    est += n_rewrites * (2 * fwd + 2 * opts.repeats * per_sample + 0.5)
    return est


def _commands(model: Model, data_spec: str, opts: ReportOptions, best: str | None) -> list[str]:
    m, d = shlex.quote(str(model.path) if model.path else "MODEL.onnx"), shlex.quote(data_spec)
    crit = best or "wgrad"
    noise = opts.gt_noise
    cmds = [f"onnxslice profile {m} --data {d} --out profile.npz"]
    for c in opts.criteria:
        cmds.append(f"onnxslice rank {m} --data {d} --criterion {c} --reduction {opts.reduction} "
                    f"--samples {opts.samples} --seed {opts.seed} --out {c}.scores.json")
    if opts.gt_draws:
        cmds.append(f"onnxslice rank {m} --data {d} --criterion {crit} --samples {opts.samples} "
                    f"--ground-truth {noise} --draws {opts.gt_draws}")
    for r in opts.prune_ratios:
        cmds.append(f"onnxslice prune {m} --data {d} --ratio {r} --budget sensitivity --scores {crit}.scores.json "
                    f"--out pruned-{r}.onnx")
    for b in opts.quant_bits:
        cmds.append(f"onnxslice quantize {m} --data {d} --avg-bits {b} --choices int4,int8 "
                    f"--scores {crit}.scores.json --out q-{b}.onnx")
    return cmds


def build_report(
    model: Model,
    data: Dataset,
    options: ReportOptions | None = None,
    *,
    profile: Any = None,
    scores: Sequence[LayerScores] = (),
    skip: Sequence[str] = (),
    data_spec: str = "",
    data_dir: str = "",
    progress: bool | None = None,
) -> Report:
    """Run the report's analyses on ``model`` and ``data`` and render the page.

    Args:
        model: the model.
        data: samples (labels make accuracy and class slices possible).
        options: what to compute and how much to spend (:class:`ReportOptions`).
        profile: a saved :class:`onnxslice.Profile` to reuse (else profiled on ``data``).
        scores: saved :class:`LayerScores` to reuse instead of computing those criteria.
        skip: sections not to compute: any of ``slices``, ``prune``, ``quantize``.
        data_spec: how the user named the data (for the reproduce commands).
        data_dir: the folder where the caller saves the sections' JSON (named on the page).
        progress: draw a progress bar (default: when stderr is a terminal).

    Returns:
        The :class:`Report`.
    """

    opts = options or ReportOptions()
    t0 = time.perf_counter()
    calib = data.subset(slice(0, opts.samples))
    warn_if_long(estimate_seconds(model, calib, opts, skip), f"the report on {len(calib)} samples x "
                 f"{len(model.layers)} layers", "lower --samples, --gt-draws or skip sections with --skip")
    n_steps = 4 + (0 if "prune" in skip else 3 * len(opts.prune_ratios)) + (
        0 if "quantize" in skip else 3 + 2 * len(opts.quant_bits))
    sections: dict[str, Any] = {"overview": overview_section(model)}
    with progress_bar(n_steps, "report", progress) as advance:
        prof = profile if profile is not None else run_profile(model, data)
        advance("profile")
        sens, computed = sensitivity_section(model, calib, opts, scores)
        sections["sensitivity"] = sens
        advance("sensitivity")
        sections["agreement"] = agreement_section(computed)
        advance("agreement")
        rows = sections["agreement"]["rows"]
        best_name = rows[0]["criterion"] if rows else (opts.criteria[-1] if opts.criteria else None)
        best = computed.get(best_name) if best_name else None
        sections["slices"] = (slice_section(model, data, opts, prof) if "slices" not in skip
                              else {"classes": [], "note": "skipped (--skip slices)"})
        advance("slices")
        sections["prune"] = (prune_section(model, calib, opts, best, lambda: advance("prune"))
                             if "prune" not in skip else None)
        sections["quantize"] = (quantize_section(model, calib, opts, best, lambda: advance("quantize"))
                                if "quantize" not in skip else None)
    figures = {
        "sensitivity": sensitivity_figure(sens), "strip": strip_figure(sens),
        "agreement": agreement_figure(sections["agreement"]) if rows else None,
        "slices": slice_figure(sections["slices"]) if sections["slices"]["classes"] else None,
        "prune": pareto_figure(sections["prune"], "Pruning") if sections["prune"] else None,
        "quantize": pareto_figure(sections["quantize"], "Mixed precision") if sections["quantize"] else None,
    }
    commands = _commands(model, data_spec or data.name, opts, best_name)
    seconds = time.perf_counter() - t0
    context = {
        "version": __version__, "overview": sections["overview"], "agreement": sections["agreement"],
        "slices": sections["slices"], "sweeps": {"prune": sections["prune"], "quantize": sections["quantize"]},
        "skipped": {k: "--skip " + k for k in ("prune", "quantize")}, "commands": commands,
        "data_name": data_spec or data.name, "seconds": seconds,
        "sensitivity_note": f"{opts.samples} samples, reduction {opts.reduction}",
        "oracle_note": (f"{opts.gt_noise}, {opts.gt_draws} draws per layer" if opts.gt_draws else "not measured"),
    }
    return Report(sections, render(dict(context, data_dir=data_dir), figures), seconds, commands)


def json_ready(obj: Any) -> Any:
    """``obj`` with numpy scalars turned into Python numbers (for ``json.dumps``)."""
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
