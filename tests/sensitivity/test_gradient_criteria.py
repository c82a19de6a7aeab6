"""Gradient and path criteria against brute-force finite-difference references on a tiny MLP."""

from __future__ import annotations

import numpy as np
import pytest
from _sens_helpers import build_mlp, fd_grads, forward, mlp_weights

from onnxslice.sensitivity import get_criterion, relevance, sensitivity
from onnxslice.sensitivity.context import Context
from onnxslice.sensitivity.gradient import gradcampp_fn
from onnxslice.sensitivity.paths import guided_path

pytest.importorskip("onnxslice.grad")

TOL = {"rtol": 2e-3, "atol": 2e-5}


def _classes(w, x):
    return forward(w, x).argmax(1)


def _close(a, b):
    np.testing.assert_allclose(a, b, rtol=TOL["rtol"], atol=TOL["atol"] * max(1.0, float(np.abs(b).max())))


@pytest.mark.parametrize("name", ["grad", "wgrad", "gradcampp"])
def test_first_order_criteria_match_finite_differences(mlp, name):
    model, w, x = mlp
    rel = relevance(model, {"x": x}, name)
    g = fd_grads(w, x, _classes(w, x))
    for i in range(3):
        wi, gi = w[f"W{i}"].astype(np.float64), g[f"W{i}"]
        ref = {"grad": gi.mean(0), "wgrad": wi * gi.mean(0), "gradcampp": gradcampp_fn(gi, wi[None]).mean(0)}[name]
        _close(rel[f"L{i}"], ref)


def test_gradcampp_guard():
    g = np.array([0.0, 1.0, -1.0])
    w = np.array([3.0, -2.0, 2.0])  # 2 g^2 + w g^3 = 0 for the last two
    np.testing.assert_array_equal(gradcampp_fn(g, w), [0.0, 0.0, 0.0])
    assert gradcampp_fn(np.array([2.0]), np.array([1.0]))[0] == pytest.approx(4 / (8 + 8))


@pytest.mark.parametrize("kind", ["smoothgrad", "vargrad"])
def test_noise_tunnel_matches_reference(mlp, kind):
    model, w, x = mlp
    draws = 3
    ctx = Context.build(model, {"x": x}, noise_samples=draws, seed=4)
    rel = get_criterion(kind).relevance(ctx)
    tunnel = get_criterion(kind)
    classes = _classes(w, x)
    per_draw = []
    for d in range(draws):
        noisy = dict(w)
        nw = tunnel.noisy_weights(ctx, d)
        for i in range(3):
            noisy[f"W{i}"] = nw[f"W{i}"]
        per_draw.append(fd_grads(noisy, x, classes))
    for i in range(3):
        stack = np.concatenate([p[f"W{i}"] for p in per_draw])  # [draws * N, ...]
        ref = stack.mean(0) if kind == "smoothgrad" else stack.var(0)
        _close(rel[f"L{i}"], ref)


@pytest.mark.parametrize("sigma", [0.1, 0.25])
def test_noise_tunnel_sigma_is_relative_to_each_layers_range(sigma):
    """Every layer gets its own N(0, (sigma * (max w_l - min w_l))^2) noise, from its own stream."""
    w = mlp_weights(0, (3, 30, 20, 2))
    w["W1"] *= 10.0  # layers of very different scales
    model = build_mlp(w)
    x = np.random.default_rng(1).normal(size=(8, 3)).astype(np.float32)
    ctx = Context.build(model, {"x": x}, noise_samples=2, seed=7, options={"sigma": sigma})
    tunnel = get_criterion("smoothgrad")
    for d in range(2):
        nw = tunnel.noisy_weights(ctx, d)
        for i in range(3):
            span = float(w[f"W{i}"].max() - w[f"W{i}"].min())
            ref = np.random.default_rng([7, i, d, 104729]).normal(0.0, 1.0, w[f"W{i}"].shape) * sigma * span
            np.testing.assert_allclose(nw[f"W{i}"] - w[f"W{i}"], ref, rtol=1e-4, atol=1e-5 * span)


