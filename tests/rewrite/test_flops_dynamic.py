"""MACs of models with dynamic spatial sizes come from the data's real shapes, never negative."""

from __future__ import annotations

import numpy as np
from onnx import helper

from onnxslice.flops import count_macs
from onnxslice.model import load
from onnxslice.rewrite.measure import model_stats
from onnxslice.testing import make_model


def test_macs_of_dynamic_spatial_dims_use_the_recorded_shapes():
    w = np.ones((4, 3, 3, 3), np.float32)
    fc = np.ones((4, 5), np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("ReduceMean", ["y"], ["g"], name="gap", axes=[2, 3], keepdims=0),
             helper.make_node("MatMul", ["g", "fc"], ["z"], name="fc")]
    m = load(make_model(nodes, {"x": (np.float32, ["N", 3, "H", "W"])}, {"z": (np.float32, ["N", 5])},
                        {"w": w, "fc": fc}))
    static = count_macs(m)
    assert static.total >= 0 and "conv" in static.unknown  # the graph alone does not know H, W
    stats = model_stats(m, {"x": np.zeros((2, 3, 10, 12), np.float32)}, latency=1.0)
    assert stats.macs == 10 * 12 * 4 * 27 + 4 * 5  # per sample, at the data's 10 x 12
