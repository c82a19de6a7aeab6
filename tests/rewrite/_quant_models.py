"""Small models for the quantization tests: every quantizable op and weight layout, built with make_model."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from onnxslice.testing import make_model


def _w(rng: np.random.Generator, *shape: int) -> np.ndarray:
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    return (rng.normal(size=shape) / np.sqrt(fan_in)).astype(np.float32)


def conv_net(opset: int = 17, seed: int = 0) -> onnx.ModelProto:
    """Conv, grouped Conv, ConvTranspose, Gemm (transB=1 and 0) and a right-hand MatMul weight."""
    rng = np.random.default_rng(seed)
    init = {
        "c1.w": _w(rng, 8, 1, 3, 3), "c1.b": _w(rng, 8),
        "c2.w": _w(rng, 8, 4, 3, 3), "c2.b": _w(rng, 8),
        "t.w": _w(rng, 8, 4, 2, 2), "t.b": _w(rng, 4),
        "g1.w": _w(rng, 32, 1024), "g1.b": _w(rng, 32),
        "g2.w": _w(rng, 32, 16), "g2.b": _w(rng, 16),
        "m.w": _w(rng, 16, 10),
    }
    nodes = [
        helper.make_node("Conv", ["x", "c1.w", "c1.b"], ["a1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "c2.w", "c2.b"], ["a2"], name="conv2", pads=[1, 1, 1, 1], group=2),
        helper.make_node("Relu", ["a2"], ["r2"], name="relu2"),
        helper.make_node("ConvTranspose", ["r2", "t.w", "t.b"], ["a3"], name="deconv", strides=[2, 2]),
        helper.make_node("Flatten", ["a3"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "g1.w", "g1.b"], ["a4"], name="fc1", transB=1),
        helper.make_node("Relu", ["a4"], ["r4"], name="relu4"),
        helper.make_node("Gemm", ["r4", "g2.w", "g2.b"], ["a5"], name="fc2"),
        helper.make_node("Relu", ["a5"], ["r5"], name="relu5"),
        helper.make_node("MatMul", ["r5", "m.w"], ["y"], name="head"),
    ]
    return make_model(nodes, {"x": (np.float32, ["N", 1, 8, 8])}, {"y": (np.float32, ["N", 10])}, init, opset=opset)


def matmul_net(seed: int = 0) -> onnx.ModelProto:
    """Two right-hand MatMul weights (MatMulNBits candidates), K = 64 and 32."""
    rng = np.random.default_rng(seed)
    init = {"w1": _w(rng, 64, 32), "w2": _w(rng, 32, 10)}
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2"),
    ]
    return make_model(nodes, {"x": (np.float32, ["N", 64])}, {"y": (np.float32, ["N", 10])}, init)


def images(n: int = 32, seed: int = 1) -> np.ndarray:
    """Inputs for :func:`conv_net`."""
    return np.random.default_rng(seed).uniform(0, 1, (n, 1, 8, 8)).astype(np.float32)
