"""Before/after check of the pass refactor: every verb's emitted model, old code vs new code.

Step 1, once per code version (run it with the old tree first on ``PYTHONPATH``, then with this one)::

    python benchmarks/check_passes_behaviour.py emit OUT_DIR

writes, for LeNet-5 and ResNet-8, the models that ``prune`` (structured 30% uniform, unstructured 50%),
``quantize`` (weight int8, weight int4 (block-wise DequantizeLinear), int4 MatMulNBits on a MatMul MLP,
fp16, static QDQ int8 with fp16 and fp32 layers, the ``qdq`` format), ``guard`` (two layers, and full
duplication), ``protect`` (lock, then unlock), ``reconstruct`` and ``slice --model`` emit, with fixed seeds.

Step 2::

    python benchmarks/check_passes_behaviour.py compare OLD_DIR NEW_DIR [--json PATH]

For every pair: same bytes? same nodes (op, inputs, outputs, attributes, in order)? same initializer
values? same non-onnxslice metadata? and the largest difference of every output under onnxruntime (CPU,
1 thread) on 16 seeded random inputs.

``python benchmarks/check_passes_behaviour.py time MODEL [--repeats N]`` prints the median seconds of
prune, quantize (int8) and guard on ``models/MODEL.onnx`` with the code on ``PYTHONPATH``; alternate old and
new runs to compare the pass manager's overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxslice.io import atomic_write_bytes

ROOT = Path(__file__).resolve().parents[1]


def _mlp() -> onnx.ModelProto:
    """A two-MatMul MLP (64 -> 64 -> 10) whose weights MatMulNBits can take."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(0, 0.2, (64, 64)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.2, (64, 10)).astype(np.float32), "w2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 64])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 10])], [w1, w2])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    return m


def emit(out: Path) -> None:
    """Write every verb's model for both reference models into ``out``."""
    import importlib

    import onnxslice as osl
    from onnxslice.apps import protect
    from onnxslice.rewrite import formats

    # the package re-exports functions under these modules' names: take the modules
    guard, prune, quantize = (importlib.import_module(f"onnxslice.rewrite.{m}") for m in ("guard", "prune", "quantize"))
    from onnxslice.rewrite.bits_plan import uniform_plan
    from onnxslice.rewrite.opset_upgrade import probe_feed
    from onnxslice.rewrite.plan import Plan
    from onnxslice.rewrite.reconstruct import reconstruct

    out.mkdir(parents=True, exist_ok=True)
    done: list[str] = []

    def save(name: str, m: Any) -> None:
        onnx.save_model(m.proto, str(out / f"{name}.onnx"))
        done.append(name)

    for mname in ("lenet5", "resnet8_mnist"):
        model = osl.load(str(ROOT / "models" / f"{mname}.onnx"))
        calib = probe_feed(model, 32, seed=1)
        layers = [x.name for x in model.layers]
        struct = Plan("prune", {n: 0.3 for n in layers[:-1]}, "uniform", {"mode": "structured"})
        save(f"{mname}-prune", prune.prune(model, struct))
        unstr = Plan("prune", {n: 0.5 for n in layers}, "uniform", {"mode": "unstructured"})
        save(f"{mname}-prune-unstructured", prune.prune(model, unstr))
        pruned = prune.prune(model, struct)
        save(f"{mname}-reconstruct", reconstruct(model, pruned, struct, calib, method="lsq+bn", samples=16).model)
        save(f"{mname}-quantize-int8", quantize.quantize(model, uniform_plan(model, "int8")))
        save(f"{mname}-quantize-int4", quantize.quantize(model, uniform_plan(model, "int4"), calib))
        save(f"{mname}-quantize-fp16", quantize.quantize(model, uniform_plan(model, "fp16")))
        mixed = Plan("quantize", {n: ("fp32" if i == 0 else "fp16" if i == len(layers) - 1 else "int8")
                                  for i, n in enumerate(layers)}, "user", {})
        save(f"{mname}-quantize-static", quantize.quantize(model, mixed, calib, mode="static"))
        save(f"{mname}-format-qdq", formats.convert(model, "qdq", calib))
        save(f"{mname}-guard", guard.guard(model, layers[:2]))
        save(f"{mname}-guard-full", guard.full_duplication(model))
        positions = {model.layer(layers[0]).weight: np.arange(0, 20, 3)}
        locked, key = protect.lock(model, positions, seed=3)
        save(f"{mname}-protect-lock", locked)
        save(f"{mname}-protect-unlock", protect.unlock(locked, key))
    mlp = osl.load(_mlp())
    save("mlp-quantize-nbits", quantize.quantize(mlp, uniform_plan(mlp, "int4")))
    save("mlp-format-nbits", formats.convert(mlp, "nbits"))
    print(f"wrote {len(done)} models to {out}")


def _outputs(path: Path, feed_seed: int = 0) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    from onnxslice.record import runtime_proto

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    proto = onnx.load(str(path))
    sess = ort.InferenceSession(runtime_proto(proto).SerializeToString(), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(feed_seed)
    feed = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 16 for d in i.shape]
        feed[i.name] = rng.uniform(0, 1, shape).astype(np.float32)
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed), strict=True))


