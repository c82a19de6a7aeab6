"""Helpers to build small ONNX models and compare models numerically (for tests and examples)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxslice.record import make_session, runtime_proto

__all__ = ["assert_models_close", "make_model", "run_ort"]

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
