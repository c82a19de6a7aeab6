"""Channel-group discovery: coupling through residual Add and Concat, depthwise/grouped Conv, Flatten->Gemm,
transformer MLP, and the reasons groups are left alone."""

from __future__ import annotations

import numpy as np
import pytest
from _prune_nets import build
from onnx import helper
from onnxslice.opsets.capabilities.prune import Ref

import onnxslice as osl
from onnxslice.rewrite.groups import discover_groups
from onnxslice.testing import make_model


def _groups(name: str):
    proto, _ = build(name)
    return discover_groups(osl.load(proto))


def test_groups_residual_add_couples_layers():
    gs = _groups("residual")
    stem = gs.of_layer("/stem/stem.0/Conv")
    assert stem is not None and stem.prunable
    assert set(stem.layers) == {"/stem/stem.0/Conv", "/b1/b1.1/Conv", "/b2/b2.1/Conv"}
    assert gs.of_layer("/b1/b1.1/Conv") is stem
    cut_names = {n for n, _ in stem.cuts}
    assert {"b1.2.running_var", "b2.0.0.weight", "fc.weight"} <= cut_names  # BN params, consumers, head columns


def test_groups_concat_offsets():
    gs = _groups("concat")
    a, b = gs.of_layer("/a/a.0/Conv"), gs.of_layer("/b/b.0/Conv")
    assert dict(a.cuts)["c.0.weight"] == Ref(1, 0, 1, 6)
    assert dict(b.cuts)["c.0.weight"] == Ref(1, 6, 1, 10)


def test_groups_flatten_gemm_feature_blocks():
    c = _groups("concat").of_layer("/c/c.0/Conv")
    assert dict(c.cuts)["fc.weight"] == Ref(1, 0, 16, 8)  # 4x4 features per channel
    f = _groups("flatgemm").of_layer("/c2/Conv")
    assert dict(f.cuts)["f1.weight"] == Ref(1, 0, 16, 16)
    assert [e.kind for _, e in f.counts] == ["input"]  # the Reshape's hard-coded 256 shrinks


def test_groups_depthwise_follows_and_grouped_conv():
    gs = _groups("depthwise")
    expand = gs.of_layer("/expand/expand.0/Conv")
    assert expand.prunable and expand.followers == ["/dw/dw.0/Conv"]
    assert gs.of_layer("/dw/dw.0/Conv") is expand
    assert [(n, e.name) for n, e in expand.counts] == [("/dw/dw.0/Conv", "group")]
    project = gs.of_layer("/project/project.0/Conv")
    assert not project.prunable and "grouped Conv" in project.reason
    grouped = gs.of_layer("/grouped/grouped.0/Conv")
    assert grouped.prunable and grouped.segments == 2


def test_groups_transformer_mlp_hidden_units():
    gs = _groups("mlp")
    w1 = gs.of_layer("/w1/MatMul")
    assert w1.prunable and w1.size == 24
    assert sorted(r.axis for _, r in w1.cuts) == [0, 0, 1]  # W1 columns, bias, W2 rows
    assert "model input" in gs.of_layer("/w2/MatMul").reason  # residual stream is the input


@pytest.mark.parametrize(
    ("op", "attrs", "reason"),
    [
        ("Softmax", {"axis": 1}, "normalises over axis 1"),
        ("Shape", {}, "reads the channel count"),
        ("TopK", {}, "no prune rule"),
    ],
)
def test_groups_left_alone_with_reason(op, attrs, reason):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 1, 1)).astype(np.float32)
    w2 = rng.standard_normal((2, 4, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["h"], name="conv")]
    inits = {"w": w, "w2": w2}
    if op == "TopK":
        inits["k"] = np.array([1], dtype=np.int64)
        nodes.append(helper.make_node("TopK", ["h", "k"], ["t", "i"], name="odd", axis=1))
        nodes.append(helper.make_node("Conv", ["t", "w2"], ["y"], name="conv2"))
        out_shape = [1, 2, 4, 4]
        inits["w2"] = rng.standard_normal((2, 1, 1, 1)).astype(np.float32)
    elif op == "Shape":
        nodes.append(helper.make_node("Shape", ["h"], ["s"], name="odd"))
        nodes.append(helper.make_node("Conv", ["h", "w2"], ["y"], name="conv2"))
        out_shape = [1, 2, 4, 4]
    else:
        nodes.append(helper.make_node(op, ["h"], ["t"], name="odd", **attrs))
        nodes.append(helper.make_node("Conv", ["t", "w2"], ["y"], name="conv2"))
        out_shape = [1, 2, 4, 4]
    outputs = {"y": (np.float32, out_shape)}
    if op == "Shape":
        outputs["s"] = (np.int64, [4])
    proto = make_model(nodes, {"x": (np.float32, [1, 3, 4, 4])}, outputs, inits)
    gs = discover_groups(osl.load(proto))
    g = gs.of_layer("conv")
    assert not g.prunable
    assert reason in g.reason and "odd" in g.reason
    assert "conv" in gs.skipped


def test_groups_param_accounting_exact():
    proto, _ = build("flatgemm")
    model = osl.load(proto)
    gs = discover_groups(model)
    # remove 2 of c1's 6 channels: c1 loses 2*(25+1), c2 loses 2 input columns of 16*25
    assert gs.removed_params({"/c1/Conv": 2}) == 2 * 26 + 2 * 16 * 25
    # plus 4 of c2's: c2 has 4*(4*25 + 1) fewer, f1 loses 4*16 columns of 32 rows; cross term counted once
    both = gs.removed_params({"/c1/Conv": 2, "/c2/Conv": 4})
    c2_before, c2_after = 16 * 6 * 25 + 16, 12 * 4 * 25 + 12
    assert both == 2 * 26 + (c2_before - c2_after) + 4 * 16 * 32
