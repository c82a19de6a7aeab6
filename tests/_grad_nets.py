"""Small ONNX models for the gradient tests, built with ``onnxslice.testing.make_model``."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from onnxslice.testing import make_model


def cnn(dtype: type = np.float32, softmax: bool = True, seed: int = 0) -> onnx.ModelProto:
    """Conv-BN-Relu-MaxPool-Conv(depthwise)-Clip-GlobalAveragePool-Flatten-Gemm[-Softmax]; input [N,3,8,8]."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Conv", ["x", "c1.w", "c1.b"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn.s", "bn.b", "bn.m", "bn.v"], ["bn"]),
        helper.make_node("Relu", ["bn"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "dw.w"], ["dw"], group=4, pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["dw", "lo", "hi"], ["r2"]),
        helper.make_node("Add", ["r2", "p1"], ["res"]),
        helper.make_node("GlobalAveragePool", ["res"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], transB=1),
    ]
    out = "logits"
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["prob"], axis=1))
        out = "prob"
    inits = {
        "c1.w": rng.standard_normal((4, 3, 3, 3)) * 0.5,
        "c1.b": rng.standard_normal(4) * 0.1,
        "bn.s": rng.uniform(0.5, 1.5, 4),
        "bn.b": rng.standard_normal(4) * 0.1,
        "bn.m": rng.standard_normal(4) * 0.1,
        "bn.v": rng.uniform(0.5, 2.0, 4),
        "dw.w": rng.standard_normal((4, 1, 3, 3)) * 0.5,
        "lo": np.array(0.0),
        "hi": np.array(6.0),
        "fc.w": rng.standard_normal((5, 4)),
        "fc.b": rng.standard_normal(5) * 0.1,
    }
    inits = {k: v.astype(dtype) for k, v in inits.items()}
    return make_model(nodes, {"x": (dtype, ["N", 3, 8, 8])}, {out: (dtype, ["N", 5])}, inits)


def mlp(dtype: type = np.float64, softmax: bool = False, seed: int = 0) -> onnx.ModelProto:
    """Gemm-Tanh-MatMul(Mul(weight, 0.5))-Add[-LogSoftmax]: runs in double; input [N, 6].

    ``w2 = Mul(w2a, half)`` is a weight-only node (not folded at load, unlike Transpose).
    """
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
        helper.make_node("Tanh", ["h"], ["t"]),
        helper.make_node("Mul", ["w2a", "half"], ["w2"]),
        helper.make_node("MatMul", ["t", "w2"], ["m"]),
        helper.make_node("Add", ["m", "b2"], ["logits"]),
    ]
    out = "logits"
    if softmax:
        nodes.append(helper.make_node("LogSoftmax", ["logits"], ["logp"], axis=1))
        out = "logp"
    inits = {
        "w1": rng.standard_normal((6, 8)),
        "b1": rng.standard_normal(8) * 0.1,
        "w2a": rng.standard_normal((8, 4)),
        "half": np.array(0.5),
        "b2": rng.standard_normal(4) * 0.1,
    }
    inits = {k: v.astype(dtype) for k, v in inits.items()}
    return make_model(nodes, {"x": (dtype, ["N", 6])}, {out: (dtype, ["N", 4])}, inits)


def with_shape_subgraph(dtype: type = np.float32) -> onnx.ModelProto:
    """Reshape driven by an integer Shape -> Gather -> Unsqueeze -> Concat subgraph, then Gemm."""
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Shape", ["x"], ["shp"]),
        helper.make_node("Gather", ["shp", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["newshape"], axis=0),
        helper.make_node("Cast", ["newshape"], ["newshape_f"], to=1),
        helper.make_node("Cast", ["newshape_f"], ["newshape_i"], to=7),
        helper.make_node("Reshape", ["x", "newshape_i"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w", "b"], ["y"]),
    ]
    inits = {
        "zero": np.array(0, dtype=np.int64),
        "axes0": np.array([0], dtype=np.int64),
        "minus1": np.array([-1], dtype=np.int64),
        "w": rng.standard_normal((12, 3)).astype(dtype),
        "b": rng.standard_normal(3).astype(dtype),
    }
    return make_model(nodes, {"x": (dtype, ["N", 3, 4])}, {"y": (dtype, ["N", 3])}, inits)
