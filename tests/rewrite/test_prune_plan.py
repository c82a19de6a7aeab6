"""Pruning budgets: uniform, sensitivity (SAfER gamma_l), slice (NNSlicer CONTRIB), bad plans."""

from __future__ import annotations

import numpy as np
import pytest
from _prune_nets import build

import onnxslice as osl
from onnxslice.errors import PlanError
from onnxslice.plans import plan_pruning
from onnxslice.plans.prune_plan import MAX_LAYER_RATIO, PrunePlan
from onnxslice.rewrite import prune
from onnxslice.sensitivity import LayerScores


@pytest.fixture(scope="module")
def lenet():
    proto, x = build("flatgemm")
    return osl.load(proto), x


@pytest.mark.parametrize("ratio", [0.1, 0.2, 0.3, 0.5])
def test_plan_uniform_meets_ratio_within_two_percent(lenet, ratio):
    model, _ = lenet
    plan = plan_pruning(model, ratio)
    assert abs(plan.meta["achieved_ratio"] - ratio) <= 0.02
    frac = plan.meta["alpha"] * ratio  # the one channel fraction every group gets, before whole channels
    sizes = {"/c1/Conv": 6, "/c2/Conv": 16, "/f1/Gemm": 32}
    for name, d in plan.layers.items():
        assert frac - 1e-9 <= d["ratio"] + 1 / sizes[name] and d["ratio"] <= frac + 1 / sizes[name] + 1e-9
    assert plan.meta["prunable_params"] == model.num_params - 10 - 0  # all but the output layer's bias


def test_plan_sensitivity_gives_less_important_layers_more(lenet):
    model, _ = lenet
    scores = LayerScores({"/c1/Conv": 10.0, "/c2/Conv": 1.0, "/f1/Gemm": 5.0, "/f2/Gemm": 3.0}, "test")
    plan = plan_pruning(model, 0.3, "sensitivity", scores=scores)
    assert abs(plan.meta["achieved_ratio"] - 0.3) <= 0.02
    r = {k: v["ratio"] for k, v in plan.layers.items()}
    assert r["/c2/Conv"] > max(r["/f1/Gemm"], r["/c1/Conv"])  # whole channels: c1 has only 6
    assert max(r.values()) <= MAX_LAYER_RATIO
    share = plan.meta["group_share"]
    assert share["/c2/Conv"] / share["/f1/Gemm"] == pytest.approx(5.0)  # C_l = m / s_l


def test_plan_sensitivity_unstructured_matches_safer_formula(lenet):
    model, _ = lenet
    scores = LayerScores({x.name: s for x, s in zip(model.layers, [1.0, 2.0, 4.0, 8.0], strict=True)}, "test")
    plan = plan_pruning(model, 0.2, "sensitivity", scores=scores, mode="unstructured")
    sizes = {x.name: model.initializer(x.weight).size for x in model.layers}
    g = {k: v["ratio"] for k, v in plan.layers.items()}
    assert sum(g[k] * sizes[k] for k in g) == pytest.approx(0.2 * sum(sizes.values()), rel=1e-4)
    unclipped = [k for k in g if g[k] < MAX_LAYER_RATIO]
    ratios = [g[k] * scores.scores[k] for k in unclipped]  # gamma_l proportional to 1 / s_l
    assert max(ratios) == pytest.approx(min(ratios), rel=1e-4)


def test_class_slice_counts_significant_uses_by_default(lenet):
    from onnxslice.plans.prune_plan import class_slice
    from onnxslice.profile import profile
    from onnxslice.slicing import slice as slice_model

    model, x = lenet
    counted = class_slice(model, x, [0, 1], samples=4, profile_samples=len(x), workers=1)
    signed = class_slice(model, x, [0, 1], samples=4, profile_samples=len(x), accumulate="signed", workers=1)
    assert counted.options["accumulate"] == "abs" and signed.options["accumulate"] == "signed"
    ref = slice_model(model, profile(model, x, 256, show_progress=False), x, ["class:0", "class:1"], 0.3,
                      samples="0:4", accumulate="abs", workers=1)
    for name, table in counted.synapses.items():
        np.testing.assert_array_equal(table, ref.synapses[name])
        assert (table >= np.abs(signed.synapses[name])).all()


