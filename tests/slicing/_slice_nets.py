"""Small models for slicing tests: the paper's worked example and a residual CNN with a shape subgraph."""

from __future__ import annotations

import numpy as np
from onnx import helper

from onnxslice.model import Model, load
from onnxslice.profile import Profile
from onnxslice.testing import make_model

W1 = np.array([[3, 1], [-2, 2], [0, 1]], np.float32)
W2 = np.array([[1, 0, 2], [-1, 3, -2]], np.float32)
W3 = np.array([[2, 1], [1, 3]], np.float32)


def worked_example_model() -> Model:
    """ALGORITHMS.md's example: three weighted sums, no bias, no activation (rows = output neurons)."""
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h1"]),
        helper.make_node("Gemm", ["h1", "W2"], ["h2"], transB=1),
        helper.make_node("MatMul", ["h2", "W3"], ["out"]),
    ]
    proto = make_model(
        nodes,
        {"x": (np.float32, ["N", 2])},
        {"out": (np.float32, ["N", 2])},
        {"W1": W1.T.copy(), "W2": W2, "W3": W3.T.copy()},
    )
    return load(proto)


def zero_profile(model: Model) -> Profile:
    shapes = {"x": (2,), "h1": (3,), "h2": (2,), "out": (2,)}
    return Profile({k: np.zeros(s, np.float32) for k, s in shapes.items()}, 1, model.fingerprint)


def cnn_model(fixed_batch: bool = False) -> Model:
    """Conv-BN-Relu, a residual block, MaxPool, GAP, an exporter-style Shape->Reshape, Gemm."""
    rng = np.random.default_rng(7)

    def w(*s: int) -> np.ndarray:
        return (rng.standard_normal(s) * 0.4).astype(np.float32)

    bn = {
        "bn_s": np.abs(w(4)) + 0.5,
        "bn_b": w(4),
        "bn_m": w(4) * 0.1,
        "bn_v": np.abs(w(4)) + 0.5,
    }
    nodes = [
        helper.make_node("Conv", ["x", "c1_w", "c1_b"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"]),
        helper.make_node("Relu", ["bn"], ["r1"]),
        helper.make_node("Conv", ["r1", "c2_w"], ["c2"], pads=[1, 1, 1, 1], group=2),
        helper.make_node("Add", ["c2", "r1"], ["res"]),
        helper.make_node("Clip", ["res", "zero", "six"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["mp"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["mp"], ["gap"]),
        helper.make_node("Shape", ["gap"], ["shp"]),
        helper.make_node("Gather", ["shp", "idx0"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["newshape"], axis=0),
        helper.make_node("Reshape", ["gap", "newshape"], ["flat"]),
        helper.make_node("Identity", ["flat"], ["flat2"]),
        helper.make_node("Gemm", ["flat2", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    inits = {
        "c1_w": w(4, 1, 3, 3),
        "c1_b": w(4),
        **bn,
        "c2_w": w(4, 2, 3, 3),
        "zero": np.array(0, np.float32),
        "six": np.array(6, np.float32),
        "idx0": np.array(0, np.int64),
        "ax0": np.array([0], np.int64),
        "minus1": np.array([-1], np.int64),
        "fc_w": w(5, 4) * 3,
        "fc_b": w(5) * 0.1,
    }
    batch = 1 if fixed_batch else "N"
    proto = make_model(nodes, {"x": (np.float32, [batch, 1, 6, 6])}, {"logits": (np.float32, [batch, 5])}, inits)
    return load(proto)


def cnn_data(n: int = 24) -> np.ndarray:
    rng = np.random.default_rng(3)  # per-sample contrast, so that pooled features really vary between samples
    return (rng.random((n, 1, 6, 6)) * rng.uniform(0.0, 3.0, (n, 1, 1, 1)) - 0.5).astype(np.float32)
