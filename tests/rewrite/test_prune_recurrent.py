"""Recurrent layers in pruning: the layer before an LSTM/GRU/RNN prunes (W's input columns go with its
channels, checked against onnxruntime on the rewritten model); the recurrent layer itself is left alone
with its reason."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import onnxslice as osl
from onnxslice.plans import plan_pruning
from onnxslice.rewrite import Plan, prune
from onnxslice.rewrite.groups import discover_groups
from onnxslice.testing import assert_models_close, make_model

T, N, F, K, H = 5, 3, 6, 8, 4


def _net(op: str, rng: np.random.Generator) -> onnx.ModelProto:
    g = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    inits = {
        "w1": rng.standard_normal((F, K)).astype(np.float32),
        "b1": rng.standard_normal(K).astype(np.float32),
        "W": rng.standard_normal((2, g * H, K)).astype(np.float32),
        "R": rng.standard_normal((2, g * H, H)).astype(np.float32),
        "B": rng.standard_normal((2, 2 * g * H)).astype(np.float32),
    }
    outs = ["y", "yh"]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m"], name="fc"),
        helper.make_node("Add", ["m", "b1"], ["a"], name="fc_bias"),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node(op, ["r", "W", "R", "B"], outs, name="rnn", hidden_size=H, direction="bidirectional"),
    ]
    return make_model(
        nodes,
        {"x": (np.float32, [T, "N", F])},
        {"y": (np.float32, [T, 2, "N", H]), "yh": (np.float32, [2, "N", H])},
        inits,
    )


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_prune_layer_before_recurrent_cuts_w_columns(op: str) -> None:
    rng = np.random.default_rng(0)
    model = osl.load(_net(op, rng))
    gs = discover_groups(model)
    fc = gs.of_layer("fc")
    assert fc is not None and fc.prunable
    assert dict(fc.cuts)["W"].axis == 2
    rnn = gs.of_layer("rnn")
    assert rnn is not None and not rnn.prunable and "leaves" in rnn.reason and op in rnn.reason
    # channels made exactly removable (their fc columns and bias are 0, Relu keeps them 0): outputs unchanged
    chans = [1, 5]
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    for t in proto.graph.initializer:
        if t.name in ("w1", "b1"):
            arr = numpy_helper.to_array(t).copy()
            arr[..., chans] = 0.0
            t.CopyFrom(numpy_helper.from_array(arr, t.name))
    zeroed = osl.load(proto)
    pruned = prune(zeroed, Plan("prune", {"fc": {"remove": chans}}))
    assert pruned.initializer("W").shape[2] == K - len(chans)
    onnx.checker.check_model(pruned.proto, full_check=True)
    x = rng.standard_normal((T, N, F)).astype(np.float32)
    assert_models_close(zeroed, pruned, {"x": x}, rtol=1e-5, atol=1e-5)


def test_prune_plan_with_recurrent_layer_runs() -> None:
    model = osl.load(_net("LSTM", np.random.default_rng(1)))
    pruned = prune(model, plan_pruning(model, 0.3))
    assert pruned.num_params < model.num_params
    assert [(v.name, v.shape) for v in pruned.outputs] == [(v.name, v.shape) for v in model.outputs]


@pytest.mark.parametrize("precision", ["int8", "int4", "fp16"])
def test_quantize_recurrent_layer_weight(precision: str) -> None:
    from onnxslice.rewrite import quantize
    from onnxslice.rewrite.weight_quant import fake_quantize

    rng = np.random.default_rng(2)
    model = osl.load(_net("GRU", rng))
    layer = model.layer("rnn")
    q = quantize(model, Plan("quantize", {"rnn": precision}))
    onnx.checker.check_model(q.proto, full_check=True)
    assert "W" not in q.initializer_names or q.initializer("W").dtype != np.float32 or precision == "fp16"
    # the emitted graph computes exactly the fake-quantized weight: same outputs as the float model with it
    ref = onnx.ModelProto()
    ref.CopyFrom(model.proto)
    for t in ref.graph.initializer:
        if t.name == "W":
            t.CopyFrom(numpy_helper.from_array(fake_quantize(model, layer, precision), "W"))
    x = rng.standard_normal((T, N, F)).astype(np.float32)
    assert_models_close(osl.load(ref), q, {"x": x}, rtol=1e-4, atol=1e-5)
