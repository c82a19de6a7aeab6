"""Which mutable graph IR the rewrite passes edit: onnx-ir or onnx-graphsurgeon, measured on our models.

Run ``python benchmarks/bench_ir_roundtrip.py [--full]`` from the repository root. For every reference
model (``models/*.onnx``) and every conformance model already built under ``models/build/conformance``
(``python -m models.conformance`` builds them), each IR loads the ``ModelProto`` and writes it back
unchanged. Reported per model and IR:

- ``identical``: the re-serialised bytes equal the input's (``SerializeToString``);
- ``lost``: what the round trip changed, field by field (opset imports, metadata, ``value_info``,
  functions, doc strings, producer, IR version, graph inputs, node attributes, initializers);
- ``ms``: median milliseconds of one import + export (round-robin, the two IRs interleaved, 1 thread).

A third side is onnx-ir as the passes use it (``onnxslice.rewrite.passes.base.to_ir``/``to_proto``).
Then two edits every pass needs are checked on each IR: external data kept (a model saved with its weights
in a side file is loaded, one initializer swapped, and saved again) and a subgraph (If/Loop body) kept.
Quick: 5 rounds per model; ``--full``: 21. Results: ``benchmarks/results/ir_roundtrip.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnx_ir as ir
from onnx import numpy_helper

from onnxslice.io import atomic_write_bytes

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"


def via_ir(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Import into onnx-ir and export back, unchanged."""
    return ir.serde.serialize_model(ir.serde.deserialize_model(proto))


