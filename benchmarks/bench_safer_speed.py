"""The cost of the SAfER moons ground truths: the former benchmark settings against the current ones.

``before``: every ground truth builds its own suffix sessions, onnxruntime picks its thread count (all
cores, spinning); ``after``: one onnxruntime thread per worker (``ONNXSLICE_THREADS=1``, what
``evaluate_model`` now sets) and the sessions shared by every ground truth of a model (``sessions=``).
Both compute the same numbers (checked here: the scores are compared). One *round* is the ground truths
of one model for the noises x magnitudes of the benchmark (fewer draws than the benchmark's 32, to keep
the run short); rounds alternate before/after, medians and the ratio are printed.

    python benchmarks/bench_safer_speed.py            # quick: 3 rounds, 8 draws (transformer: 4)
    python benchmarks/bench_safer_speed.py --rounds 5 --draws 32
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]


def _round(
    model: Any, settings: list[tuple[str, str]], mags: list[float], draws: int, after: bool
) -> tuple[float, list]:
    from onnxslice.sensitivity import perturbation_importance

    if after:
        os.environ["ONNXSLICE_THREADS"] = "1"
    else:
        os.environ.pop("ONNXSLICE_THREADS", None)
    sessions: dict[Any, Any] | None = {} if after else None
    t0 = time.perf_counter()
    scores = []
    for noise, on in settings:
        for mag in mags:
            gt = perturbation_importance(model, "builtin:moons?split=test", noise, on, mag, draws, samples=None,
                                         batch_size=None, seed=0, sessions=sessions)
            scores.append(gt.scores)
    return time.perf_counter() - t0, scores


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    from onnxslice.io import save_json
    from onnxslice.model import load
    from onnxslice.sensitivity.benchmark import family_of, settings_for

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="vanilla-1000,skip-2000,transformer-4001",
                   help="committed moons models (default vanilla-1000,skip-2000,transformer-4001)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per side (default 3)")
    p.add_argument("--draws", type=int, default=8, help="draws per layer (default 8; transformers: half)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "safer_speed.json"),
                   help="JSON output (default benchmarks/results/safer_speed.json)")
    args = p.parse_args(argv)
    rows = []
    for name in args.models.split(","):
        path = REPO / "models" / "moons" / f"{name}.onnx"
        model = load(path)
        fam = family_of(path)
        draws = max(1, args.draws // 2) if fam == "transformer" else args.draws
        settings = settings_for(fam)
        mags = [0.1, 0.3, 0.5]
        times: dict[str, list[float]] = {"before": [], "after": []}
        ref = None
        for _ in range(args.rounds):
            for side in ("before", "after"):
                t, scores = _round(model, settings, mags, draws, side == "after")
                times[side].append(t)
                if ref is None:
                    ref = scores
                same = all(np.allclose(list(a.values()), list(b.values()), rtol=1e-6, atol=0)
                           for a, b in zip(ref, scores, strict=True))
                if not same:
                    sys.stderr.write(f"{name}: the {side} scores differ from the first round\n")
                    return 1
        med = {k: float(np.median(v)) for k, v in times.items()}
        row = {"model": name, "ground truths": len(settings) * len(mags), "draws": draws,
               "before s (median)": med["before"], "after s (median)": med["after"],
               "speed-up": med["before"] / med["after"], "times": times}
        rows.append(row)
        print(f"{name:18s} {row['ground truths']} ground truths x {draws} draws: before {med['before']:.2f} s, "
              f"after {med['after']:.2f} s, x{row['speed-up']:.2f}", flush=True)
    load_avg = os.getloadavg()
    print(f"load average {load_avg[0]:.1f} (shared 2-core machine)")
    save_json(args.out, {"command": "python benchmarks/bench_safer_speed.py " + " ".join(argv or sys.argv[1:]),
                         "rows": rows, "load": load_avg, "cpus": os.cpu_count()})
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