def _nodes(p: onnx.ModelProto) -> list[tuple[Any, ...]]:
    def attrs(n: onnx.NodeProto) -> tuple[Any, ...]:
        return tuple(sorted((a.name, a.SerializeToString(deterministic=True)) for a in n.attribute))

    return [(n.op_type, n.domain, tuple(n.input), tuple(n.output), attrs(n)) for n in p.graph.node]


def compare(old: Path, new: Path) -> list[dict[str, Any]]:
    """Field and output differences of every model in both folders."""
    rows = []
    for a in sorted(old.glob("*.onnx")):
        b = new / a.name
        if not b.exists():
            rows.append({"model": a.stem, "missing": True})
            continue
        pa, pb = onnx.load(str(a)), onnx.load(str(b))
        ia = {t.name: numpy_helper.to_array(t) for t in pa.graph.initializer}
        ib = {t.name: numpy_helper.to_array(t) for t in pb.graph.initializer}
        meta_a = {p.key: p.value for p in pa.metadata_props}
        meta_b = {p.key: p.value for p in pb.metadata_props}
        oa, ob = _outputs(a), _outputs(b)
        diff = {k: float(np.max(np.abs(oa[k].astype(np.float64) - ob[k].astype(np.float64)))) if oa[k].size else 0.0
                for k in oa if k in ob and oa[k].shape == ob[k].shape}
        rows.append({
            "model": a.stem,
            "same_bytes": a.read_bytes() == b.read_bytes(),
            "same_nodes": _nodes(pa) == _nodes(pb),
            "same_node_multiset": sorted(map(str, _nodes(pa))) == sorted(map(str, _nodes(pb))),
            "same_initializers": set(ia) == set(ib) and all(
                ia[k].dtype == ib[k].dtype and np.array_equal(ia[k], ib[k]) for k in ia),
            "same_onnxslice_meta": {k: v for k, v in meta_a.items() if k.startswith("onnxslice.")}
            == {k: v for k, v in meta_b.items() if k.startswith("onnxslice.")},
            "meta_keys_only_new": sorted(set(meta_b) - set(meta_a)),
            "meta_keys_only_old": sorted(set(meta_a) - set(meta_b)),
            "ir_opset": [(pa.ir_version, [(o.domain, o.version) for o in pa.opset_import]),
                         (pb.ir_version, [(o.domain, o.version) for o in pb.opset_import])],
            "outputs_same_names": list(oa) == list(ob),
            "max_abs_output_diff": max(diff.values()) if diff else None,
            "bytes": [a.stat().st_size, b.stat().st_size],
        })
    return rows


def time_verbs(model_name: str, repeats: int) -> dict[str, float]:
    """Median seconds of prune (structured 30%), quantize (weight int8) and guard (two layers) on one model,
    in this process (run once per code version, alternating, to compare the pass manager's overhead)."""
    import importlib
    import statistics
    import time

    import onnxslice as osl
    from onnxslice.rewrite.bits_plan import uniform_plan
    from onnxslice.rewrite.plan import Plan

    guard, prune, quantize = (importlib.import_module(f"onnxslice.rewrite.{m}") for m in ("guard", "prune", "quantize"))
    model = osl.load(str(ROOT / "models" / f"{model_name}.onnx"))
    layers = [x.name for x in model.layers]
    struct = Plan("prune", {n: 0.3 for n in layers[:-1]}, "uniform", {"mode": "structured"})
    int8 = uniform_plan(model, "int8")
    verbs = {"prune": lambda: prune.prune(model, struct), "quantize-int8": lambda: quantize.quantize(model, int8),
             "guard": lambda: guard.guard(model, layers[:2])}
    for fn in verbs.values():
        fn()  # warm-up (imports, caches)
    times: dict[str, list[float]] = {k: [] for k in verbs}
    for _ in range(repeats):
        for k, fn in verbs.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: round(statistics.median(v), 4) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("emit", help="write every verb's models")
    e.add_argument("out", type=Path)
    c = sub.add_parser("compare", help="compare two folders written by emit")
    c.add_argument("old", type=Path)
    c.add_argument("new", type=Path)
    c.add_argument("--json", type=Path, help="also save the rows (default: print only)")
    t = sub.add_parser("time", help="median seconds of prune/quantize/guard on one model (this code version)")
    t.add_argument("model", help="a model of models/, e.g. resnet8_mnist")
    t.add_argument("--repeats", type=int, default=3, help="runs per verb (default 3)")
    args = ap.parse_args()
    if args.cmd == "time":
        print(json.dumps(time_verbs(args.model, args.repeats)))
        return
    if args.cmd == "emit":
        emit(args.out)
        return
    rows = compare(args.old, args.new)
    for r in rows:
        print(json.dumps(r))
    if args.json:
        atomic_write_bytes(args.json, (json.dumps(rows, indent=1) + "\n").encode())


if __name__ == "__main__":
    sys.exit(main())
