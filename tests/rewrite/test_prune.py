"""The prune pass: pruned models run with the same I/O, removable channels change nothing, files shrink,
plans are recorded, bad plans raise PlanError and write nothing."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from _prune_nets import NETS, build
from onnx import numpy_helper

import onnxslice as osl
from onnxslice.errors import OnnxSliceError, PlanError
from onnxslice.plans import plan_pruning
from onnxslice.rewrite import Plan, prune
from onnxslice.rewrite.groups import discover_groups
from onnxslice.testing import assert_models_close, run_ort


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("mode", ["structured", "unstructured"])
def test_prune_every_model_runs_and_keeps_io(name, mode):
    proto, x = build(name)
    model = osl.load(proto)
    pruned = prune(model, plan_pruning(model, 0.3, mode=mode))
    assert [(v.name, v.shape) for v in pruned.outputs] == [(v.name, v.shape) for v in model.outputs]
    assert [(v.name, v.shape) for v in pruned.inputs] == [(v.name, v.shape) for v in model.inputs]
    onnx.checker.check_model(pruned.proto, full_check=True)
    (y0,), (y1,) = run_ort(model, {"x": x}), run_ort(pruned, {"x": x})
    assert y1.shape == y0.shape and np.all(np.isfinite(y1))
    if mode == "structured":
        assert pruned.num_params < model.num_params
    else:
        assert pruned.num_params == model.num_params
    meta = {p.key: p.value for p in pruned.proto.metadata_props}
    assert json.loads(meta["onnxslice.plan"])["kind"] == "prune"
    assert meta["onnxslice.pass"] == "prune"


def _zero_channels(model: osl.Model, leader: str, chans: list[int]) -> onnx.ModelProto:
    """A copy of the model whose group channels are exactly removable: every slice that goes with them is 0
    (BatchNormalization variances 1), so those channels are 0 everywhere and feed nothing."""
    group = discover_groups(model).of_layer(leader)
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    inits = {t.name: t for t in proto.graph.initializer}
    for name, ref in group.cuts:
        arr = numpy_helper.to_array(inits[name]).copy()
        idx = ref.indices(np.asarray(chans))
        view = np.moveaxis(arr, ref.axis, 0)
        view[idx] = 1.0 if "running_var" in name else 0.0
        inits[name].CopyFrom(numpy_helper.from_array(arr, name))
    return proto


@pytest.mark.parametrize(
    ("name", "leader", "chans"),
    [
        ("residual", "/stem/stem.0/Conv", [1, 5]),
        ("concat", "/b/b.0/Conv", [0, 7, 9]),
        ("concat", "/c/c.0/Conv", [2, 3]),
        ("depthwise", "/expand/expand.0/Conv", [4, 11]),
        ("depthwise", "/grouped/grouped.0/Conv", [1, 6]),
        ("flatgemm", "/c2/Conv", [0, 15]),
        ("mlp", "/w1/MatMul", [3, 4, 20]),
    ],
)
def test_prune_removable_channels_leave_outputs_unchanged(name, leader, chans):
    proto, x = build(name)
    zeroed = osl.load(_zero_channels(osl.load(proto), leader, chans))
    pruned = prune(zeroed, Plan("prune", {leader: {"remove": chans}}))
    assert pruned.num_params < zeroed.num_params
    assert_models_close(zeroed, pruned, {"x": x}, rtol=1e-5, atol=1e-5)


def test_prune_residual_coupled_layers_share_one_selection():
    proto, _x = build("residual")
    model = osl.load(proto)
    pruned = prune(model, Plan("prune", {"/b1/b1.1/Conv": {"remove": [0, 1, 2]}}))
    shapes = {t.name: list(t.dims) for t in pruned.proto.graph.initializer}
    assert shapes["stem.0.weight"][0] == shapes["b1.2.weight"][0] == shapes["b2.2.weight"][0] == 5
    assert shapes["fc.weight"] == [5, 5]
    with pytest.raises(PlanError, match="coupled"):
        prune(model, Plan("prune", {"/b1/b1.1/Conv": 0.5, "/b2/b2.1/Conv": 0.25}))


def test_prune_concat_keeps_branch_offsets():
    proto, _x = build("concat")
    model = osl.load(proto)
    pruned = prune(model, Plan("prune", {"/a/a.0/Conv": {"remove": [0]}, "/b/b.0/Conv": {"remove": [9]}}))
    w0 = model.initializer("c.0.weight")
    w1 = pruned.initializer("c.0.weight")
    np.testing.assert_array_equal(w1, np.delete(w0, [0, 6 + 9], axis=1))


def test_prune_file_shrinks_with_params(tmp_path):
    proto, _ = build("flatgemm")
    src = tmp_path / "m.onnx"
    onnx.save(proto, str(src))
    model = osl.load(src)
    plan = plan_pruning(model, 0.5)
    pruned = prune(model, plan)
    assert abs(plan.meta["achieved_ratio"] - 0.5) <= 0.02
    out = pruned.save(tmp_path / "p.onnx")
    removed = model.num_params - pruned.num_params
    assert removed == plan.meta["removed_params"]
    meta_bytes = sum(len(p.key) + len(p.value) for p in pruned.proto.metadata_props)
    # the file loses the float32 bytes of the removed parameters and gains the recorded plan (and a few names)
    assert abs((src.stat().st_size - out.stat().st_size) - (4 * removed - meta_bytes)) < 1024
    with pytest.raises(OnnxSliceError, match="refusing to overwrite"):
        osl.save_model(pruned.proto, src, source=model.path)


@pytest.mark.parametrize(
    ("layers", "match"),
    [
        ({"/c1/Conv": 1.0}, r"\[0, 1\)"),
        ({"/c1/Conv": -0.1}, r"\[0, 1\)"),
        ({"/nope/Conv": 0.2}, "unknown layer"),
        ({"/c1/Conv": {"remove": [0, 9]}}, "distinct channels"),
        ({"/c1/Conv": {"remove": [0, 1, 2, 3, 4, 5]}}, "leaves no channel"),
        ({"/c1/Conv": "half"}, "ratio"),
    ],
)
def test_prune_bad_plan_raises_and_writes_nothing(tmp_path, layers, match):
    proto, _ = build("flatgemm")
    model = osl.load(proto)
    with pytest.raises(PlanError, match=match):
        prune(model, Plan("prune", layers)).save(tmp_path / "out.onnx")
    assert not list(tmp_path.iterdir())


def test_prune_grouped_conv_removes_equally_per_group():
    proto, x = build("depthwise")
    model = osl.load(proto)
    with pytest.raises(PlanError, match="same number"):
        prune(model, Plan("prune", {"/grouped/grouped.0/Conv": {"remove": [0, 1]}}))
    pruned = prune(model, Plan("prune", {"/grouped/grouped.0/Conv": 0.5}))
    assert pruned.initializer("grouped.0.weight").shape == (4, 4, 3, 3)
    assert run_ort(pruned, {"x": x})[0].shape == (4, 4)


def test_prune_unstructured_zeroes_planned_fraction():
    proto, _x = build("flatgemm")
    model = osl.load(proto)
    pruned = prune(model, plan_pruning(model, 0.4, mode="unstructured"))
    total = sum(model.initializer(layer.weight).size for layer in model.layers)
    zeros = sum(int((pruned.initializer(layer.weight) == 0).sum()) for layer in model.layers)
    assert abs(zeros / total - 0.4) < 0.01
    for layer in model.layers:  # the smallest magnitudes went
        w0, w1 = model.initializer(layer.weight), pruned.initializer(layer.weight)
        assert np.abs(w0[w1 == 0]).max() <= np.abs(w0[w1 != 0]).min()


def test_rewritten_model_keeps_the_sources_accuracy_only_as_a_claim_about_the_source():
    """A reference model's ``test_accuracy`` describes it, not the pruned model: it moves to ``source.``."""
    from _common import ROOT

    model = osl.load(str(ROOT / "models" / "lenet5.onnx"))
    before = {p.key: p.value for p in model.proto.metadata_props}
    assert "test_accuracy" in before
    pruned = prune(model, plan_pruning(model, 0.3, mode="structured"))
    meta = {p.key: p.value for p in pruned.proto.metadata_props}
    assert "test_accuracy" not in meta and meta["source.test_accuracy"] == before["test_accuracy"]
    assert meta["seed"] == before["seed"]  # other source metadata is kept as it was
    again = prune(pruned, plan_pruning(pruned, 0.2, mode="structured"))  # no source.source. chains
    assert {p.key for p in again.proto.metadata_props} >= {"source.test_accuracy"}
    assert not any(p.key.startswith("source.source.") for p in again.proto.metadata_props)
    assert {p.key: p.value for p in model.proto.metadata_props} == before  # the input is untouched
