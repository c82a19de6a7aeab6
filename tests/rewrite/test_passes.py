"""The pass signature, the pass manager (checks once, names the pass that broke a model, writes nothing)
and the graph IR's round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from _prune_nets import build
from onnx import helper, numpy_helper

import onnxslice as osl
from onnxslice.cli import main
from onnxslice.errors import OnnxSliceError
from onnxslice.rewrite.passes import Pass, PassManager, PassResult, ReplaceInitializers, provenance
from onnxslice.rewrite.passes.base import add_protos, to_ir, to_proto
from onnxslice.rewrite.passes.prune import ChannelCut
from onnxslice.testing import features_model, run_ort

ROOT = Path(__file__).resolve().parents[2]


def _tiny() -> osl.Model:
    """y = x @ w + b (w 4x3), IR 9, opset 17, with source metadata."""
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) / 10, "w")
    b = numpy_helper.from_array(np.ones(3, np.float32), "b")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
                           helper.make_node("Add", ["h", "b"], ["y"], name="add")], "tiny",
                          [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 3])], [w, b])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    helper.set_model_props(m, {"source": "test"})
    return osl.load(m)


class Affine(Pass):
    """w := w * scale + shift (a pass whose order matters)."""

    name = "affine"

    def __init__(self, scale: float, shift: float) -> None:
        self.scale, self.shift = scale, shift

    def call(self, model: ir.Model) -> PassResult:
        v = model.graph.initializers["w"]
        assert v.const_value is not None
        w = v.const_value.numpy() * np.float32(self.scale) + np.float32(self.shift)
        v.const_value = ir.tensor(w.astype(np.float32), name="w")
        return PassResult(model, True, {"scale": self.scale, "shift": self.shift})


class Noop(Pass):
    name = "noop"

    def call(self, model: ir.Model) -> PassResult:
        return PassResult(model, False, {})


class Broken(Pass):
    """Adds a node reading nothing the graph has (an invalid model)."""

    name = "broken"

    def call(self, model: ir.Model) -> PassResult:
        add_protos(model.graph, [helper.make_node("Relu", ["y"], ["y"], name="dup")])  # y written twice
        return PassResult(model, True, {})


def _w(m: osl.Model) -> np.ndarray:
    return np.asarray(m.initializer("w"))


def test_manager_composes_in_order_and_keeps_the_source():
    src = _tiny()
    before = src.proto.SerializeToString()
    w0 = _w(src)
    ab = PassManager("t", [Affine(2, 0), Affine(1, 1)]).run(src)
    ba = PassManager("t", [Affine(1, 1), Affine(2, 0)]).run(src)
    np.testing.assert_array_equal(_w(ab.model), w0 * 2 + 1)
    np.testing.assert_array_equal(_w(ba.model), (w0 + 1) * 2)
    assert src.proto.SerializeToString() == before  # never modified
    assert [n for n, _, _ in ab.reports] == ["affine", "affine"] and ab.changed
    meta = provenance(ab.model)
    assert meta["onnxslice.pass"] == "t" and meta["onnxslice.info"]["pipeline"] == ["affine", "affine"]
    assert {p.key: p.value for p in ab.model.proto.metadata_props}["source"] == "test"  # source metadata kept
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_allclose(run_ort(ab.model.proto, {"x": x})[0], x @ (w0 * 2 + 1) + 1, rtol=1e-6)


def test_unchanged_passes_leave_the_model_byte_identical():
    src = _tiny()
    model = to_ir(to_proto(to_ir(src.proto)))
    ref = to_proto(model).SerializeToString()
    res = Noop()(model)
    assert res.changed is False and res.model is model and to_proto(res.model).SerializeToString() == ref
    with_noop = PassManager("t", [Affine(2, 0), Noop(), Affine(1, 1), Noop()]).run(src)
    without = PassManager("t", [Affine(2, 0), Affine(1, 1)]).run(src)
    assert with_noop.model.proto.SerializeToString() == without.model.proto.SerializeToString()
    nothing = PassManager("t", [Noop()]).run(src)
    assert not nothing.changed
    assert [(n.op_type, list(n.input)) for n in nothing.model.proto.graph.node] == \
        [(n.op_type, list(n.input)) for n in src.proto.graph.node]


def test_invalid_model_is_caught_with_one_line_naming_the_pass():
    src = _tiny()
    with pytest.raises(OnnxSliceError) as err:
        PassManager("t", [Affine(2, 0), Broken(), Noop()]).run(src)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("pass 'broken' of t produced a model that fails its checks")
    assert "nothing was written" in msg


def test_pass_that_returns_something_else_is_a_clear_error():
    class Bad(Pass):
        name = "bad"

        def call(self, model: ir.Model) -> PassResult:
            return model  # type: ignore[return-value]

    with pytest.raises(TypeError, match="pass 'bad' returned Model, not a PassResult"):
        PassManager("t", [Bad()]).run(_tiny())


def test_prune_cli_writes_nothing_when_a_pass_breaks_the_model(tmp_path, capsys, monkeypatch):
    proto, _ = build("flatgemm")
    path = tmp_path / "m.onnx"
    onnx.save(proto, str(path))
    out = tmp_path / "p.onnx"

    def broken(self: ChannelCut, model: ir.Model) -> PassResult:
        return Broken().call(model)

    monkeypatch.setattr(ChannelCut, "call", broken)
    rc = main(["prune", str(path), "--ratio", "0.3", "--out", str(out), "--repeats", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and not out.exists()
    assert len(err) == 1 and "pass 'channel-cut' of prune produced a model that fails its checks" in err[0]


def test_replace_initializers_is_the_protect_and_slice_edit():
    src = _tiny()
    new = np.zeros((4, 3), np.float32)
    res = PassManager("protect", [ReplaceInitializers({"w": new}, {"n": 1})]).run(src)
    np.testing.assert_array_equal(_w(res.model), new)
    assert provenance(res.model)["onnxslice.info"] == {"n": 1}
    same = PassManager("protect", [ReplaceInitializers({})]).run(src)
    assert not same.changed


def _features_model() -> onnx.ModelProto:
    return features_model({"a": "1", "b": "2"}, producer="p")


def test_ir_round_trip_keeps_functions_subgraphs_metadata_and_old_inputs():
    m = _features_model()
    back = to_proto(to_ir(m))
    assert back.SerializeToString() == m.SerializeToString()
    old = onnx.load(str(ROOT / "models" / "lenet5.onnx"))
    old.ir_version = 3
    old.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in old.graph.initializer)
    back = to_proto(to_ir(old))
    assert [i.name for i in back.graph.input] == [i.name for i in old.graph.input]  # IR < 4 weight inputs kept
    assert [(p.key, p.value) for p in back.metadata_props] == [(p.key, p.value) for p in old.metadata_props]
    assert [t.SerializeToString() for t in back.graph.initializer] == \
        [t.SerializeToString() for t in old.graph.initializer]


def test_zipmap_map_output_round_trips_through_the_ir():
    proto = onnx.load(str(ROOT / "models" / "mlp_digits_zipmap.onnx"))
    ref = proto.SerializeToString()
    back = to_proto(to_ir(proto))
    assert proto.SerializeToString() == ref  # the input is not touched
    assert [o.SerializeToString() for o in back.graph.output] == [o.SerializeToString() for o in proto.graph.output]
    onnx.checker.check_model(back, full_check=True)


def test_quantize_an_ir3_model_drops_the_weight_inputs(tmp_path):
    old = onnx.load(str(ROOT / "models" / "lenet5.onnx"))
    old.ir_version = 3
    del old.opset_import[:]
    old.opset_import.append(helper.make_opsetid("", 13))
    old.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in old.graph.initializer)
    model = osl.load(old)
    q = osl.rewrite.quantize(model, osl.rewrite.Plan("quantize", {x.name: "int8" for x in model.layers}))
    names = {i.name for i in q.proto.graph.input}
    assert not names & {x.weight for x in model.layers}
    x = np.random.default_rng(0).uniform(0, 1, (2, 1, 28, 28)).astype(np.float32)
    ref, got = run_ort(model.proto, {"x": x})[0], run_ort(q.proto, {"x": x})[0]
    assert np.abs(ref - got).max() < 0.05 * np.abs(ref).max()
    assert json.loads({p.key: p.value for p in q.proto.metadata_props}["onnxslice.info"])["pipeline"] == \
        ["weight-quant"]


def test_only_the_pass_manager_runs_the_emitted_model_checks():
    """Every verb that writes a rewritten model goes through PassManager: nothing else calls finalize."""
    import ast

    callers = []
    for path in sorted((ROOT / "onnxslice").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
                if name == "finalize":
                    callers.append(str(path.relative_to(ROOT)))
    assert sorted(set(callers)) == ["onnxslice/rewrite/passes/manager.py"]


def test_view_is_the_source_until_a_pass_changes_the_model():
    from onnxslice.rewrite.passes.base import view

    seen: list[tuple[bool, float]] = []

    class Probe(Pass):
        name = "probe"

        def call(self, model: ir.Model) -> PassResult:
            v = view(model)
            seen.append((v is src, float(_w(v)[0, 1])))
            return PassResult(model, False, {})

    src = _tiny()
    PassManager("t", [Probe(), Affine(2, 0), Probe()]).run(src)
    w01 = float(_w(src)[0, 1])
    assert seen == [(True, w01), (False, 2 * w01)]
