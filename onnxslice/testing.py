"""Helpers to build small ONNX models and compare models numerically (for tests and examples)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxslice.record import make_session, runtime_proto

__all__ = ["assert_models_close", "features_model", "make_model", "run_ort"]

#: IR version of the models built here: one every supported onnxruntime accepts.
TEST_IR_VERSION = 10


def make_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Mapping[str, tuple[Any, Sequence[int | str | None]]],
    outputs: Mapping[str, tuple[Any, Sequence[int | str | None] | None]],
    initializers: Mapping[str, np.ndarray] | None = None,
    *,
    opset: int = 17,
    extra_opsets: Mapping[str, int] | None = None,
    name: str = "test",
) -> onnx.ModelProto:
    """A checked ModelProto from nodes, ``{name: (dtype, shape)}`` inputs/outputs and initializers."""

    def vi(n: str, dtype: Any, shape: Sequence[int | str | None] | None) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), shape)

    graph = helper.make_graph(
        list(nodes),
        name,
        [vi(k, *v) for k, v in inputs.items()],
        [vi(k, *v) for k, v in outputs.items()],
        [numpy_helper.from_array(np.asarray(a), k) for k, a in (initializers or {}).items()],
    )
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in (extra_opsets or {}).items()]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=TEST_IR_VERSION, producer_name="onnxslice-test")
    onnx.checker.check_model(model)
    return model


def run_ort(model: onnx.ModelProto | Any, feed: Mapping[str, np.ndarray], optimize: bool = False) -> list[np.ndarray]:
    """Run a ModelProto (or an onnxslice Model) on CPU onnxruntime and return all outputs."""
    proto = model.proto if hasattr(model, "proto") else model
    sess = make_session(runtime_proto(proto), "cpu", optimize=optimize)
    return list(sess.run(None, dict(feed)))


def assert_models_close(
    a: onnx.ModelProto | Any,
    b: onnx.ModelProto | Any,
    feed: Mapping[str, np.ndarray],
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> None:
    """Assert that two models give the same outputs on ``feed`` under onnxruntime."""
    for i, (x, y) in enumerate(zip(run_ort(a, feed), run_ort(b, feed), strict=True)):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=f"output {i} differs")


def features_model(props: Mapping[str, str] | None = None, producer: str = "onnxslice.testing") -> onnx.ModelProto:
    """A small model with what a graph rewrite must keep: an ``If`` with then/else bodies, a model-local
    function, an initializer and ``metadata_props`` (``props``); full-checked."""
    then_g = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", onnx.TensorProto.FLOAT, [2])])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", onnx.TensorProto.FLOAT, [2])])
    fn = helper.make_function("local", "Twice", ["a"], ["b"], [helper.make_node("Add", ["a", "a"], ["b"])],
                              [helper.make_opsetid("", 18)])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["c"]),
             helper.make_node("If", ["c"], ["y0"], then_branch=then_g, else_branch=else_g),
             helper.make_node("Twice", ["y0"], ["y"], domain="local")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
                          [numpy_helper.from_array(np.zeros((), np.float32), "zero")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("local", 1)],
                          functions=[fn], producer_name=producer)
    m.ir_version = TEST_IR_VERSION
    helper.set_model_props(m, dict(props or {}))
    onnx.checker.check_model(m, full_check=True)
    return m