def via_gs(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Import into onnx-graphsurgeon and export back, unchanged (the way prune uses it)."""
    return gs.export_onnx(gs.import_onnx(proto), do_type_check=False)


def via_passes(proto: onnx.ModelProto) -> onnx.ModelProto:
    """onnx-ir as the passes use it (:func:`onnxslice.rewrite.passes.base.to_ir` / ``to_proto``: no
    ``value_info`` added for initializers, map types kept aside)."""
    from onnxslice.rewrite.passes.base import to_ir, to_proto

    return to_proto(to_ir(proto))


SIDES: dict[str, Callable[[onnx.ModelProto], onnx.ModelProto]] = {
    "onnx-ir": via_ir, "onnx-graphsurgeon": via_gs, "onnxslice passes (onnx-ir)": via_passes}


def _node_sig(n: onnx.NodeProto) -> tuple[Any, ...]:
    attrs = tuple(sorted((a.name, a.SerializeToString(deterministic=True)) for a in n.attribute))
    return (n.op_type, n.domain, tuple(n.input), tuple(n.output), n.name, attrs, n.doc_string)


def differences(a: onnx.ModelProto, b: onnx.ModelProto) -> list[str]:
    """The fields that differ between the input ``a`` and its round trip ``b`` (empty: nothing lost)."""
    out: list[str] = []

    def cmp(label: str, x: Any, y: Any) -> None:
        if x != y:
            out.append(label)

    cmp("ir_version", a.ir_version, b.ir_version)
    cmp("opset_import", sorted((o.domain, o.version) for o in a.opset_import),
        sorted((o.domain, o.version) for o in b.opset_import))
    cmp("producer", (a.producer_name, a.producer_version), (b.producer_name, b.producer_version))
    cmp("model doc_string", a.doc_string, b.doc_string)
    cmp("functions", [f.SerializeToString(deterministic=True) for f in a.functions],
        [f.SerializeToString(deterministic=True) for f in b.functions])
    ga, gb = a.graph, b.graph
    cmp("graph name", ga.name, gb.name)
    cmp("graph inputs", [i.SerializeToString(deterministic=True) for i in ga.input],
        [i.SerializeToString(deterministic=True) for i in gb.input])
    cmp("graph outputs", [i.SerializeToString(deterministic=True) for i in ga.output],
        [i.SerializeToString(deterministic=True) for i in gb.output])
    va = {v.name: v.SerializeToString(deterministic=True) for v in ga.value_info}
    vb = {v.name: v.SerializeToString(deterministic=True) for v in gb.value_info}
    if va != vb:
        inits = {t.name for t in ga.initializer}
        added = set(vb) - set(va)
        out.append(f"value_info(+{len(added)}{' initializers' if added <= inits else ''} -{len(set(va) - set(vb))} "
                   f"~{sum(va[k] != vb[k] for k in set(va) & set(vb))})")
    ma = [(p.key, p.value) for p in a.metadata_props]
    mb = [(p.key, p.value) for p in b.metadata_props]
    if ma != mb:
        out.append("metadata_props(" + ("sorted" if sorted(ma) == sorted(mb) else f"{len(ma)}->{len(mb)}") + ")")
    cmp("nodes", [_node_sig(n) for n in ga.node], [_node_sig(n) for n in gb.node])
    ia = {t.name: numpy_helper.to_array(t) for t in ga.initializer}
    ib = {t.name: numpy_helper.to_array(t) for t in gb.initializer}
    if list(ia) != list(ib):
        out.append("initializer names/order")
    elif any(ia[k].dtype != ib[k].dtype or not np.array_equal(ia[k], ib[k]) for k in ia):
        out.append("initializer values")
    cmp("initializer encoding", [t.SerializeToString(deterministic=True) for t in ga.initializer],
        [t.SerializeToString(deterministic=True) for t in gb.initializer])
    return out


def time_roundtrips(proto: onnx.ModelProto, rounds: int) -> dict[str, float]:
    """Median ms of one round trip per side, the sides interleaved round-robin."""
    times: dict[str, list[float]] = {k: [] for k in SIDES}
    for _ in range(rounds):
        for name, fn in SIDES.items():
            t0 = time.perf_counter()
            try:
                fn(proto)
            except Exception:
                continue  # reported as lost; no time
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {k: round(statistics.median(v), 3) if v else float("nan") for k, v in times.items()}


def external_data_case(proto: onnx.ModelProto) -> dict[str, Any]:
    """Save ``proto`` with external data, load it in each IR, swap one initializer, save again: does the
    result keep its weights in a side file, and are the weights right?"""
    res: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src.onnx"
        name = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims))).name
        want = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
        onnx.save_model(proto, str(src), save_as_external_data=True, all_tensors_to_one_file=True,
                        location="src.data", size_threshold=0)  # (moves proto's tensors out)
        want[name] = np.zeros_like(want[name])
        # onnx-ir: ir.load keeps external tensors lazy; ir.save writes them to a side file again
        m = ir.load(str(src))
        v = m.graph.initializers[name]
        v.const_value = ir.tensor(np.zeros_like(want[name]), name=name)
        dst = Path(tmp) / "ir.onnx"
        ir.save(m, str(dst), external_data="ir.data")
        res["onnx-ir"] = _check_external(dst, want)
        # onnx-graphsurgeon: onnx.load pulls the data in; export writes it inline unless saved as external again
        g = gs.import_onnx(onnx.load(str(src)))
        g.tensors()[name].values = np.zeros_like(want[name])
        dst = Path(tmp) / "gs.onnx"
        onnx.save_model(gs.export_onnx(g, do_type_check=False), str(dst))
        res["onnx-graphsurgeon"] = _check_external(dst, want)
    return res


def _check_external(path: Path, want: dict[str, np.ndarray]) -> dict[str, Any]:
    head = onnx.load(str(path), load_external_data=False)
    external = sum(t.data_location == onnx.TensorProto.EXTERNAL for t in head.graph.initializer)
    full = onnx.load(str(path))
    got = {t.name: numpy_helper.to_array(t) for t in full.graph.initializer}
    ok = set(got) == set(want) and all(np.array_equal(got[k], want[k]) for k in want)
    return {"external_tensors": external, "of": len(want), "weights_right": ok,
            "file_kB": round(path.stat().st_size / 1e3, 1)}


def subgraph_model() -> onnx.ModelProto:
    """A small If with a then/else body, a model-local function and metadata: the things a pass must keep."""
    from onnxslice.testing import features_model

    return features_model({"onnxslice.pass": "bench"}, producer="bench")


def reference_models() -> list[Path]:
    """``models/*.onnx`` and whatever of the conformance set is built."""
    paths = sorted((ROOT / "models").glob("*.onnx"))
    conf = ROOT / "models" / "build" / "conformance"
    if conf.is_dir():
        have = {p.stem for p in paths}
        paths += sorted(p for p in conf.glob("*.onnx") if p.stem not in have)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true", help="21 timing rounds per model (default: 5)")
    ap.add_argument("--out", default=str(RESULTS / "ir_roundtrip.json"), help="results JSON (default: %(default)s)")
    args = ap.parse_args()
    rounds = 21 if args.full else 5
    rows = []
    for path in reference_models():
        proto = onnx.load(str(path))
        raw = proto.SerializeToString()
        row: dict[str, Any] = {"model": path.stem, "kB": round(len(raw) / 1e3, 1),
                               "ir_version": proto.ir_version, "nodes": len(proto.graph.node)}
        for name, fn in SIDES.items():
            try:
                back = fn(proto)
                row[name] = {"identical": back.SerializeToString() == raw, "lost": differences(proto, back)}
            except Exception as e:  # a failure to round-trip is a result
                row[name] = {"identical": False, "lost": [f"error: {type(e).__name__}: {e}"[:200]]}
        row["ms"] = time_roundtrips(proto, rounds)
        rows.append(row)
        def cell(k: str, row: dict[str, Any] = row) -> str:
            what = "same bytes" if row[k]["identical"] else ",".join(row[k]["lost"])[:50] or "same fields"
            return f"{k.split()[0]}: {what} {row['ms'][k]:.2f} ms"

        print(f"{path.stem:20s} {row['kB']:8.1f} kB  " + "  ".join(cell(k) for k in SIDES), flush=True)
    sub = subgraph_model()
    special: dict[str, Any] = {"subgraph_function_metadata": {}}
    for name, fn in SIDES.items():
        try:
            back = fn(sub)
            special["subgraph_function_metadata"][name] = differences(sub, back)
        except Exception as e:
            special["subgraph_function_metadata"][name] = [f"error: {type(e).__name__}: {e}"[:200]]
    special["external_data_lenet5"] = external_data_case(onnx.load(str(ROOT / "models" / "lenet5.onnx")))
    print(json.dumps(special, indent=1))
    ratio = [r["ms"]["onnx-ir"] / r["ms"]["onnx-graphsurgeon"] for r in rows
             if r["ms"]["onnx-graphsurgeon"] > 0 and r["ms"]["onnx-ir"] == r["ms"]["onnx-ir"]]
    summary = {
        side: {"byte_identical": sum(r[side]["identical"] for r in rows),
               "fields_kept": sum(not r[side]["lost"] for r in rows), "of": len(rows)}
        for side in SIDES
    }
    summary["median_time_ratio_ir_over_gs"] = round(statistics.median(ratio), 3) if ratio else None
    print(json.dumps(summary, indent=1))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    out = {"rounds": rounds, "threads": 1, "load_average_1min": load, "summary": summary, "special": special,
           "rows": rows, "onnx_ir": ir.__version__, "onnx_graphsurgeon": gs.__version__, "onnx": onnx.__version__}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(Path(args.out), (json.dumps(out, indent=1) + "\n").encode())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
