"""plan_bits: greedy by importance per parameter, budgets, infeasible budgets, bad plans."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from _quant_models import conv_net

from onnxslice.errors import PlanError
from onnxslice.model import load
from onnxslice.rewrite import Plan, plan_bits, quantize
from onnxslice.rewrite.bits_plan import plan_cost, uniform_plan
from onnxslice.rewrite.precision import BITS, quantizable_layers
from onnxslice.sensitivity.scores import LayerScores


@pytest.fixture(scope="module")
def net():
    return load(conv_net())


def _scores(net, values):
    return LayerScores(dict(zip([x.name for x in quantizable_layers(net)], values, strict=True)), "test")


def _sizes(net):
    return {x.name: int(net.initializer(x.weight).size) for x in quantizable_layers(net)}


def test_plan_bits_gives_int8_by_importance_per_parameter(net):
    sizes = _sizes(net)  # conv1 72, conv2 288, deconv 128, fc1 32768, fc2 512, head 160
    names = list(sizes)
    # fc1 has the highest raw score but the lowest score per parameter
    scores = _scores(net, [1.0, 2.0, 3.0, 50.0, 4.0, 0.5])
    total = sum(sizes.values())
    budget = (8 * (sizes["conv2"] + sizes["fc2"]) + 4 * (total - sizes["conv2"] - sizes["fc2"])) / total
    plan = plan_bits(scores, net, ("int4", "int8"), avg_bits=budget)
    per_param = {n: scores.scores[n] / sizes[n] for n in names}
    order = sorted(names, key=lambda n: -per_param[n])
    assert plan.layers["fc1"] == "int4"
    # greedy: walk the per-parameter order and take every upgrade that still fits
    used, want = 4 * total, {}
    for n in order:
        if used + 4 * sizes[n] <= budget * total + 1e-6:
            used += 4 * sizes[n]
            want[n] = "int8"
        else:
            want[n] = "int4"
    assert plan.layers == {n: want[n] for n in names}
    assert plan_cost(net, plan.layers).avg_bits <= budget + 1e-9
    assert plan.kind == "quantize" and plan.meta["criterion"] == "test"


@pytest.mark.parametrize("avg_bits", [4.0, 4.3, 5.0, 6.0, 7.9, 8.0])
def test_plan_bits_meets_budget_and_is_maximal(net, avg_bits):
    scores = _scores(net, np.random.default_rng(0).uniform(size=6).tolist())
    plan = plan_bits(scores, net, "int4,int8", avg_bits=avg_bits)
    cost = plan_cost(net, plan.layers)
    assert cost.avg_bits <= avg_bits + 1e-9
    for n, p in plan.layers.items():  # no single remaining upgrade fits
        if p == "int4":
            assert plan_cost(net, {**plan.layers, n: "int8"}).avg_bits > avg_bits + 1e-9


def test_plan_bits_size_budget_matches_real_file_size(net, tmp_path):
    scores = _scores(net, [1, 1, 1, 1, 1, 1])
    lo, hi = (plan_cost(net, uniform_plan(net, p).layers).size_mb for p in ("int4", "int8"))
    plan = plan_bits(scores, net, ("int4", "int8"), size_mb=(lo + hi) / 2)
    est = plan_cost(net, plan.layers).size_mb
    assert lo < est <= (lo + hi) / 2
    real = quantize(net, plan).save(tmp_path / "q.onnx").stat().st_size / 1e6
    # the estimate counts weights and scales; node protos and the plan in metadata_props add < 400 B a layer
    assert 0 <= real - est < 400e-6 * len(plan.layers)


def test_plan_bits_three_choices_prefers_int4_to_int8_upgrades(net):
    sizes = _sizes(net)
    total = sum(sizes.values())
    scores = _scores(net, [1, 1, 1, 1, 1, 1])
    # budget: uniform int8 plus room for fp16 on the small layers; int4->int8 upgrades come first
    plan = plan_bits(scores, net, ("int4", "int8", "fp16"), avg_bits=8.0)
    assert set(plan.layers.values()) == {"int8"}
    plan = plan_bits(scores, net, ("int4", "int8", "fp16"), avg_bits=8 + 8 * sizes["conv2"] / total)
    assert plan.layers["conv2"] == "fp16" or sum(p == "fp16" for p in plan.layers.values()) >= 1
    assert plan_cost(net, plan.layers).avg_bits <= 8 + 8 * sizes["conv2"] / total + 1e-9


def test_plan_bits_infeasible_budget_is_plan_error(net):
    scores = _scores(net, [1, 1, 1, 1, 1, 1])
    with pytest.raises(PlanError, match="no plan meets avg_bits=3"):
        plan_bits(scores, net, ("int4", "int8"), avg_bits=3)
    with pytest.raises(PlanError, match="no plan meets size_mb"):
        plan_bits(scores, net, ("int4", "int8"), size_mb=0.001)
    with pytest.raises(PlanError, match="exactly one budget"):
        plan_bits(scores, net, ("int4", "int8"))
    with pytest.raises(PlanError, match="unknown precision"):
        plan_bits(scores, net, ("int3",), avg_bits=4)


def test_plan_bits_scores_must_match_model(net):
    with pytest.raises(PlanError, match="unknown layer"):
        plan_bits(LayerScores({"nope": 1.0}, "x"), net, avg_bits=6)
    with pytest.raises(PlanError, match="no value for layer"):
        plan_bits(LayerScores({"conv1": 1.0}, "x"), net, avg_bits=6)


def test_plan_bits_negative_scores_shifted(net):
    # a ground truth -E||f' - f||: the least negative layer is the most important
    scores = _scores(net, [-5.0, -1.0, -5.0, -5.0, -5.0, -5.0])
    sizes = _sizes(net)
    total = sum(sizes.values())
    plan = plan_bits(scores, net, avg_bits=4 + 4 * sizes["conv2"] / total)
    assert plan.layers["conv2"] == "int8"


@pytest.mark.parametrize(
    ("layers", "match"),
    [
        ({"nope": "int8"}, "unknown layer"),
        ({"conv1": "int3"}, "unknown precision"),
        ({"conv1": 8}, "unknown precision"),
    ],
)
def test_quantize_bad_plan_is_plan_error(net, layers, match):
    with pytest.raises(PlanError, match=match):
        quantize(net, Plan("quantize", layers))


def test_quantize_rejects_prune_plan_and_bad_mode(net):
    with pytest.raises(PlanError, match="'prune' plan"):
        quantize(net, Plan("prune", {"conv1": 0.5}))
    with pytest.raises(PlanError, match="unknown mode"):
        quantize(net, uniform_plan(net, "int8"), mode="dynamic")  # type: ignore[arg-type]


def test_plan_json_round_trip_applies_the_same(net, tmp_path):
    plan = Plan("quantize", dict(zip(_sizes(net), itertools.cycle(["int4", "int8", "fp16"]))), "user")
    plan.save(tmp_path / "p.json")
    again = Plan.load(tmp_path / "p.json")
    assert again.layers == plan.layers
    a, b = quantize(net, plan), quantize(net, again)
    assert [t.raw_data for t in a.proto.graph.initializer] == [t.raw_data for t in b.proto.graph.initializer]
    assert all(p in BITS for p in again.layers.values())
