"""Black-box criteria (weight, fd, hsic) against brute-force numpy references on a tiny MLP."""

from __future__ import annotations

import numpy as np
import pytest
from _sens_helpers import forward

from onnxslice.sensitivity import relevance, sensitivity
from onnxslice.sensitivity.criteria import hsic_scores


def _pred_logit(weights, x, classes):
    y = forward(weights, x)
    return y[np.arange(len(y)), classes]


def test_weight_is_abs_weight_and_data_free(mlp):
    model, w, _ = mlp
    rel = relevance(model, None, "weight")
    for i in range(3):
        np.testing.assert_array_equal(rel[f"L{i}"], np.abs(w[f"W{i}"]))
    s = sensitivity(model, None, "weight", "l1")
    assert s.scores["L1"] == pytest.approx(float(np.abs(w["W1"]).sum()), rel=1e-6)


def test_fd_scale_matches_finite_difference_by_hand(mlp):
    model, w, x = mlp
    h = 1e-2
    rel = relevance(model, {"x": x}, "fd", fd_h=h)
    classes = forward(w, x).argmax(1)
    for i in range(3):
        wp, wm = dict(w), dict(w)
        wp[f"W{i}"] = (w[f"W{i}"] * (1 + h)).astype(np.float32)
        wm[f"W{i}"] = (w[f"W{i}"] * (1 - h)).astype(np.float32)
        ref = np.mean(np.abs(_pred_logit(wp, x, classes) - _pred_logit(wm, x, classes))) / (2 * h)
        assert rel[f"L{i}"].shape == (1,)
        assert rel[f"L{i}"][0] == pytest.approx(ref, rel=1e-3)


def test_fd_approaches_abs_directional_derivative(mlp):
    """fd ~ E|sum(w * df/dw)|; df/dW2 of the last Gemm is r1 (outer) one-hot(class)."""
    model, w, x = mlp
    rel = relevance(model, {"x": x}, "fd", fd_h=1e-3)
    y = forward(w, x)
    classes = y.argmax(1)
    h1 = np.maximum(np.maximum(x @ w["W0"] + w["b0"], 0) @ w["W1"] + w["b1"], 0)
    directional = (h1 @ w["W2"])[np.arange(len(x)), classes]  # sum_ij W2_ij * d f / d W2_ij
    assert rel["L2"][0] == pytest.approx(np.mean(np.abs(directional)), rel=1e-2)


def test_fd_channel_granularity_sums_like_layer_for_last_layer(mlp):
    model, w, x = mlp
    rel = relevance(model, {"x": x}, "fd", fd_granularity="channel", fd_h=1e-3)
    assert rel["L0"].shape == (5,) and rel["L2"].shape == (2,)
    # the last layer: scaling output column c only moves logit c, so the channel of the predicted class carries it
    classes = forward(w, x).argmax(1)
    h1 = np.maximum(np.maximum(x @ w["W0"] + w["b0"], 0) @ w["W1"] + w["b1"], 0)
    for c in range(2):
        contrib = (h1 @ w["W2"][:, c]) * (classes == c)
        assert rel["L2"][c] == pytest.approx(np.mean(np.abs(contrib)), rel=1e-2)


def test_fd_noise_mode_is_seeded(mlp):
    model, _, x = mlp
    a = sensitivity(model, {"x": x}, "fd", fd_mode="noise", noise_samples=4, seed=3)
    b = sensitivity(model, {"x": x}, "fd", fd_mode="noise", noise_samples=4, seed=3)
    assert a.scores == b.scores and all(v > 0 for v in a.scores.values())


def _hsic_brute(masks, ys):
    p, c = masks.shape
    n = ys.shape[1]
    hmat = np.eye(p) - 1.0 / p
    out = np.zeros(c)
    for k in range(c):
        kk = (masks[:, k][:, None] == masks[:, k][None, :]).astype(float)
        for s in range(n):
            d = np.abs(ys[:, s][:, None] - ys[:, s][None, :])
            pairs = d[np.triu_indices(p, 1)]
            big = pairs[pairs > 1e-6 * (np.abs(ys[:, s]).max() + 1e-12)]
            sigma = np.median(big) if big.size else 1.0
            ll = np.exp(-(d**2) / (2 * sigma**2))
            out[k] += np.trace(kk @ hmat @ ll @ hmat) / (p - 1) ** 2
    return out / n


def test_hsic_matches_brute_force(mlp):
    model, w, x = mlp
    p, drop, seed = 12, 0.5, 5
    rel = relevance(model, {"x": x}, "hsic", hsic_masks=p, hsic_drop=drop, seed=seed)
    classes = forward(w, x).argmax(1)
    for li in range(3):
        wl = w[f"W{li}"]
        masks = (np.random.default_rng([seed, li, 7919]).random((p, wl.shape[1])) >= drop).astype(float)
        ys = []
        for m in masks:
            ww = dict(w)
            ww[f"W{li}"] = (wl * m[None, :]).astype(np.float32)
            ys.append(_pred_logit(ww, x, classes))
        ys = np.stack(ys)
        np.testing.assert_allclose(rel[f"L{li}"], _hsic_brute(masks, ys), rtol=1e-4, atol=1e-9)
        np.testing.assert_allclose(hsic_scores(masks, ys), _hsic_brute(masks, ys), rtol=1e-9)


def test_hsic_finds_the_only_channel_that_matters():
    rng = np.random.default_rng(0)
    masks = (rng.random((40, 4)) >= 0.5).astype(float)
    ys = masks[:, [2]] * 3.0 + 0.01 * rng.normal(size=(40, 6))
    scores = hsic_scores(masks, ys)
    assert int(np.argmax(scores)) == 2 and scores[2] > 5 * np.delete(scores, 2).max()
