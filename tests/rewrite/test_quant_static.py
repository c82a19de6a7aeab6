"""Static QDQ quantization through onnxruntime's quantize_static with per-layer weight bit widths."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from _quant_models import conv_net, images

from onnxslice.errors import DataError
from onnxslice.model import load
from onnxslice.rewrite import Plan, quantize
from onnxslice.rewrite.bits_plan import uniform_plan
from onnxslice.rewrite.fidelity import fidelity


@pytest.fixture(scope="module")
def net():
    return load(conv_net())


def _dq_types(q):
    """Weight initializer -> data type of what the DequantizeLinear reading it dequantizes."""
    inits = {t.name: t.data_type for t in q.proto.graph.initializer}
    return {n.input[0]: inits[n.input[0]] for n in q.proto.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in inits}


def test_static_quantize_uses_per_layer_bit_widths(net):
    plan = Plan("quantize", {"conv1": "fp32", "conv2": "int8", "deconv": "int8", "fc1": "int4", "fc2": "int8",
                             "head": "fp16"})
    q = quantize(net, plan, images(64), mode="static")
    kinds = {n.op_type for n in q.proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= kinds  # activations are quantized too
    types = _dq_types(q)
    by_source = {k: v for k, v in types.items()}
    assert onnx.TensorProto.INT4 in by_source.values() and q.opsets[""] == 21
    conv1_w = {n.input[1] for n in q.proto.graph.node if n.name == "conv1"}
    assert conv1_w == {"c1.w"} and "c1.w" in {t.name for t in q.proto.graph.initializer}  # fp32 layer untouched
    fp16 = [t for t in q.proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert [t.name for t in fp16] == ["onnxslice/quant/m.w/fp16"]
    f = fidelity(q, net, images(64, seed=5))
    # 8-bit activations + a per-channel int4 layer of 1,024 inputs: measured 12% relative error, same top-1
    assert f.top1_agreement >= 0.9 and f.rel_error < 0.2


def test_static_int8_agrees_with_float(net):
    q = quantize(net, uniform_plan(net, "int8"), images(64), mode="static")
    f = fidelity(q, net, images(64, seed=5))
    assert f.rel_error < 0.05 and f.top1_agreement >= 0.95


def test_static_needs_calibration(net):
    with pytest.raises(DataError, match="calibration"):
        quantize(net, uniform_plan(net, "int8"), None, mode="static")
    with pytest.raises(DataError):
        quantize(net, uniform_plan(net, "int8"), np.zeros((4, 3, 8, 8), np.float32), mode="static")
