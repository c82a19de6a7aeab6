"""quantization_scores: SAfER criteria (default wgrad) and the oracle under one name, over quantizable layers."""

from __future__ import annotations

import pytest
from _quant_models import conv_net, images

from onnxslice.errors import DataError, PlanError
from onnxslice.model import load
from onnxslice.plans.bits_scores import DEFAULT_CRITERION, is_oracle, quantization_scores
from onnxslice.rewrite import plan_bits
from onnxslice.rewrite.oracle import quantization_oracle
from onnxslice.rewrite.precision import quantizable_layers
from onnxslice.sensitivity import UnknownNameError, sensitivity


@pytest.fixture(scope="module")
def net():
    return load(conv_net())


def test_quantization_scores_default_is_wgrad_and_equals_sensitivity(net):
    x = images(16)
    s = quantization_scores(net, x)
    ref = sensitivity(net, x, "wgrad", "linf")
    assert DEFAULT_CRITERION == "wgrad" and s.criterion == "wgrad" and s.reduction == "linf"
    assert list(s.scores) == [x_.name for x_ in quantizable_layers(net)]
    assert s.scores == pytest.approx({n: ref.scores[n] for n in s.scores}, rel=1e-9)


@pytest.mark.parametrize("criterion", ["grad", "ig", "hsic", "fd"])
def test_quantization_scores_every_criterion_plans(net, criterion):
    s = quantization_scores(net, images(8), criterion, "l1", steps=2, noise_samples=2)
    assert s.criterion == criterion and s.reduction == "l1"
    assert set(s.scores) == {x_.name for x_ in quantizable_layers(net)}
    plan = plan_bits(s, net, ("int4", "int8"), avg_bits=6)
    assert set(plan.layers.values()) == {"int4", "int8"} and plan.meta["criterion"] == criterion


@pytest.mark.parametrize("name", ["oracle", "oracle:int8"])
def test_quantization_scores_oracle_is_the_measured_oracle(net, name):
    x = images(8)
    s = quantization_scores(net, x, name)
    precision = "int8" if name.endswith("int8") else "int4"
    assert is_oracle(name) and s.criterion == f"oracle:{precision}"
    assert s.scores == quantization_oracle(net, x, precision).scores


def test_quantization_scores_weight_needs_no_data(net):
    s = quantization_scores(net, None, "weight")
    w = net.initializer(net.layer("fc1").weight)
    assert s.scores["fc1"] == pytest.approx(float(abs(w).max()))


@pytest.mark.parametrize(("criterion", "data", "error", "match"), [
    ("nope", "x", UnknownNameError, "wgrad"),
    ("oracle:int3", "x", PlanError, "unknown precision"),
    ("oracle", None, DataError, "needs calibration data"),
    ("wgrad", None, DataError, "needs calibration data"),
])
def test_quantization_scores_bad_requests_raise(net, criterion, data, error, match):
    with pytest.raises(error, match=match):
        quantization_scores(net, images(4) if data else None, criterion)