def test_plan_slice_masks_smallest_contrib(lenet, tmp_path):
    model, _x = lenet
    rng = np.random.default_rng(1)
    synapses = {layer.weight: rng.integers(-3, 4, model.initializer(layer.weight).shape) for layer in model.layers}
    plan = plan_pruning(model, 0.4, "slice", slice=synapses, mode="unstructured")
    pruned = prune(model, plan)
    for layer in model.layers:
        c = np.abs(synapses[layer.weight])
        gone = pruned.initializer(layer.weight) == 0
        assert abs(gone.mean() - 0.4) < 0.01
        assert c[gone].max() <= c[~gone].min()
    path = plan.save(tmp_path / "plan.json")
    again = PrunePlan.load(path)
    assert set(again.masks) == set(plan.masks)
    np.testing.assert_array_equal(osl.load(prune(model, again).proto).initializer("c1.weight"),
                                  pruned.initializer("c1.weight"))
    bare = PrunePlan.load(path)
    bare.masks = {}
    with pytest.raises(PlanError, match="carries no mask"):
        prune(model, bare)


def test_plan_channel_scores_choose_channels(lenet):
    model, _ = lenet
    keep_first = {"/c1/Conv": np.arange(6)[::-1].astype(float)}  # channel 5 scores lowest
    plan = plan_pruning(model, 0.05, channel_score={**keep_first, "/c2/Conv": np.ones(16), "/f1/Gemm": np.ones(32)})
    removed = plan.layers["/c1/Conv"]["remove"]
    assert removed == sorted(range(6))[::-1][: len(removed)][::-1] or removed == [5] or removed == []
    rnd1 = plan_pruning(model, 0.3, channel_score="random", seed=1)
    rnd2 = plan_pruning(model, 0.3, channel_score="random", seed=2)
    assert rnd1.layers != rnd2.layers


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ratio": 1.0}, r"\[0, 1\)"),
        ({"ratio": -0.2}, r"\[0, 1\)"),
        ({"ratio": 0.3, "budget": "magic"}, "unknown budget"),
        ({"ratio": 0.3, "budget": "sensitivity"}, "needs LayerScores"),
        ({"ratio": 0.3, "budget": "sensitivity", "scores": LayerScores({"ghost": 1.0}, "t")}, "unknown layer"),
        ({"ratio": 0.3, "budget": "slice"}, "needs a Slice"),
        ({"ratio": 0.3, "mode": "sideways"}, "unknown pruning mode"),
        ({"ratio": 0.9999}, "cannot be reached"),
    ],
)
def test_plan_bad_arguments_raise_plan_error(lenet, kwargs, match):
    model, _ = lenet
    kwargs = dict(kwargs)
    ratio = kwargs.pop("ratio")
    with pytest.raises(PlanError, match=match):
        plan_pruning(model, ratio, **kwargs)


@pytest.mark.parametrize("round_to", [2, 4])
def test_plan_round_to_keeps_multiples_of_the_block(round_to):
    from onnxslice.rewrite.groups import discover_groups

    proto, _x = build("residual")
    model = osl.load(proto)
    sizes = {g.leader: g.size for g in discover_groups(model).prunable}
    plan = plan_pruning(model, 0.3, round_to=round_to)
    assert plan.meta["round_to"] == round_to and plan.meta["removed_params"] > 0
    for leader, d in plan.layers.items():
        kept = sizes[leader] - len(d["remove"])
        assert kept == sizes[leader] or kept % round_to == 0
    pruned = prune(model, plan)
    assert pruned.num_params == model.num_params - plan.meta["removed_params"]
    with pytest.raises(PlanError, match="round_to"):
        plan_pruning(model, 0.3, round_to=0)
