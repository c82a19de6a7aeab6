"""Cost of SAfER layer ranking: every criterion on reference models, and the ground truth vs depth.

Part 1 times each criterion (``sensitivity(..., reduction="linf")``, 64 calibration samples, default
steps/noise draws unless ``--quick``) on LeNet-5, the small MNIST ResNet and EfficientNet-Lite0 from
``models/`` (built by the ``models`` branch; a missing model is reported and skipped), plus a moons
transformer that always ships with the repository.

Part 2 measures how the perturbation ground truth's cost grows with the number of layers, on chains
of ``L`` Gemm+ReLU layers (width 64, 256 samples): the prefix-cached suffix runs (the default) side
by side with the baseline that runs the whole model for every draw (``cache_prefix=False``; same
single session with swappable weights). Medians over ``--repeats``; the ratio is baseline / cached.

Run ``python benchmarks/bench_rank.py [--quick]``; results go to ``benchmarks/results/rank.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from onnx import helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxslice.console import format_table  # noqa: E402
from onnxslice.data import load_data  # noqa: E402
from onnxslice.errors import OnnxSliceError  # noqa: E402
from onnxslice.io import atomic_write_bytes  # noqa: E402
from onnxslice.model import load  # noqa: E402
from onnxslice.sensitivity import criteria_names, perturbation_importance, sensitivity  # noqa: E402
from onnxslice.testing import make_model  # noqa: E402


def _reference_models() -> list[tuple[str, Path, str]]:
    """(name, path, data spec) of the reference models present in models/."""
    cands = [
        ("LeNet-5", ROOT / "models" / "lenet5.onnx", "builtin:mnist?n=64"),
        ("ResNet-8 (MNIST)", ROOT / "models" / "resnet8_mnist.onnx", "builtin:mnist?n=64"),
        ("EfficientNet-Lite0", ROOT / "models" / "efficientnet_lite0.onnx", "builtin:samples-imagenet"),
        ("moons transformer", ROOT / "models" / "moons" / "transformer-4001.onnx", "builtin:moons?n=64"),
    ]
    zoo = ROOT / "models" / "zoo.py"
    if zoo.is_file():  # the models branch's locator knows where large models are built
        try:
            import importlib.util

            spec = importlib.util.spec_from_file_location("onnxslice_models_zoo", zoo)
            assert spec is not None and spec.loader is not None
            mod = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = mod
            spec.loader.exec_module(mod)
            locate = getattr(mod, "locate", None) or getattr(mod, "path", None)
            if locate is not None:
                cands[2] = (cands[2][0], Path(locate("efficientnet_lite0")), cands[2][2])
        except Exception as e:  # the locator is optional here
            print(f"models/zoo.py could not locate EfficientNet-Lite0: {e}", file=sys.stderr)
    return cands


def _data64(spec: str) -> dict[str, np.ndarray]:
    ds = load_data(spec)
    x = ds.x
    if len(x) < 64:  # samples-imagenet has 20 images: tile them to 64
        x = np.concatenate([x] * (64 // len(x) + 1))[:64]
    return {"x": x[:64]}


def part1(criteria: list[str], steps: int, noise: int, repeats: int, only: list[str] | None = None) -> list[dict]:
    rows = []
    for name, path, spec in _reference_models():
        if only and not any(o.lower() in name.lower() for o in only):
            continue
        if not path.is_file():
            print(f"skipped {name}: {path} is not built yet (models branch)", file=sys.stderr)
            rows.append({"model": name, "layers": None, "note": "missing"})
            continue
        model = load(path)
        data = _data64(spec)
        row: dict = {"model": name, "layers": len(model.layers)}
        for crit in criteria:
            times = []
            try:
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        sensitivity(model, data, crit, "linf", samples=64, steps=steps, noise_samples=noise,
                                    batch_size=64, hsic_masks=max(8, noise * 2))
                    times.append(time.perf_counter() - t0)
                row[crit] = statistics.median(times)
            except OnnxSliceError as e:
                row[crit] = float("nan")
                print(f"{name}/{crit}: {e}", file=sys.stderr)
        rows.append(row)
        print(f"{name}: " + ", ".join(f"{k} {v:.2f}s" for k, v in row.items() if isinstance(v, float)), file=sys.stderr)
    return rows


def _chain(depth: int, width: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    nodes, inits, cur = [], {}, "x"
    dims = [2] + [width] * (depth - 1) + [2]
    for i in range(depth):
        inits[f"W{i}"] = (rng.normal(size=(dims[i], dims[i + 1])) / np.sqrt(dims[i])).astype(np.float32)
        inits[f"b{i}"] = np.zeros(dims[i + 1], np.float32)
        out = "y" if i == depth - 1 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [cur, f"W{i}", f"b{i}"], [out], name=f"L{i}"))
        if i < depth - 1:
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"], name=f"relu{i}"))
            cur = f"r{i}"
    return load(make_model(nodes, {"x": (np.float32, ["N", 2])}, {"y": (np.float32, ["N", 2])}, inits))


def part2(depths: list[int], draws: int, repeats: int, width: int, samples: int) -> list[dict]:
    x = np.random.default_rng(0).normal(size=(samples, 2)).astype(np.float32)
    rows = []
    for depth in depths:
        model = _chain(depth, width)
        res = {}
        for cached in (True, False):
            times = []
            for _ in range(repeats):
                gt = perturbation_importance(model, {"x": x}, "N", "weights", 0.5, draws, cache_prefix=cached,
                                             samples=None, batch_size=None)
                times.append((gt.meta["seconds"] - gt.meta["setup_seconds"], gt.meta["seconds"]))
            res[cached] = (statistics.median(t[0] for t in times), gt, statistics.median(t[1] for t in times))
        assert res[True][1].scores == res[False][1].scores or np.allclose(
            res[True][1].array(), res[False][1].array(), rtol=1e-5)
        nodes = sum(res[True][1].meta["suffix_nodes"].values())
        rows.append({
            "layers": depth, "runs": res[True][1].meta["runs"],
            "suffix nodes / full nodes": round(nodes / (depth * len(model.nodes)), 3),
            "cached run s": res[True][0], "full-model run s": res[False][0],
            "ratio": res[False][0] / res[True][0],
            "cached total s": res[True][2], "full-model total s": res[False][2],
            "cached run ms per layer": 1000 * res[True][0] / depth,
        })
        print(format_table([rows[-1]]), file=sys.stderr)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small settings to check that it runs")
    p.add_argument("--criteria", default="all")
    p.add_argument("--models", default="", help="comma list of name parts (lenet, resnet, efficientnet, moons)")
    p.add_argument("--skip-groundtruth", action="store_true", help="part 1 only")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "rank.json"))
    a = p.parse_args()
    crits = criteria_names() if a.criteria == "all" else a.criteria.split(",")
    steps, noise, repeats = (2, 2, 1) if a.quick else (16, 16, 3)
    depths = [2, 4, 8] if a.quick else [2, 4, 8, 16, 32]
    only = [m for m in a.models.split(",") if m]
    t1 = part1(crits, steps, noise, 1, only)  # one repeat: EfficientNet path criteria take minutes
    t2 = [] if a.skip_groundtruth else part2(
        depths, 2 if a.quick else 8, repeats, 64 if a.quick else 256, 256 if a.quick else 2048
    )
    cols = ["model", "layers", *crits, "note"]
    t1 = [{c: r.get(c, "") for c in cols} for r in t1]
    title = f"seconds per criterion (64 samples, steps={steps}, noise draws={noise}, linf)"
    print(format_table(t1, columns=cols, title=title))
    print()
    print(format_table(t2, title="ground truth (N on weights) cost vs layers: prefix-cached suffixes vs full model "
                       "(run s excludes building sessions; total s includes it)"))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(
        out, (json.dumps({"quick": a.quick, "criteria": t1, "groundtruth": t2}, indent=2, default=float)).encode()
    )
    print(f"\nsaved {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
