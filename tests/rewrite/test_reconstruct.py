"""Recovery without backprop (``onnxslice.rewrite.reconstruct``): im2col patches against torch's conv, the
least-squares fit against numpy's lstsq on independently recorded feature maps, the layer's output error
measured in onnxruntime before/after, BN re-estimation against the recorded batch statistics, and fidelity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _prune_nets import build

import onnxslice as osl
from onnxslice.errors import PlanError
from onnxslice.plans import plan_pruning
from onnxslice.plans.prune_plan import PrunePlan
from onnxslice.record import make_session, runtime_proto
from onnxslice.rewrite import prune
from onnxslice.rewrite.reconstruct import conv_patches, reconstruct


def _run(m: osl.Model, x: np.ndarray, names: list[str]) -> list[np.ndarray]:
    sess = make_session(runtime_proto(m.proto, names), "cpu")
    return list(sess.run(names, {m.input_names[0]: x}))


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a - b) ** 2).sum() / (b.astype(np.float64) ** 2).sum())


@pytest.mark.parametrize(("stride", "pads", "dil", "k"), [(1, (1, 1, 1, 1), 1, 3), (2, (0, 1, 1, 0), 2, 3),
                                                          (1, (0, 0, 0, 0), 1, 1)])
def test_conv_patches_match_torch_conv(stride, pads, dil, k):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 9, 10)).astype(np.float32)
    w = rng.standard_normal((4, 3, k, k)).astype(np.float32)
    xp = np.pad(x, ((0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    ref = torch.nn.functional.conv2d(torch.from_numpy(xp)[None], torch.from_numpy(w), stride=stride,
                                     dilation=dil)[0].numpy()
    rows, cols = np.meshgrid(np.arange(ref.shape[1]), np.arange(ref.shape[2]), indexing="ij")
    rows, cols = rows.ravel(), cols.ravel()
    p = conv_patches(x, (k, k), (stride, stride), pads, (dil, dil), rows, cols)
    got = p @ w.reshape(4, -1).T
    np.testing.assert_allclose(got, ref[:, rows, cols].T, rtol=1e-4, atol=1e-4)


def test_least_squares_matches_numpy_lstsq_and_lowers_the_layer_error():
    proto, _ = build("flatgemm")
    m = osl.load(proto)
    x = np.random.default_rng(1).standard_normal((24, 1, 28, 28)).astype(np.float32)
    plan = PrunePlan("prune", {"/c1/Conv": {"remove": [0, 3]}}, "uniform", {"mode": "structured"})
    p = prune(m, plan)
    res = reconstruct(m, p, plan, x, method="lsq", samples=24, positions=1000, ridge=0.0)
    assert [f.layer for f in res.layers] == ["/c2/Conv"] and res.layers[0].intercept == "bias"
    # reference: the pruned model's input of c2 recorded in onnxruntime, torch's unfold, numpy's lstsq
    c2 = p.node("/c2/Conv")
    xin = _run(p, x, [c2.inputs[0]])[0]
    y = _run(m, x, [c2.outputs[0]])[0]
    cols = torch.nn.functional.unfold(torch.from_numpy(xin), 5).numpy()  # [N, C*25, L]
    a = cols.transpose(0, 2, 1).reshape(-1, cols.shape[1])
    a = np.concatenate([a, np.ones((len(a), 1))], 1)
    b = y.reshape(y.shape[0], y.shape[1], -1).transpose(0, 2, 1).reshape(-1, y.shape[1])
    sol = np.linalg.lstsq(a.astype(np.float64), b.astype(np.float64), rcond=None)[0]
    w = res.model.initializer(res.model.layer("/c2/Conv").weight)
    bias = res.model.initializer(res.model.layer("/c2/Conv").bias)
    np.testing.assert_allclose(w.reshape(w.shape[0], -1), sol[:-1].T, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(bias, sol[-1], rtol=1e-3, atol=1e-4)
    # the layer's output error measured in onnxruntime: lower after, and what the fit reported
    before = _rel(_run(p, x, [c2.outputs[0]])[0], y)
    after = _rel(_run(res.model, x, [c2.outputs[0]])[0], y)
    assert after < before
    assert res.layers[0].error_before == pytest.approx(before, rel=1e-3)
    assert res.layers[0].error_after == pytest.approx(after, rel=1e-3, abs=1e-6)


@pytest.mark.parametrize("name", ["residual", "depthwise", "flatgemm", "mlp"])
def test_reconstruction_improves_fidelity_on_held_out_inputs(name):
    proto, _ = build(name)
    m = osl.load(proto)
    shape = m.inputs[0].shape[1:]
    rng = np.random.default_rng(2)
    calib = rng.standard_normal((64, *shape)).astype(np.float32)
    held = rng.standard_normal((64, *shape)).astype(np.float32)
    plan = plan_pruning(m, 0.3, "uniform")
    p = prune(m, plan)
    res = reconstruct(m, p, plan, calib, method="lsq", samples=64)
    assert res.layers, "no consumer was re-fitted"
    assert all(f.error_after <= f.error_before + 1e-9 for f in res.layers)
    ref = _run(m, held, m.output_names)[0]
    err_pruned = _rel(_run(p, held, m.output_names)[0], ref)
    err_rec = _rel(_run(res.model, held, m.output_names)[0], ref)
    assert err_rec < err_pruned
    # same graph, shapes and interface as the pruned model; provenance recorded
    assert [n.op_type for n in res.model.nodes] == [n.op_type for n in p.nodes]
    assert {t.name: list(t.dims) for t in res.model.graph.initializer} == \
        {t.name: list(t.dims) for t in p.graph.initializer}
    assert any(e.key == "onnxslice.passes" and "reconstruct" in e.value for e in res.model.proto.metadata_props)
    if name == "depthwise":
        assert "/grouped/grouped.0/Conv" in res.skipped or not any("grouped" in f.layer for f in res.layers)


def test_bn_reestimation_sets_the_recorded_batch_statistics():
    proto, _ = build("residual")
    m = osl.load(proto)
    x = np.random.default_rng(3).standard_normal((32, 3, 8, 8)).astype(np.float32)
    plan = plan_pruning(m, 0.3, "uniform")
    p = prune(m, plan)
    res = reconstruct(m, p, plan, x, method="bn", samples=32, batch_size=7)
    bns = [n for n in res.model.nodes if n.op_type == "BatchNormalization"]
    assert res.bn == [n.name for n in bns] and not res.layers
    for n in bns:  # every BN's input (in the repaired model) has its running statistics
        xin = _run(res.model, x, [n.inputs[0]])[0].astype(np.float64)
        np.testing.assert_allclose(res.model.initializer(n.inputs[3]), xin.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(res.model.initializer(n.inputs[4]), xin.var((0, 2, 3)), rtol=1e-3, atol=1e-5)


def test_bad_arguments_raise_plan_errors():
    proto, x = build("residual")
    m = osl.load(proto)
    plan = plan_pruning(m, 0.3, "uniform")
    p = prune(m, plan)
    with pytest.raises(PlanError, match="unknown recovery method"):
        reconstruct(m, p, plan, x, method="sgd")
    with pytest.raises(PlanError, match="positions"):
        reconstruct(m, p, plan, x, positions=0)
    unstructured = PrunePlan("prune", {"/stem/stem.0/Conv": 0.5}, "uniform", {"mode": "unstructured"})
    with pytest.raises(PlanError, match="unstructured"):
        reconstruct(m, prune(m, unstructured), unstructured, x)