def test_noise_tunnel_wraps_not_copies():
    smooth, var, grad = get_criterion("smoothgrad"), get_criterion("vargrad"), get_criterion("grad")
    assert smooth.base is grad and var.base is grad


@pytest.mark.parametrize("path", ["layer", "global"])
def test_ig_matches_reference(mlp, path):
    model, w, x = mlp
    steps = 4
    rel = relevance(model, {"x": x}, "ig", steps=steps, path=path)
    classes = _classes(w, x)
    for i in range(3):
        acc = 0.0
        for k in range(steps):
            lam = (k + 0.5) / steps
            ws = dict(w)
            for j in ([i] if path == "layer" else range(3)):
                ws[f"W{j}"] = (w[f"W{j}"] * lam).astype(np.float32)
            acc = acc + fd_grads(ws, x, classes)[f"W{i}"].mean(0)
        _close(rel[f"L{i}"], w[f"W{i}"] * acc / steps)


def test_ig_global_path_is_complete(mlp):
    """Global-path IG sums to f(w) - f(0) (all layer weights zeroed), the completeness axiom."""
    model, w, x = mlp
    rel = relevance(model, {"x": x}, "ig", steps=64, path="global")
    classes = _classes(w, x)
    zero = {k: (v * 0 if k.startswith("W") else v) for k, v in w.items()}
    rows = np.arange(len(x))
    expected = (forward(w, x)[rows, classes] - forward(zero, x)[rows, classes]).mean()
    assert sum(float(v.sum()) for v in rel.values()) == pytest.approx(expected, rel=2e-3)


def test_idgi_matches_reference(mlp):
    model, w, x = mlp
    steps = 3
    rel = relevance(model, {"x": x}, "idgi", steps=steps)
    classes = _classes(w, x)
    rows = np.arange(len(x))
    for i in range(3):
        pts = []
        for j in range(steps + 1):
            ws = dict(w)
            ws[f"W{i}"] = (w[f"W{i}"] * (j / steps)).astype(np.float32)
            pts.append((fd_grads(ws, x, classes)[f"W{i}"].mean(0), forward(ws, x)[rows, classes].mean()))
        ref = sum(g**2 / (g**2).sum() * (pts[j + 1][1] - f) for j, (g, f) in enumerate(pts[:-1]))
        _close(rel[f"L{i}"], ref)


def test_gig_matches_reference_path(mlp):
    model, w, x = mlp
    rel = relevance(model, {"x": x}, "gig", steps=5)
    classes = _classes(w, x)
    for i in range(3):
        def grad_fn(v, i=i):
            ws = dict(w)
            ws[f"W{i}"] = v.reshape(w[f"W{i}"].shape).astype(np.float32)
            return fd_grads(ws, x, classes)[f"W{i}"].mean(0).ravel()

        start = w[f"W{i}"].astype(np.float64).ravel()
        ref = -guided_path(grad_fn, start, np.zeros_like(start), 5)
        _close(rel[f"L{i}"].ravel(), ref)


def test_guided_path_is_complete_on_a_quadratic():
    c = np.array([1.0, -2.0, 0.5, 3.0, 0.0])
    start = np.array([1.0, 2.0, -1.0, 0.5, 4.0])

    def f(v):
        return float((c * v**2).sum())

    attr = guided_path(lambda v: 2 * c * v, start, np.zeros(5), steps=400)
    assert attr.sum() == pytest.approx(f(np.zeros(5)) - f(start), rel=2e-2)
    assert attr[4] == 0.0  # zero gradient everywhere: no attribution


def test_layers_cut_off_downstream_score_zero():
    """With the last layer's weights at 0, f does not depend on L0 and L1: every noise-free gradient
    criterion gives them 0 (the noise tunnels perturb L2 too, so they are excluded)."""
    from _sens_helpers import build_mlp, mlp_weights

    w = mlp_weights(2)
    w["W2"][:] = 0.0
    model = build_mlp(w)
    x = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)
    for name in ["grad", "wgrad", "gradcampp", "ig", "idgi", "gig"]:
        s = sensitivity(model, {"x": x}, name, "linf", steps=2)
        assert s.scores["L0"] == 0.0 and s.scores["L1"] == 0.0, (name, s.scores)
