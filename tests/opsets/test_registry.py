"""The version-aware plugin registry: ranges, overlaps, misses that name what is missing."""

from __future__ import annotations

import pytest
from onnxslice.opsets import REGISTRY, OpInfo, Registry, RegistryError

from onnxslice.errors import UnsupportedOpError


def test_registry_lookup_by_opset_range() -> None:
    reg = Registry()
    reg.add("vjp", "Squeeze", "axes-attr", since=1, until=12)
    reg.add("vjp", "Squeeze", "axes-input", since=13)
    assert reg.lookup("vjp", "Squeeze", "", 11) == "axes-attr"
    assert reg.lookup("vjp", "Squeeze", "ai.onnx", 13) == "axes-input"
    assert reg.lookup("vjp", "Squeeze", "", 21) == "axes-input"


@pytest.mark.parametrize(("first", "second"), [((1, None), (5, 9)), ((1, 12), (12, None)), ((3, 7), (1, 3))])
def test_registry_overlapping_ranges_fail(first: tuple, second: tuple) -> None:
    reg = Registry()
    reg.add("vjp", "Relu", "a", since=first[0], until=first[1])
    with pytest.raises(RegistryError, match=r"overlapping 'vjp' rules for ai\.onnx::Relu"):
        reg.add("vjp", "Relu", "b", since=second[0], until=second[1])


def test_registry_same_op_other_domain_or_capability_do_not_overlap() -> None:
    reg = Registry()
    reg.add("vjp", "Relu", "a")
    reg.add("contributions", "Relu", "b")
    reg.add("vjp", "Relu", "c", domain="com.example")
    assert reg.lookup("vjp", "Relu", "com.example", 1) == "c"


def test_registry_miss_names_op_domain_opset_node_and_capability() -> None:
    reg = Registry()
    with pytest.raises(UnsupportedOpError) as info:
        reg.lookup("prune", "Einsum", "", 17, node="blk/einsum_3")
    err = info.value
    assert (err.op_type, err.domain, err.opset, err.capability, err.node) == ("Einsum", "", 17, "prune", "blk/einsum_3")
    assert "no 'prune' rule for op ai.onnx::Einsum (opset 17) at node 'blk/einsum_3'" in str(err)
    assert err.exit_code == 3


def test_registry_miss_outside_range_suggests_conversion() -> None:
    reg = Registry()
    reg.add("vjp", "Split", "new", since=13)
    with pytest.raises(UnsupportedOpError, match=r"Rules exist for opsets 13\.\.latest.*version_converter"):
        reg.lookup("vjp", "Split", "", 11)


def test_registry_rejects_unknown_capability_and_empty_range() -> None:
    reg = Registry()
    with pytest.raises(RegistryError, match="unknown capability 'fly'"):
        reg.add("fly", "Relu", "x")
    with pytest.raises(RegistryError, match="empty opset range"):
        reg.add("vjp", "Relu", "x", since=9, until=3)
    reg.declare_capability("fly")
    reg.add("fly", "Relu", "x")


def test_registry_decorator_registers_a_family() -> None:
    reg = Registry()

    @reg.register("vjp", ["Relu", "LeakyRelu"], since=6)
    def gate() -> None: ...

    assert reg.find("vjp", "LeakyRelu", "", 16) is gate
    assert reg.find("vjp", "Relu", "", 5) is None
    assert list(reg.ops("vjp")) == [("", "LeakyRelu"), ("", "Relu")]


def test_global_registry_has_info_for_common_ops() -> None:
    for op in ("Conv", "Gemm", "MatMul", "Relu", "Add", "Reshape", "BatchNormalization", "MaxPool", "Softmax"):
        info = REGISTRY.find("info", op, "", 17)
        assert isinstance(info, OpInfo), op
    conv = REGISTRY.lookup("info", "Conv", "", 17)
    assert conv.layer_weights == (1,) and conv.bias_input == 2 and conv.may_be_layer
    assert REGISTRY.lookup("info", "Reshape", "", 17).layout_only
