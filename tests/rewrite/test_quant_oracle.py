"""The measured oracle: single-layer quantization error, equal to quantizing that layer for real."""

from __future__ import annotations

import numpy as np
import pytest
from _quant_models import conv_net, images

from onnxslice.model import load
from onnxslice.rewrite import Plan, quantize
from onnxslice.rewrite.fidelity import fidelity
from onnxslice.rewrite.oracle import quantization_oracle, spearman
from onnxslice.sensitivity.scores import LayerScores


@pytest.fixture(scope="module")
def net():
    return load(conv_net())


@pytest.mark.parametrize("precision", ["int4", "int8"])
def test_oracle_equals_error_of_really_quantized_layer(net, precision):
    x = images(32)
    o = quantization_oracle(net, x, precision)
    assert o.criterion == f"oracle:{precision}" and set(o.scores) == {x_.name for x_ in net.layers}
    for name, score in o.scores.items():
        real = fidelity(quantize(net, Plan("quantize", {name: precision})), net, x).mean_l2
        assert score == pytest.approx(real, rel=1e-3, abs=1e-6), name
    assert all(v > 0 for v in o.scores.values())
    assert o.meta["all_layers_error"] > max(o.scores.values()) * 0.5


def test_oracle_int4_errors_exceed_int8(net):
    x = images(16)
    o4, o8 = quantization_oracle(net, x, "int4"), quantization_oracle(net, x, "int8")
    assert all(o4.scores[n] > o8.scores[n] for n in o4.scores)


def test_spearman_matches_scipy():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    a = rng.normal(size=9)
    b = a + rng.normal(size=9)
    b[3] = b[4]  # a tie
    names = [f"l{i}" for i in range(9)]
    sa, sb = LayerScores(dict(zip(names, a, strict=True)), "a"), LayerScores(dict(zip(names, b, strict=True)), "b")
    assert spearman(sa, sb) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    assert spearman(sa, sa) == pytest.approx(1.0)
    assert np.isnan(spearman(sa, LayerScores({"l0": 1.0}, "c")))
