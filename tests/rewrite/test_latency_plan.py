"""Latency tables (measured, cached) and the latency-aware knapsack: exactness of the solver, the plan's
predicted latency within the target, only kernel-block counts, bad targets rejected."""

from __future__ import annotations

import itertools

import numpy as np
import onnxruntime as ort
import pytest
from _prune_nets import build

import onnxslice as osl
from onnxslice.errors import PlanError
from onnxslice.latency import LatencyTable, _isotonic, candidate_counts, latency_table, subgraph
from onnxslice.plans.latency_plan import (
    _knapsack,
    _knapsack2,
    damage_table,
    plan_greedy,
    plan_latency,
    prune_to_latency,
)


@pytest.fixture(scope="module")
def net():
    proto, x = build("residual")
    return osl.load(proto), x


@pytest.fixture(scope="module")
def measured_table(net, tmp_path_factory):
    m, _x = net
    return latency_table(m, block=4, repeats=3, fractions=(0.5,), cache=tmp_path_factory.mktemp("cache"),
                         show_progress=False)


@pytest.fixture(scope="module")
def table(measured_table):
    """The measured table's groups and counts with deterministic ratios: every group saves 0.2 of the model's
    time per unit of its channels removed. The planners are tested on it (a loaded machine can measure a tiny
    model's cuts as no faster, which would make the targets below unreachable); the measurement is tested on
    ``measured_table``."""
    import dataclasses

    t = measured_table
    return dataclasses.replace(t, groups={g: {k: 1.0 - 0.2 * (1 - k / t.sizes[g]) for k in row}
                                          for g, row in t.groups.items()})


def test_candidate_counts_are_block_multiples_plus_one_step():
    ks = candidate_counts(96, 16, (0.75, 0.5, 0.25))
    assert ks[0] == 96 and ks == sorted(ks, reverse=True)
    off = [k for k in ks if k % 16]
    assert off == [88]  # one count between blocks shows the step
    assert all(k % 16 == 0 for k in ks if k != 88)
    assert candidate_counts(6, 16) == [6, 3]


def test_isotonic_is_non_decreasing_and_keeps_sorted_input():
    ks, rs = [32, 16, 8, 4], [1.0, 0.7, 0.8, 0.5]
    fit = _isotonic(ks, rs)
    order = np.argsort(ks)
    assert np.all(np.diff(np.array(fit)[order]) >= -1e-12)
    assert fit[1] == fit[2] == pytest.approx(0.75)
    assert _isotonic([1, 2, 3], [0.1, 0.2, 0.3]) == [0.1, 0.2, 0.3]


def test_knapsack_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        options = [[(0, 0.0, 0.0)] + [(i, float(rng.uniform(0, 0.2)), -float(rng.uniform(0, 1)))
                                      for i in range(1, 4)] for _ in range(4)]
        res = 0.01
        need = float(rng.uniform(0, 0.4))
        units = int(np.ceil(need / res - 1e-9))
        picks = _knapsack(options, units, res)
        best = None
        for combo in itertools.product(*[range(len(o)) for o in options]):
            saving = sum(int(np.floor(options[g][i][1] / res + 1e-9)) for g, i in enumerate(combo))
            if saving >= units:
                value = sum(options[g][i][2] for g, i in enumerate(combo))
                best = value if best is None else max(best, value)
        if best is None:
            assert picks is None
        else:
            assert picks is not None
            assert sum(options[g][i][2] for g, i in enumerate(picks)) == pytest.approx(best)


def test_two_constraint_knapsack_matches_brute_force():
    rng = np.random.default_rng(1)
    for _ in range(25):
        options = [[(0, 0.0, 0.0, 0.0)] + [(i, float(rng.uniform(0, 0.2)), -float(rng.uniform(0, 1)),
                                            float(rng.uniform(0, 0.3))) for i in range(1, 4)] for _ in range(4)]
        lr, pr = 0.01, 0.02
        lu, pu = int(np.ceil(rng.uniform(0, 0.4) / lr)), int(np.ceil(rng.uniform(0, 0.6) / pr))
        picks = _knapsack2(options, lu, lr, pu, pr)
        best = None
        for combo in itertools.product(*[range(len(o)) for o in options]):
            sl = sum(int(np.floor(options[g][i][1] / lr + 1e-9)) for g, i in enumerate(combo))
            sp = sum(int(np.floor(options[g][i][3] / pr + 1e-9)) for g, i in enumerate(combo))
            if sl >= lu and sp >= pu:
                value = sum(options[g][i][2] for g, i in enumerate(combo))
                best = value if best is None else max(best, value)
        if best is None:
            assert picks is None
        else:
            assert picks is not None
            assert sum(options[g][i][2] for g, i in enumerate(picks)) == pytest.approx(best)
            assert sum(int(np.floor(options[g][i][1] / lr + 1e-9)) for g, i in enumerate(picks)) >= lu
            assert sum(int(np.floor(options[g][i][3] / pr + 1e-9)) for g, i in enumerate(picks)) >= pu


def test_plan_latency_with_a_parameter_ratio_removes_at_least_that(net, table):
    m, _ = net
    plan = plan_latency(m, 1.0, table, min_ratio=0.2)
    assert plan.meta["achieved_ratio"] >= 0.2 and plan.meta["min_ratio"] == 0.2
    assert all(k % 4 == 0 or k == table.sizes[g] for g, k in plan.meta["kept_channels"].items())
    both = plan_latency(m, 0.97, table, min_ratio=0.1)
    assert both.meta["achieved_ratio"] >= 0.1 and both.meta["predicted_latency"] <= 0.97 + 1e-9
    with pytest.raises(PlanError, match="relax"):
        plan_latency(m, 1.0, table, min_ratio=0.99)
    with pytest.raises(PlanError, match=r"\[0, 1\)"):
        plan_latency(m, 1.0, table, min_ratio=1.5)


