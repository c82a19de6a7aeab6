"""LRN's VJP in float64 against central differences of the spec's formula (onnx.reference's LRN does not
follow it, and onnxruntime runs LRN in float32 with odd sizes only: the op-case table checks those)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper
from onnxslice.opsets import REGISTRY
from onnxslice.opsets.capabilities.vjp import VjpContext
from onnxslice.opsets.vjp.eager import EAGER

from onnxslice.model import load
from onnxslice.testing import run_ort


def lrn(x: np.ndarray, size: int, alpha: float, beta: float, bias: float) -> np.ndarray:
    """The ONNX spec: the sum of squares over channels max(0, c - floor((size-1)/2)) .. min(C-1, c + ceil(...))."""
    lo, hi = (size - 1) // 2, size // 2
    c = x.shape[1]
    sq = x * x
    s = np.stack([sq[:, max(0, k - lo) : min(c - 1, k + hi) + 1].sum(axis=1) for k in range(c)], axis=1)
    return x / (bias + alpha / size * s) ** beta


def _model(shape: tuple[int, ...], attrs: dict[str, Any]) -> Any:
    node = helper.make_node("LRN", ["x"], ["y"], name="lrn", **attrs)
    graph = helper.make_graph([node], "lrn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))])
    return load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=9))


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 6])
def test_lrn_vjp_matches_central_differences_in_float64(size: int) -> None:
    attrs = {"size": size, "alpha": 0.7, "beta": 0.6, "bias": 1.5}
    shape = (2, 7, 3, 2)
    rng = np.random.default_rng(size)
    x = rng.uniform(0.3, 2.0, shape) * np.sign(rng.standard_normal(shape))
    g = rng.standard_normal(shape)
    model = _model(shape, attrs)
    y = lrn(x, size, attrs["alpha"], attrs["beta"], attrs["bias"])
    rule = REGISTRY.lookup("vjp", "LRN", "", 13)
    (dx,) = rule.prim(EAGER, VjpContext(model.node("lrn"), [x], [y], [g], (True,)))
    eps = 1e-6
    num = np.zeros_like(x)
    for i in np.ndindex(shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += eps
        xm[i] -= eps
        num[i] = np.sum(g * (lrn(xp, size, 0.7, 0.6, 1.5) - lrn(xm, size, 0.7, 0.6, 1.5))) / (2 * eps)
    assert dx.dtype == np.float64
    np.testing.assert_allclose(dx, num, rtol=2e-6, atol=1e-8)  # central differences: ~1e-7 of their own


@pytest.mark.parametrize("size", [3, 5])
def test_the_twin_is_onnxruntimes_lrn(size: int) -> None:
    attrs = {"size": size, "alpha": 0.5, "beta": 0.75, "bias": 1.0}
    x = np.random.default_rng(0).uniform(0.5, 2.0, (1, 7, 2, 2)).astype(np.float32)
    (y,) = run_ort(_model(x.shape, attrs), {"x": x})
    np.testing.assert_allclose(y, lrn(x.astype(np.float64), size, 0.5, 0.75, 1.0), rtol=1e-6)
