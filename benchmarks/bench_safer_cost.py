"""The per-model cost of ``onnxslice bench safer``, one phase at a time, against an earlier revision.

One *round* evaluates one moons model per family with :func:`onnxslice.sensitivity.benchmark.evaluate_model`
(every criterion, the ceiling, the benchmark's magnitudes) twice: with the code of ``--base`` (a git
revision, extracted with ``git archive`` into a temporary folder) and with this working tree. Each side
runs in its own fresh process with one thread (``OMP_NUM_THREADS=1``, ``ONNXSLICE_THREADS=1``), the sides
alternate (round-robin), and the medians per family and phase (each criterion, the ground truths) and
their ratio are printed. The two sides' cases and ceilings must be identical (exact equality of the
agreement numbers): the script exits 1 if they are not. Training is timed once per family on this tree
(``build_model`` of a model that is not committed), since it does not change with the revision.

    python benchmarks/bench_safer_cost.py                   # quick: 1 round, 8 draws
    python benchmarks/bench_safer_cost.py --rounds 3 --draws 32 --base f5a1ccd
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODELS = "vanilla-1000,skip-2000,skipsd-3000,transformer-4001"

_CHILD = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
t0 = time.perf_counter()
from onnxslice.sensitivity import criteria_names
from onnxslice.sensitivity.benchmark import evaluate_model
import sklearn  # the data loader's first import, paid once per process in the benchmark
t1 = time.perf_counter()
res = evaluate_model(sys.argv[2], criteria_names(), draws=int(sys.argv[3]), ceiling=True)
res["seconds"]["total"] = time.perf_counter() - t1
res["seconds"]["imports"] = t1 - t0
json.dump(res, sys.stdout)
"""

_TRAIN = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from onnxslice.sensitivity.benchmark import _load_builder
b = _load_builder(sys.argv[1] + "/models/moons.py")
t0 = time.perf_counter()
spec, _ = b.build_model(sys.argv[2], int(sys.argv[3]))
json.dump({"seconds": time.perf_counter() - t0, "attempts": spec.attempts}, sys.stdout)
"""


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "ONNXSLICE_THREADS": "1", "ONNXSLICE_PROGRESS": "0",
            "PYTHONPATH": ""}


def _evaluate(root: Path, model: Path, draws: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(root), str(model), str(draws)], capture_output=True,
                         text=True, env=_env(), check=True, cwd=root)
    return dict(json.loads(out.stdout))


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a["cases"] == b["cases"] and a.get("ceiling") == b.get("ceiling")


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    from onnxslice.io import save_json
    from onnxslice.sensitivity.benchmark import family_of

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="f5a1ccd", help="git revision of the 'before' side (default f5a1ccd)")
    p.add_argument("--models", default=MODELS, help=f"committed moons models, one per family (default {MODELS})")
    p.add_argument("--rounds", type=int, default=1, help="rounds per side (default 1; 3 for the full scale)")
    p.add_argument("--draws", type=int, default=8, help="ground-truth draws per layer (default 8; the benchmark: 32)")
    p.add_argument("--train-index", type=int, default=50,
                   help="index of the model trained per family for the training time (default 50, not committed)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "safer_cost.json"),
                   help="JSON output (default benchmarks/results/safer_cost.json)")
    args = p.parse_args(argv)
    rev = subprocess.run(["git", "rev-parse", "--short", args.base], capture_output=True, text=True, check=True,
                         cwd=REPO).stdout.strip()
    load0 = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="safer-cost-") as tmp:
        base = Path(tmp)
        archive = subprocess.run(["git", "archive", rev, "onnxslice", "opsets", "models/moons.py"],
                                 capture_output=True, check=True, cwd=REPO).stdout
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
        for name in args.models.split(","):
            path = REPO / "models" / "moons" / f"{name}.onnx"
            fam = family_of(path)
            times: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
            first: dict[str, Any] = {}
            for _ in range(args.rounds):
                for side, root in (("before", base), ("after", REPO)):
                    res = _evaluate(root, path, args.draws)
                    times[side].append(res["seconds"])
                    first.setdefault(side, res)
            if not _same(first["before"], first["after"]):
                sys.stderr.write(f"{name}: the cases of {rev} and of this tree differ\n")
                return 1
            phases = list(first["after"]["seconds"])
            med = {side: {ph: float(np.median([t.get(ph, np.nan) for t in ts])) for ph in phases}
                   for side, ts in times.items()}
            train = json.loads(subprocess.run([sys.executable, "-c", _TRAIN, str(REPO), fam, str(args.train_index)],
                                              capture_output=True, text=True, env=_env(), check=True,
                                              cwd=REPO).stdout)
            row = {"model": name, "family": fam, "layers": first["after"]["layers"], "draws": args.draws,
                   "identical cases": True, "train s": train["seconds"], "train attempts": train["attempts"],
                   "before s": med["before"], "after s": med["after"],
                   "speed-up": med["before"]["total"] / med["after"]["total"], "times": times}
            rows.append(row)
            gt = (med["before"]["groundtruth"], med["after"]["groundtruth"])
            print(f"{fam:12s} {name:18s} total {med['before']['total']:7.1f} -> {med['after']['total']:7.1f} s "
                  f"(x{row['speed-up']:.2f}); ground truths {gt[0]:6.1f} -> {gt[1]:6.1f} s; "
                  f"training {train['seconds']:.1f} s", flush=True)
    load1 = os.getloadavg()
    print(f"load average {load0[0]:.1f} -> {load1[0]:.1f} (2 cores shared with other sessions)")
    save_json(args.out, {"command": "python benchmarks/bench_safer_cost.py " + " ".join(argv or sys.argv[1:]),
                         "base": rev, "rows": rows, "load": [load0, load1], "cpus": os.cpu_count(),
                         "note": "2-core machine shared with other sessions; 1 thread per side, sides alternate",
                         "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
