"""Every VJP rule against central finite differences along random directions (one table of op cases).

float64 where onnxruntime runs the op in double, else float32 with dtype-keyed tolerances
(``onnxslice.grad.check.TOLERANCES``) and, in addition, float64 through ONNX's reference evaluator.
"""

from __future__ import annotations

import functools
import zlib

import numpy as np
import onnx
import pytest
from _vjp_cases import CASES, Case, generate
from _vjp_cases_extra import NO_REFERENCE, STRAIGHT_THROUGH_ONLY
from onnx import helper, numpy_helper
from onnxslice.opsets import REGISTRY

from onnxslice.errors import OnnxSliceError
from onnxslice.grad import check_vjp
from onnxslice.grad.check import APPROXIMATE_IN_REFERENCE
from onnxslice.record import make_session, runtime_proto

REQUIRED = [
    "Conv",
    "ConvTranspose",
    "Gemm",
    "MatMul",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Relu",
    "LeakyRelu",
    "Clip",
    "Sigmoid",
    "Tanh",
    "HardSigmoid",
    "HardSwish",
    "Erf",
    "Gelu",
    "Softmax",
    "LogSoftmax",
    "Exp",
    "Log",
    "Sqrt",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "BatchNormalization",
    "LayerNormalization",
    "ReduceMean",
    "ReduceSum",
    "Flatten",
    "Reshape",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Concat",
    "Split",
    "Slice",
    "Gather",
    "Pad",
    "Identity",
    "Dropout",
    "Cast",
    "Where",
]


def build(case: Case, dtype: type) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    rng = np.random.default_rng(zlib.crc32(case.id.encode()))
    names, graph_inputs, inits, feed = [], [], [], {}
    for k, (kind, spec) in enumerate(case.inputs):
        name = f"in{k}"
        if kind == "":
            names.append("")
            continue
        names.append(name)
        if kind in ("x", "w"):
            arr = np.asarray(spec) if isinstance(spec, np.ndarray) else generate(case.gen, spec, rng)
            arr = arr.astype(dtype)
            if kind == "x":
                feed[name] = arr
                graph_inputs.append(
                    helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(arr.dtype), arr.shape)
                )
            else:
                inits.append(numpy_helper.from_array(arr, name))
        elif kind == "c":
            inits.append(numpy_helper.from_array(np.asarray(spec, dtype=dtype), name))
        else:
            inits.append(numpy_helper.from_array(np.asarray(spec), name))
    outs = [f"out{k}" for k in range(case.outputs)]
    out_type = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    if case.op == "Cast":
        out_type = int(case.attrs["to"])
    node = helper.make_node(case.op, names, outs, **case.attrs)

    def make(shapes: list[tuple[int, ...] | None]) -> onnx.ModelProto:
        types = [onnx.TensorProto.INT64 if case.op == "TopK" and k == 1 else out_type for k in range(len(outs))]
        vis = [helper.make_tensor_value_info(o, t, s) for o, t, s in zip(outs, types, shapes, strict=True)]
        graph = helper.make_graph([node], case.id, graph_inputs, vis, inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", case.opset)], ir_version=8)

    # output shapes from one onnxruntime run (the checker wants them declared)
    got = make_session(runtime_proto(make([None] * len(outs))), "cpu").run(None, feed)
    model = make([r.shape for r in got])
    onnx.checker.check_model(model)
    return model, feed


def fixed_inputs(case: Case) -> list[str]:
    return [f"in{k}" for k, (kind, _) in enumerate(case.inputs) if kind == "c"]


@functools.cache
def runs_in_double(case_id: str) -> bool:
    case = next(c for c in CASES if c.id == case_id)
    try:
        build(case, np.float64)
        return True
    except OnnxSliceError:
        return False


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_vjp_rule_matches_finite_differences(case: Case) -> None:
    double = not case.dtype and runs_in_double(case.id)
    dtype = np.dtype(case.dtype) if case.dtype else np.float64 if double else np.float32
    model, feed = build(case, dtype)
    for seed in (0, 1):
        res = check_vjp(model, feed, seed=seed, fixed=fixed_inputs(case))
        if double or res.resolution < res.tolerance / 3:  # else float32 rounding drowns the difference
            assert res.ok, f"{case.id} ({np.dtype(dtype).name}): {res}"
        if not double and case.op not in APPROXIMATE_IN_REFERENCE | NO_REFERENCE:
            # onnxruntime runs the op in float32 only: check the rule in float64 on onnx.reference too
            try:
                ref = check_vjp(model, feed, seed=seed, fixed=fixed_inputs(case), backend="reference")
            except OnnxSliceError as e:  # e.g. onnx.reference's grouped ConvTranspose is broken
                assert "onnx.reference cannot run" in str(e)
                continue
            assert ref.ok, f"{case.id} (float64, onnx.reference): {ref}"


def test_vjp_rules_cover_the_required_ops() -> None:
    have = {op for _, op in REGISTRY.ops("vjp")}
    assert not set(REQUIRED) - have


def test_vjp_every_rule_has_a_case() -> None:
    have = {op for _, op in REGISTRY.ops("vjp")}
    tested = {c.op for c in CASES} | STRAIGHT_THROUGH_ONLY
    assert not have - tested, f"untested VJP rules: {sorted(have - tested)}"


def test_vjp_case_ids_are_unique() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
