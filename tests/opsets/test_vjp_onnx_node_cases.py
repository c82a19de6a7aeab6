"""The VJP check over the ONNX package's own node tests, for every op type that has a VJP rule.

The onnx wheel ships the generators of its node tests (``onnx/backend/test/case/node/*.py``), not the
generated ``data/node`` folder, so the cases are generated here once per session with
``onnx.backend.test.case.node.collect_testcases`` (in memory; ~10 s). Every single-node case whose op
has a rule is checked against central finite differences. Cases onnxruntime cannot run, cases
whose point is not differentiable along the random direction (an input on a Relu's 0, a tie in a
max) and op configurations the rules refuse on purpose (training-mode BatchNormalization, random
Dropout) are skipped with the reason.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import numpy as np
import onnx
import pytest
from _vjp_cases_extra import FLOAT32_INSIDE, STRAIGHT_THROUGH_ONLY
from onnx import numpy_helper
from onnxslice.opsets import REGISTRY

from onnxslice.errors import DataError, OnnxSliceError, UnsupportedOpError
from onnxslice.grad import check_vjp
from onnxslice.grad.check import APPROXIMATE_IN_REFERENCE, as_double
from onnxslice.model import load

VJP_OPS = sorted(op for d, op in REGISTRY.ops("vjp") if d == "")


@functools.cache
def node_cases() -> dict[str, list[Any]]:
    """op type -> the ONNX node test cases that consist of one node of that op."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        cases = collect_testcases()
    by_op: dict[str, list[Any]] = {}
    for case in cases:
        nodes = case.model.graph.node
        if len(nodes) == 1 and nodes[0].domain in ("", "ai.onnx") and case.data_sets:
            by_op.setdefault(nodes[0].op_type, []).append(case)
    return by_op


def _check(model: Any, feed: dict[str, np.ndarray], fixed: list[str]) -> Any:
    """float64 through onnxruntime where it has double kernels, else onnx.reference in float64."""
    if model.nodes[0].op_type in FLOAT32_INSIDE:  # float64 data, float32 statistics: only float32 is meaningful
        return check_vjp(model, feed, fixed=fixed)
    double = load(as_double(model.proto))
    feed64 = {k: v.astype(np.float64) if np.issubdtype(v.dtype, np.floating) else v for k, v in feed.items()}
    try:
        return check_vjp(double, feed64, fixed=fixed)
    except OnnxSliceError as e:
        if isinstance(e, (DataError, UnsupportedOpError)):
            raise
    if model.nodes[0].op_type in APPROXIMATE_IN_REFERENCE:
        return check_vjp(model, feed, fixed=fixed)
    return check_vjp(model, feed, fixed=fixed, backend="reference")


def _run_case(case: Any) -> str | None:
    """Check one case; returns a skip reason or None when it passed (raises AssertionError on failure)."""
    inputs, _ = case.data_sets[0]
    graph = case.model.graph
    feed = {
        vi.name: numpy_helper.to_array(v) if isinstance(v, onnx.TensorProto) else np.asarray(v)
        for vi, v in zip(graph.input, inputs, strict=False)
    }
    if not any(np.issubdtype(v.dtype, np.floating) for v in feed.values()) and not graph.initializer:
        return "no float input"
    if any(v.dtype == np.float16 or str(v.dtype) == "bfloat16" for v in feed.values()):
        return "half-precision case"
    try:
        model = load(case.model)
    except OnnxSliceError as e:
        return f"onnxslice cannot load it: {e}"
    node = model.nodes[0]
    if node.op_type in STRAIGHT_THROUGH_ONLY:
        return "straight-through estimator, not a derivative (checked against torch's fake-quantize)"
    info = model.info(node)
    fixed = [node.inputs[i] for i in info.non_differentiable if i < len(node.inputs) and node.inputs[i]]
    try:
        res = _check(model, feed, fixed)
    except UnsupportedOpError as e:
        return f"refused on purpose: {e}"
    except DataError as e:
        return str(e)
    except OnnxSliceError as e:
        return f"onnxruntime cannot run it: {str(e)[:120]}"
    if res.resolution > res.tolerance / 3:
        return f"values too large for finite differences in their dtype ({res})"
    if res.kink:
        return f"not differentiable at this point along the direction ({res})"
    assert res.ok, f"{case.name}: {res}"
    return None


@pytest.mark.parametrize("op", VJP_OPS)
def test_vjp_matches_finite_differences_on_onnx_node_cases(op: str) -> None:
    cases = node_cases().get(op, [])
    if not cases:
        pytest.skip(f"the onnx package has no single-node test case for {op}")
    skipped: dict[str, str] = {}
    checked = 0
    failures = []
    for case in cases:
        try:
            reason = _run_case(case)
        except AssertionError as e:
            failures.append(str(e))
            continue
        if reason is None:
            checked += 1
        else:
            skipped[case.name] = reason
    assert not failures, "\n".join(failures)
    if not checked:
        pytest.skip(f"no {op} case could be checked: " + "; ".join(f"{k}: {v}" for k, v in list(skipped.items())[:3]))
