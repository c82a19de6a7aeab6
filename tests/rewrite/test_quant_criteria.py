"""Quantizer-aware criteria (fisher, taylor, hutchinson) against closed forms on a linear model, and
plan_bits comparing the precisions of each layer by their predicted errors."""

from __future__ import annotations

import numpy as np
import pytest
from _quant_models import conv_net, images
from onnx import helper

import onnxslice as osl
from onnxslice.errors import DataError
from onnxslice.plans.bits_scores import quantization_scores
from onnxslice.plans.quant_criteria import perturbation_errors
from onnxslice.rewrite import plan_bits
from onnxslice.rewrite.weight_quant import fake_quantize
from onnxslice.testing import make_model


def _linear(seed: int = 0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((8, 5)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    m = osl.load(make_model(nodes, {"x": (np.float32, ["N", 8])}, {"y": (np.float32, ["N", 5])}, {"w": w}))
    x = rng.standard_normal((32, 8)).astype(np.float32)
    return m, x, w


def test_fisher_estimates_the_expected_squared_output_change():
    m, x, w = _linear()
    dw = fake_quantize(m, m.layer("mm"), "int4", use_matmul_nbits=False) - w
    exact = float((np.square(x.astype(np.float64) @ dw)).sum(1).mean())
    est = perturbation_errors(m, x, "fisher", ("int4",), samples=32, probes=64, use_matmul_nbits=False)["mm"]["int4"]
    assert est == pytest.approx(exact, rel=0.1)


def test_taylor_is_the_first_order_change_of_the_predicted_logit():
    m, x, w = _linear()
    dw = fake_quantize(m, m.layer("mm"), "int8", use_matmul_nbits=False) - w
    pred = (x @ w).argmax(1)
    exact = abs(float(np.mean([(x[i].astype(np.float64) @ dw)[pred[i]] for i in range(len(x))])))
    got = perturbation_errors(m, x, "taylor", ("int8",), samples=32, use_matmul_nbits=False)["mm"]["int8"]
    assert got == pytest.approx(exact, rel=1e-4)


def test_hutchinson_and_every_method_rank_int4_above_int8():
    net = osl.load(conv_net())
    for method in ("fisher", "taylor", "hutchinson"):
        err = perturbation_errors(net, images(16), method, ("int4", "int8"), samples=16, probes=2)
        assert set(err) == {x.name for x in net.layers if x.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")}
        if method != "taylor":  # a signed first-order change need not grow with the error
            assert all(e["int4"] > e["int8"] >= 0 for e in err.values())
    with pytest.raises(DataError):
        perturbation_errors(net, None, "fisher")
    with pytest.raises(DataError):
        perturbation_errors(net, images(4), "nope")


def test_plan_bits_uses_predicted_errors_per_precision():
    net = osl.load(conv_net())
    scores = quantization_scores(net, images(16), "fisher:int4", samples=16)
    errors = scores.meta["errors"]
    assert scores.criterion == "fisher:int4" and all({"int4", "int8", "fp16"} <= set(e) for e in errors.values())
    plan = plan_bits(scores, net, ("int4", "int8"), avg_bits=6)
    assert plan.meta["value"] == "predicted error per precision"
    # a layer whose int4 error dwarfs the others' is the first to get int8
    big = dict(errors)
    name = min(big, key=lambda n: net.initializer(net.layer(n).weight).size)
    big[name] = {**big[name], "int4": 1e9}
    tight = plan_bits(scores, net, ("int4", "int8"), avg_bits=4.5, errors=big)
    assert tight.layers[name] == "int8"
