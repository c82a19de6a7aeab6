"""The output-channel axis of a layer's weight has one home (its family's ``out_axis``) and every user agrees.

Before the op families owned it, ``slicing.result.layer_records`` computed the axis itself and disagreed
with ``Model.layers`` when the weight was input 0 (``W @ x``): it took W's last axis, the input features.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import helper
from onnxslice.opsets import REGISTRY

from onnxslice.model import Model, load
from onnxslice.slicing.result import layer_records
from onnxslice.testing import make_model

ROOT = Path(__file__).resolve().parents[2]


def _weight_first(op: str, **attrs: Any) -> tuple[Model, int]:
    """``W @ x`` (MatMul) or ``Gemm(W, x)``: W [4, 3] is input 0, so the 4 rows are the neurons."""
    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    if attrs.get("transA"):
        w = np.ascontiguousarray(w.T)  # A' = W^T^T: still 4 neurons, now on axis 1
    proto = make_model(
        [helper.make_node(op, ["W", "x"], ["y"], **attrs)],
        {"x": (np.float32, [3, 2])},
        {"y": (np.float32, [4, 2])},
        {"W": w},
    )
    return load(proto), 1 if attrs.get("transA") else 0


@pytest.mark.parametrize(("op", "attrs"), [("MatMul", {}), ("Gemm", {}), ("Gemm", {"transA": 1})])
def test_weight_as_input_0_has_one_out_axis(op: str, attrs: dict[str, int]) -> None:
    model, axis = _weight_first(op, **attrs)
    (layer,) = model.layers
    assert layer.weight_input == 0
    assert layer.out_axis == axis and layer.out_channels == 4
    (record,) = layer_records(model)
    assert record["axis"] == layer.out_axis  # the old layer_records said 1 for these three (W's features)
    assert model.initializer("W").shape[layer.out_axis] == 4  # the rows of y, the neurons


@pytest.mark.parametrize("name", ["lenet5", "resnet8_mnist", "mlp_digits"])
def test_every_user_reads_the_family_out_axis(name: str) -> None:
    model = load(ROOT / "models" / f"{name}.onnx")
    for layer, record in zip(model.layers, layer_records(model), strict=True):
        node = model.node(layer.name)
        info = REGISTRY.find("info", node.op_type, node.domain, node.opset)
        w = model.initializer(layer.weight)
        assert record["axis"] == layer.out_axis == info.weight_out_axis(node.attr, w.ndim, layer.weight_input)
        groups = int(node.attr("group", 1)) if node.op_type == "ConvTranspose" else 1
        assert w.shape[layer.out_axis] * groups == layer.out_channels
        rule = REGISTRY.find("prune", node.op_type, node.domain, node.opset)
        got = rule.source_ref(node, _Consts(model))
        if not isinstance(got, str):  # a prunable layer's group has exactly its out channels
            assert got.size == w.shape[layer.out_axis]


class _Consts:
    """The facts a prune rule asks, read from the model."""

    def __init__(self, model: object) -> None:
        self.m = model

    def shape(self, value: str) -> tuple[int | str | None, ...] | None:
        vi = self.m.value_info.get(value)  # type: ignore[attr-defined]
        if vi is not None and vi.shape is not None:
            return tuple(vi.shape)
        return tuple(self.m.initializer(value).shape) if self.m.is_initializer(value) else None  # type: ignore[attr-defined]

    def is_const(self, value: str) -> bool:
        return bool(self.m.is_initializer(value))  # type: ignore[attr-defined]

    def const(self, value: str) -> np.ndarray:
        return self.m.initializer(value)  # type: ignore[attr-defined]

    def is_graph_output(self, value: str) -> bool:
        return False
