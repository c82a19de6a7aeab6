"""Black-box criteria (weight, fd, hsic) against brute-force numpy references on a tiny MLP."""

from __future__ import annotations

import numpy as np
import pytest
from _sens_helpers import forward

from onnxslice.sensitivity import UnknownNameError, relevance, sensitivity
from onnxslice.sensitivity.criteria import hsic_bandwidth, hsic_scores


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
    top = sensitivity(model, None, "weight", "linf")  # SAfER's default: the largest |w| of each layer
    assert top.scores == pytest.approx({f"L{i}": float(np.abs(w[f"W{i}"]).max()) for i in range(3)})


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


def _sigma_brute(ys_list, s):
    """The largest over layers of the median non-zero pairwise distance of sample s."""
    meds = []
    for ys in ys_list:
        p = ys.shape[0]
        pairs = np.array([abs(ys[i, s] - ys[j, s]) for i in range(p) for j in range(i + 1, p)])
        big = pairs[pairs > 1e-6 * (np.abs(ys[:, s]).max() + 1e-12)]
        meds.append(np.median(big) if big.size else 0.0)
    return max(meds) or 1.0


def _hsic_brute(masks, ys, sigmas):
    p, c = masks.shape
    n = ys.shape[1]
    hmat = np.eye(p) - 1.0 / p
    out = np.zeros(c)
    for k in range(c):
        kk = (masks[:, k][:, None] == masks[:, k][None, :]).astype(float)
        for s in range(n):
            d = np.abs(ys[:, s][:, None] - ys[:, s][None, :])
            ll = np.exp(-(d**2) / (2 * sigmas[s] ** 2))
            out[k] += np.trace(kk @ hmat @ ll @ hmat) / (p - 1) ** 2
    return out / n


def _hsic_runs(w, x, p, drop, seed):
    classes = forward(w, x).argmax(1)
    runs = []
    for li in range(3):
        wl = w[f"W{li}"]
        masks = (np.random.default_rng([seed, li, 7919]).random((p, wl.shape[1])) >= drop).astype(float)
        ys = []
        for m in masks:
            ww = dict(w)
            ww[f"W{li}"] = (wl * m[None, :]).astype(np.float32)
            ys.append(_pred_logit(ww, x, classes))
        runs.append((masks, np.stack(ys)))
    return runs


@pytest.mark.parametrize("bandwidth", ["shared", "layer"])
def test_hsic_matches_brute_force(mlp, bandwidth):
    model, w, x = mlp
    p, drop, seed = 12, 0.5, 5
    rel = relevance(model, {"x": x}, "hsic", hsic_masks=p, hsic_drop=drop, seed=seed, hsic_bandwidth=bandwidth)
    runs = _hsic_runs(w, x, p, drop, seed)
    for li, (masks, ys) in enumerate(runs):
        pool = [r[1] for r in runs] if bandwidth == "shared" else [ys]
        sigmas = [_sigma_brute(pool, s) for s in range(len(x))]
        np.testing.assert_allclose(rel[f"L{li}"], _hsic_brute(masks, ys, sigmas), rtol=1e-4, atol=1e-9)
        if bandwidth == "layer":
            np.testing.assert_allclose(hsic_scores(masks, ys), _hsic_brute(masks, ys, sigmas), rtol=1e-9)


def test_hsic_shared_bandwidth_keeps_the_size_of_the_effect():
    """Regression: with one median bandwidth per layer, a layer whose channels move f by 1e-3 scored the
    same as one whose channels move it by 1; with the shared kernel the strong layer scores far higher."""
    rng = np.random.default_rng(0)
    masks = (rng.random((40, 3)) >= 0.5).astype(float)
    noise = 0.05 * rng.normal(size=(40, 6))
    strong = masks[:, [0]] * 1.0 + noise
    weak = 1e-3 * (masks[:, [0]] * 1.0 + noise)
    per_layer = [hsic_scores(masks, ys).max() for ys in (strong, weak)]
    assert per_layer[0] == pytest.approx(per_layer[1], rel=1e-6)  # the flaw the shared kernel removes
    sigma = hsic_bandwidth([strong, weak])
    shared = [hsic_scores(masks, ys, sigma).max() for ys in (strong, weak)]
    assert shared[0] > 20 * shared[1]


def test_hsic_bad_bandwidth_lists_choices(mlp):
    model, _, x = mlp
    with pytest.raises(UnknownNameError, match="shared, layer"):
        relevance(model, {"x": x}, "hsic", hsic_bandwidth="global")


def test_hsic_finds_the_only_channel_that_matters():
    rng = np.random.default_rng(0)
    masks = (rng.random((40, 4)) >= 0.5).astype(float)
    ys = masks[:, [2]] * 3.0 + 0.01 * rng.normal(size=(40, 6))
    scores = hsic_scores(masks, ys)
    assert int(np.argmax(scores)) == 2 and scores[2] > 5 * np.delete(scores, 2).max()
