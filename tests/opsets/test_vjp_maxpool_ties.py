"""MaxPool's VJP gives each window's cotangent to its first arg-max (row-major), ties included (zeros after Relu)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from onnxslice.grad import GradientEngine
from onnxslice.testing import make_model


def _loop(x: np.ndarray, g: np.ndarray, k: int) -> np.ndarray:
    dx = np.zeros_like(x)
    n, c, h, w = x.shape
    for a in range(n):
        for b in range(c):
            for i in range(h // k):
                for j in range(w // k):
                    tile = x[a, b, i * k : i * k + k, j * k : j * k + k]
                    p, q = np.unravel_index(int(np.argmax(tile)), tile.shape)  # first maximum, row-major
                    dx[a, b, i * k + p, j * k + q] += g[a, b, i, j]
    return dx


@pytest.mark.parametrize("size", [6, 7])
def test_maxpool_vjp_matches_first_argmax_loop_with_ties(size: int) -> None:
    model = make_model(
        [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2])],
        {"x": (np.float32, ["N", 2, size, size])},
        {"y": (np.float32, ["N", 2, size // 2, size // 2])},
        {},
    )
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, (3, 2, size, size)).astype(np.float32)  # many ties
    cot = rng.standard_normal((3, 2, size // 2, size // 2)).astype(np.float32)
    g = GradientEngine(model, "cotangent", device="cpu")(x, cotangent=cot)
    np.testing.assert_array_equal(g.inputs["x"], _loop(x, cot, 2))
