"""The walker: topological order, ancestor-restricted reverse walks, missing-rule policies."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper
from onnxslice.opsets import Registry

import onnxslice as osl
from onnxslice.errors import ModelError, UnsupportedOpError
from onnxslice.walk import Walker, ancestors, descendants, topological_order


def test_topological_order_fixes_shuffled_nodes(cnn_proto: onnx.ModelProto) -> None:
    nodes = list(cnn_proto.graph.node)
    del cnn_proto.graph.node[:]
    cnn_proto.graph.node.extend(reversed(nodes))
    m = osl.load(cnn_proto, check=False)
    assert [n.name for n in m.nodes] == ["conv", "bn", "relu", "pool", "flatten", "fc"]


def test_topological_order_detects_cycles() -> None:
    from onnxslice.model import Node

    a = Node("a", "Relu", "", ("b_out",), ("a_out",), {}, 17)
    b = Node("b", "Relu", "", ("a_out",), ("b_out",), {}, 17)
    with pytest.raises(ModelError, match="cycle"):
        topological_order([a, b], [], set())


def test_walker_reverse_only_visits_ancestors_of_start(cnn_proto: onnx.ModelProto) -> None:
    m = osl.load(cnn_proto)
    names = [s.node.name for s in Walker(m).reverse(start=["r"])]
    assert names == ["relu", "bn", "conv"]
    assert ancestors(m, ["p"]) == {"conv", "bn", "relu", "pool"}
    assert descendants(m, ["p"]) == {"flatten", "fc"}
    assert [s.node.name for s in Walker(m).forward(until=["b"])] == ["conv", "bn"]


def test_walker_dispatches_rules_and_handles_misses(cnn_proto: onnx.ModelProto) -> None:
    m = osl.load(cnn_proto)
    reg = Registry()
    reg.add("vjp", "Relu", "relu-rule")
    reg.add("vjp", "Conv", "conv-rule")
    walker = Walker(m, reg)
    with pytest.raises(UnsupportedOpError, match=r"no 'vjp' rule for op ai\.onnx::Gemm .* at node 'fc'"):
        list(walker.reverse("vjp"))
    assert [(s.node.name, s.rule) for s in walker.reverse("vjp", on_missing="skip")] == [
        ("relu", "relu-rule"),
        ("conv", "conv-rule"),
    ]
    assert [s.rule for s in walker.forward("vjp", on_missing="yield")][:3] == ["conv-rule", None, "relu-rule"]
    seen: list[str] = []
    fallback = [s.rule for s in walker.reverse("vjp", on_missing=lambda n, e: seen.append(e.capability) or "fd")]
    assert fallback == ["fd", "fd", "fd", "relu-rule", "fd", "conv-rule"] and set(seen) == {"vjp"}
    assert [n.name for n in walker.missing("vjp")] == ["bn", "pool", "flatten", "fc"]


def test_walker_miss_names_the_opsets_that_have_a_rule(cnn_proto: onnx.ModelProto) -> None:
    """A rule registered only for later opsets: the walker's error says which, and how to convert."""
    m = osl.load(cnn_proto)
    reg = Registry()
    reg.add("vjp", "Gemm", "gemm-rule", since=m.node("fc").opset + 1)
    hint = r"at node 'fc'\. Rules exist for opsets \d+\.\.latest.*version_converter"
    with pytest.raises(UnsupportedOpError, match=hint):
        list(Walker(m, reg).reverse("vjp"))


def test_model_lookups(cnn_proto: onnx.ModelProto) -> None:
    m = osl.load(cnn_proto)
    assert m.producer("r").name == "relu" and m.producer("x") is None
    assert [n.name for n in m.consumers("x")] == ["conv"]
    assert m.node("fc").attr("transB") == 1 and m.node("fc").attr("alpha", 1.0) == 1.0
    with pytest.raises(ModelError, match="no node named 'zz'"):
        m.node("zz")
    with pytest.raises(ModelError, match="no layer named 'relu'; layers are: conv, fc"):
        m.layer("relu")


def test_model_decodes_attributes_and_infers_shapes() -> None:
    """Node attributes decode to Python values; shape inference types every value."""
    n = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], strides=[2, 2])
    g = helper.make_graph(
        [n, helper.make_node("Relu", ["y"], ["z"])],
        "g",
        [
            helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 4, 4]),
            helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [1, 1, 3, 3]),
        ],
        [helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, ["a", "b", "c", "d"])],
    )
    m = osl.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10))
    assert m.nodes[0].attrs == {"pads": [1, 1, 1, 1], "strides": [2, 2]}
    assert m.value_info["y"].shape == (1, 1, 2, 2)
    assert np.dtype(m.value_info["y"].dtype) == np.float32
