"""Helpers shared by the test suite: small models built with onnx.helper (no torch needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from onnxslice.testing import make_model

ROOT = Path(__file__).resolve().parents[1]


def small_cnn(seed: int = 0) -> onnx.ModelProto:
    """Conv -> BatchNorm -> Relu -> MaxPool -> Flatten -> Gemm, input float32[N,1,8,8], 3 classes."""
    rng = np.random.default_rng(seed)
    inits = {
        "conv.w": rng.normal(size=(4, 1, 3, 3)).astype(np.float32),
        "conv.b": rng.normal(size=4).astype(np.float32),
        "bn.scale": rng.uniform(0.5, 1.5, 4).astype(np.float32),
        "bn.bias": rng.normal(size=4).astype(np.float32),
        "bn.mean": rng.normal(size=4).astype(np.float32) * 0.1,
        "bn.var": rng.uniform(0.5, 1.5, 4).astype(np.float32),
        "fc.w": rng.normal(size=(3, 4 * 4 * 4)).astype(np.float32) * 0.1,
        "fc.b": rng.normal(size=3).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "conv.w", "conv.b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["b"], name="bn"),
        helper.make_node("Relu", ["b"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["logits"], name="fc", transB=1),
    ]
    return make_model(nodes, {"x": (np.float32, ["N", 1, 8, 8])}, {"logits": (np.float32, ["N", 3])}, inits)


def files_in(folder: Path) -> set[str]:
    """Every file below ``folder`` (to assert that nothing was written)."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}