def test_latency_table_is_measured_and_cached(net, measured_table, tmp_path):
    table = measured_table
    m, _ = net
    assert table.fingerprint == m.fingerprint and table.block == 4 and table.threads == 1
    for g, row in table.groups.items():
        assert row[table.sizes[g]] == 1.0 and len(row) >= 2
        assert all(np.isfinite(v) and v > 0 for v in row.values())
    again = latency_table(m, block=4, repeats=3, fractions=(0.5,), cache=tmp_path, show_progress=False)
    files = list((tmp_path / "latency").glob("*.json"))
    assert len(files) == 1
    assert LatencyTable.load(files[0]).to_dict() == again.to_dict()
    assert latency_table(m, block=4, repeats=3, fractions=(0.5,), cache=tmp_path).to_dict() == again.to_dict()


def test_subgraph_runs_and_matches_the_model(net):
    m, x = net
    sub = subgraph(m.proto if m.proto.graph.value_info else __import__("onnx").shape_inference.infer_shapes(m.proto),
                   0, len(m.proto.graph.node) - 1)
    ref = ort.InferenceSession(m.proto.SerializeToString()).run(None, {"x": x})[0]
    out = ort.InferenceSession(sub.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(out, ref, rtol=1e-6)


def test_plan_latency_meets_predicted_target_on_the_block(net, table):
    m, _ = net
    plan = plan_latency(m, 0.95, table)
    kept = plan.meta["kept_channels"]
    assert plan.meta["predicted_latency"] <= 0.95 + 1e-9
    assert all(k % 4 == 0 or k == table.sizes[g] for g, k in kept.items())
    pruned = osl.prune(m, plan)
    assert pruned.num_params < m.num_params
    with pytest.raises(PlanError, match="cannot be reached"):
        plan_latency(m, 0.01, table)
    with pytest.raises(PlanError, match=r"\(0, 1\]"):
        plan_latency(m, 1.5, table)
    other = LatencyTable("0" * 16, "cpu", 1, 1, 4, 1.0, {})
    with pytest.raises(PlanError, match="another model"):
        plan_latency(m, 0.9, other)


def test_damage_table_and_prune_to_latency(net, table):
    m, x = net
    data = np.random.default_rng(1).standard_normal((16, 3, 8, 8)).astype(np.float32)
    dmg = damage_table(m, data, table, samples=16, show_progress=False)
    for g, row in dmg.items():
        assert row[table.sizes[g]] == 0.0 and all(v >= 0 for v in row.values())
    res = prune_to_latency(m, 0.95, table, damage=dmg, repeats=3, rounds=2)
    assert res.rounds and res.plan.meta["measured_latency"] == pytest.approx(res.measured, abs=1e-5)
    assert res.model.num_params < m.num_params
    y = ort.InferenceSession(res.model.proto.SerializeToString()).run(None, {"x": x})[0]
    assert y.shape == (4, 5)


def test_a_tightened_round_keeps_the_users_target_in_the_plan(net, table, monkeypatch):
    """A first round measured over the target makes the second solve for less; the plan still records the
    target the user asked for, and what it was solved for (the CLI report read the tightened value)."""
    import onnxslice.plans.latency_plan as lp

    measured = iter([1.0, 0.5, 0.5])
    monkeypatch.setattr(lp, "median_ratios", lambda sessions, x, repeats: [1.0, [1.0, next(measured)]])
    res = prune_to_latency(net[0], 0.95, table, repeats=1, rounds=2)
    assert [r["measured"] for r in res.rounds] == [1.0, 0.5]
    meta = res.plan.meta
    assert meta["latency_target"] == 0.95 and meta["solved_for"] < 0.95 and meta["measured_latency"] == 0.5


def test_greedy_plan_reaches_the_target_and_its_damage_is_the_measured_one(net, table):
    from onnxslice.rewrite.fidelity import compare_outputs, run_outputs

    m, _ = net
    data = np.random.default_rng(4).standard_normal((16, 3, 8, 8)).astype(np.float32)
    plan = plan_greedy(m, 0.97, table, data, samples=16)
    assert plan.meta["predicted_latency"] <= 0.97 + 1e-9 and plan.meta["steps"]
    assert all(k % 4 == 0 or k == table.sizes[g] for g, k in plan.meta["kept_channels"].items())
    preds = [s["predicted"] for s in plan.meta["steps"] if not s.get("back")]
    assert preds == sorted(preds, reverse=True)
    backs = [s["damage"] for s in plan.meta["steps"] if s.get("back")]
    assert backs == sorted(backs, reverse=True)
    pruned = osl.prune(m, plan)
    kl = compare_outputs(run_outputs(m, data), run_outputs(pruned, data)).kl
    assert plan.meta["damage"] == pytest.approx(kl, rel=1e-3, abs=1e-6)
    with pytest.raises(PlanError, match="cannot be reached"):
        plan_greedy(m, 0.01, table, data, samples=8)


def test_a_plan_exactly_at_the_target_is_feasible(net, table):
    m, _ = net
    for g, row in table.groups.items():  # one group cut to its smallest aligned count: exactly its predicted latency
        k = min(k for k in row if k % table.block == 0 and row[k] < 1.0) if any(
            k % table.block == 0 and row[k] < 1.0 for k in row) else None
        if k is None:
            continue
        target = table.predict({g: k})
        plan = plan_latency(m, target, table)
        assert plan.meta["predicted_latency"] <= target + 1e-5
        both = plan_latency(m, target, table, min_ratio=0.0)
        assert both.meta["predicted_latency"] <= target + 1e-5
