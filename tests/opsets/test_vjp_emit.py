"""The emitted VJP graph (``grad --emit``) against the eager engine on the op-case table.

Every case whose op's VJP rule is written against the primitives (:mod:`onnxslice.opsets.vjp.prims`)
is emitted with a ``cotangent`` target and run in onnxruntime (CPU provider, optimizations off); its
input and weight cotangents must match the eager rule's within ``TOL`` of the largest one.
"""

from __future__ import annotations

import numpy as np
import pytest
from _vjp_cases import CASES
from onnxslice.opsets import REGISTRY
from onnxslice.opsets.vjp.prims import PrimRule
from test_vjp_rules import build, fixed_inputs

from onnxslice.errors import UnsupportedOpError
from onnxslice.grad import GradientEngine
from onnxslice.grad.emit import emit_gradient_model, grad_output_name, run_emitted
from onnxslice.grad.lowering import MIN_OPSET

TOL = 2e-4

def _ported_cases() -> list[object]:
    out = []
    for case in CASES:
        rule = REGISTRY.find("vjp", case.op, "", case.opset)
        if isinstance(rule, PrimRule) and not case.dtype and case.opset >= MIN_OPSET:
            out.append(case)
    return out


_CASES = _ported_cases()


@pytest.mark.parametrize("case", _CASES, ids=[c.id for c in _CASES])
def test_emitted_vjp_matches_eager_on_op_cases(case: object) -> None:
    model, feed = build(case, np.float32)  # type: ignore[arg-type]
    engine = GradientEngine(model, "cotangent", swappable=(), exact=True)
    if not engine.input_names and not engine.weight_names:
        pytest.skip("nothing differentiable")
    y = run_emitted_forward(engine, feed)
    cot = np.random.default_rng(0).standard_normal(y.shape).astype(y.dtype)
    try:
        proto = emit_gradient_model(engine, feed)
    except UnsupportedOpError as e:  # a configuration the lowering refuses: one line, naming the op
        assert "vjp emission" in str(e) and case.op in str(e)  # type: ignore[attr-defined]
        return
    res = run_emitted(proto, feed, cot)
    eager = engine.vjp(feed, {engine.output: cot})
    fixed = set(fixed_inputs(case))  # type: ignore[arg-type]
    for k, v in eager.items():
        if k in fixed:
            continue
        scale = max(float(np.abs(v).max()), 1e-3)
        np.testing.assert_allclose(res[grad_output_name(k)], v, rtol=0, atol=TOL * scale, err_msg=k)


def run_emitted_forward(engine: GradientEngine, feed: dict[str, np.ndarray]) -> np.ndarray:
    return engine.recorder.run(feed, validated=True)[engine.output]


def test_op_cases_cover_every_ported_op() -> None:
    ops = {c.op for c in _CASES}  # type: ignore[attr-defined]
    assert {"Conv", "Gemm", "MatMul", "BatchNormalization", "MaxPool", "Relu", "Clip", "Add", "Softmax"} <= ops


