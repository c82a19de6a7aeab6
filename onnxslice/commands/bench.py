"""``onnxslice bench safer --per-family N``: regenerate SAfER's Tables 1 and 2 on the moons families."""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

from onnxslice.commands import emit_json
from onnxslice.commands._types import positive_int
from onnxslice.errors import DataError

NAME = "bench"
HELP = "benchmarks: 'safer' regenerates SAfER Table 1/2 (criteria vs ground truth) on the moons models"
ORDER = 90

_REPO = Path(__file__).resolve().parents[2]
#: Measured (docs/reproduction.md): every criterion, 32 draws, the ceiling, one onnxruntime thread per worker
#: on the shared 2-core machine: 57, 17, 23 and 364 s of work per vanilla, skip, skip+sd and transformer model.
_SECONDS_PER_MODEL = (57 + 17 + 23 + 364) / 4


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("which", choices=("safer",), help="the benchmark to run")
    p.add_argument("--per-family", type=positive_int, default=10,
                   help="sampled architectures per family (default 10, the reduced run; 100 for the full scale); "
                        "model k of a family is drawn from a seed derived from (family, k), trained when missing")
    p.add_argument("--models", default=None,
                   help="folder of committed moons models, reused when present (default models/moons); "
                        "the others are trained into CACHE/models")
    p.add_argument("--cache", help="folder of per-model results (and trained models): a rerun with the same "
                                   "settings skips the models already done (default: a temporary folder, "
                                   "so nothing is resumable)")
    p.add_argument("--no-ceiling", action="store_true",
                   help="skip the second ground-truth seed (default: measure it; the two estimates' agreement "
                        "is each row's ceiling)")
    p.add_argument("--layers", choices=("all", "blocks"), default="all",
                   help="layers ranked: 'all' weight layers (default) or the sampled 'blocks' only (no stem, "
                        "embedding or head; the setting closest to the paper, see docs/reproduction.md)")
    p.add_argument("--criteria", default="all", help="comma list of criteria, or 'all' available")
    p.add_argument("--families", default="vanilla,skip,skip+sd,transformer",
                   help="comma list of model families (default vanilla,skip,skip+sd,transformer)")
    p.add_argument("--order", choices=("family", "index"), default="family",
                   help="the order models run in: every model of a 'family' before the next family (default), or "
                        "model k of every family before model k+1 ('index': a run stopped part-way keeps the "
                        "families balanced); results and the cache do not depend on it")
    p.add_argument("--reverse", action="store_true",
                   help="run that order backwards: a second process with --reverse on the same --cache works from "
                        "the other end and the two meet in the middle (each skips the models already done)")
    p.add_argument("--magnitudes", default="0.1,0.3,0.5",
                   help="ground-truth magnitudes in (0, 1], each one case (default 0.1,0.3,0.5)")
    p.add_argument("--draws", type=positive_int, default=32, help="ground-truth draws per layer (default 32)")
    p.add_argument("--samples", type=positive_int, default=256, help="calibration samples (default 256)")
    p.add_argument("--steps", type=positive_int, default=16, help="path steps (default 16)")
    p.add_argument("--noise-samples", type=positive_int, default=16, help="noise draws (default 16)")
    p.add_argument("--workers", type=positive_int, default=2, help="processes, one model each (default 2)")
    p.add_argument("--backend", choices=("local", "ray"), default="local", help="executor (onnxslice.parallel)")
    p.add_argument("--address", help="Ray cluster address (with --backend ray)")
    p.add_argument("--out", "-o", help="write all cases and tables as JSON (default: not written)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")


def _moons_module() -> ModuleType:
    path = _REPO / "models" / "moons.py"
    if not path.is_file():
        raise DataError(f"the moons model builder '{path}' is missing (it ships in the repository's models/)")
    spec = importlib.util.spec_from_file_location("onnxslice_models_moons", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _magnitudes(text: str) -> list[float]:
    try:
        mags = [float(m) for m in text.split(",")]
    except ValueError:
        raise DataError(f"--magnitudes '{text}' is not a comma list of numbers") from None
    if not mags or not all(0 < m <= 1 for m in mags):
        raise DataError(f"--magnitudes '{text}': every magnitude must be in (0, 1]")
    return mags


def run(args: argparse.Namespace) -> int:
    from onnxslice.console import warn_if_long
    from onnxslice.io import save_json
    from onnxslice.outputs import Outputs
    from onnxslice.sensitivity import criteria_names
    from onnxslice.sensitivity.benchmark import render, run_sampled, tables

    outs = Outputs(NAME)
    out_path = outs.writes(args.out, "--out")
    magnitudes = _magnitudes(args.magnitudes)
    moons = _moons_module()
    families = tuple(args.families.split(","))
    bad = [f for f in families if f not in moons.FAMILIES]
    if bad:
        raise DataError(f"unknown famil{'y' if len(bad) == 1 else 'ies'} {', '.join(bad)}; "
                        f"valid: {', '.join(moons.FAMILIES)}")
    available = criteria_names()
    crits = available if args.criteria == "all" else args.criteria.split(",")
    unknown = [c for c in crits if c not in available]
    if unknown:
        raise DataError(f"unknown or unavailable criteria {', '.join(unknown)}; available: {', '.join(available)}")
    n_models = args.per_family * len(families)
    warn_if_long(n_models * _SECONDS_PER_MODEL * args.draws / 32 / max(args.workers, 1),
                 f"bench safer on {n_models} models", "lower --per-family or --draws, or reuse --cache")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="onnxslice-bench-") as tmp:
        cache = args.cache or tmp
        try:
            results = run_sampled(families, args.per_family, crits, builder=str(_REPO / "models" / "moons.py"),
                                  committed=args.models or str(_REPO / "models" / "moons"),
                                  cache=cache, workers=args.workers, backend=args.backend, address=args.address,
                                  ceiling=not args.no_ceiling, order=args.order, reverse=args.reverse,
                                  magnitudes=magnitudes,
                                  draws=args.draws, samples=args.samples, steps=args.steps,
                                  noise_samples=args.noise_samples,
                                  # only when not the default, so that caches of earlier runs stay valid
                                  **({"layers": args.layers} if args.layers != "all" else {}))
        except ImportError as e:
            raise DataError(f"training missing moons models needs torch ({e}); lower --per-family") from e
    paths = [r["model"] for r in results]
    wall = time.perf_counter() - t0
    tabs = tables(results, crits)
    for r in results:
        for name, err in r["errors"].items():
            sys.stderr.write(f"{r['model']}: criterion {name} failed: {err.splitlines()[0]}\n")
    payload = {"per_family": args.per_family, "layers": args.layers, "models": [r["model"] for r in results],
               "criteria": crits,
               "seconds": wall, "workers": args.workers, "tables": tabs, "results": results,
               "model_seconds": float(sum(sum(r["seconds"].values()) for r in results)),
               "cache": args.cache}
    outs.defer(out_path, lambda p: save_json(p, payload))
    outs.commit()
    if args.json:
        emit_json({k: v for k, v in payload.items() if k != "results"})
        return 0
    print(render(tabs, f", {args.per_family} models per family, {len(paths)} models"))
    per_model = payload["model_seconds"] / max(1, len(results))
    print(f"\n{len(paths)} models in {wall:.1f} s with {args.workers} worker(s) ({per_model:.0f} s of work per model; "
          f"100 per family would take about {4 * 100 * per_model / max(1, args.workers) / 3600:.1f} h here)"
          + (f"; saved {args.out}" if args.out else ""))
    return 0
