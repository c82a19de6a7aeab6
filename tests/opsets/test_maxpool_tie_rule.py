"""One MaxPool tie rule in both capabilities: a tied window credits its first maximum (row-major), only it.

After a Relu most MaxPool windows of LeNet-5 tie (four zeros); the VJP and the contributions rule used to
disagree there (first arg-max vs every maximum). Both now follow ``onnxslice.opsets.geometry.first_max``.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from onnxslice.opsets import REGISTRY
from onnxslice.opsets.capabilities.contrib import ContribContext
from onnxslice.opsets.geometry import first_max

from onnxslice.grad import GradientEngine
from onnxslice.model import load
from onnxslice.testing import make_model

# one sample, one channel, 4x4 -> 2x2 windows: all zeros | tie at (0,1) and (1,0) | a single max | tie at (1,0),(1,1)
X = np.array(
    [[[[0, 0, 1, 3], [0, 0, 3, 2], [5, 1, 2, 2], [0, 4, 7, 7]]]],
    dtype=np.float32,
)
FIRST = np.array(  # where each window's first maximum is
    [[[[1, 0, 0, 1], [0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0]]]],
    dtype=bool,
)


def _model(op: str) -> object:
    out_shape = [1, 1, 2, 2] if op == "MaxPool" else [1, 1, 1, 1]
    attrs = {"kernel_shape": [2, 2], "strides": [2, 2]} if op == "MaxPool" else {}
    return load(make_model([helper.make_node(op, ["x"], ["y"], **attrs)],
                           {"x": (np.float32, [1, 1, 4, 4])}, {"y": (np.float32, out_shape)}))


def _y(op: str) -> np.ndarray:
    if op == "MaxPool":
        return X.reshape(1, 1, 2, 2, 2, 2).max(axis=(3, 5))
    return X.max(axis=(2, 3), keepdims=True)


def _expected(op: str) -> np.ndarray:
    if op == "MaxPool":
        return FIRST
    flat = X.reshape(-1)
    out = np.zeros(flat.shape, bool)
    out[int(np.argmax(flat))] = True  # 7 at (3, 2) before 7 at (3, 3)
    return out.reshape(X.shape)


@pytest.mark.parametrize("op", ["MaxPool", "GlobalMaxPool"])
def test_vjp_routes_ties_to_the_first_maximum(op: str) -> None:
    model = _model(op)
    cot = np.arange(1, _y(op).size + 1, dtype=np.float32).reshape(_y(op).shape)
    g = GradientEngine(model, "cotangent", device="cpu")(X, cotangent=cot).inputs["x"]
    assert ((g != 0) == _expected(op)).all()
    assert np.isclose(g.sum(), cot.sum())  # each window's cotangent lands once


@pytest.mark.parametrize("op", ["MaxPool", "GlobalMaxPool"])
def test_contributions_route_ties_to_the_first_maximum(op: str) -> None:
    model = _model(op)
    node = model.nodes[0]
    y = _y(op)
    rule = REGISTRY.lookup("contributions", op, "", 17)
    ctx = ContribContext(
        node=node, x=(X,), dx=(X - 10.0,), y=(y,), dy=(y - 10.0,),  # every delta negative, none zero
        out_contrib=(np.ones(y.shape, np.int32),), is_weight=(False,),
    )
    got = rule(ctx).inputs[0]
    assert ((got != 0) == _expected(op)).all()
    assert (got[_expected(op)] == 1).all()  # sign(CONTRIB) * sign(dy) * sign(dx) = 1 * -1 * -1


def test_first_max_is_the_window_order() -> None:
    cols = np.array([[0.0, 0.0, 0.0, 0.0], [1.0, 3.0, 3.0, 2.0], [-np.inf, 2.0, 2.0, 1.0]])
    np.testing.assert_array_equal(first_max(cols, cols.max(axis=1)),
                                  [[1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0]])
