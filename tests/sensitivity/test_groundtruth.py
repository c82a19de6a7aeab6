"""The perturbation ground truth: brute-force reference, prefix caching, a fragile layer ranked first."""

from __future__ import annotations

import numpy as np
import pytest
from _sens_helpers import build_mlp, forward, mlp_weights

from onnxslice.errors import DataError
from onnxslice.sensitivity import UnknownNameError, perturbation_importance
from onnxslice.sensitivity.groundtruth import _KIND, BLOCK, perturb, perturbation_importances


@pytest.mark.parametrize("noise", ["U", "N", "D"])
def test_weights_match_brute_force(mlp, noise):
    model, w, x = mlp
    draws, mag, seed = 3, 0.4, 2
    gt = perturbation_importance(model, {"x": x}, noise, "weights", mag, draws, seed=seed, batch_size=16)
    y0 = forward(w, x)
    for li in range(3):
        tot = 0.0
        for d in range(draws):
            rng = np.random.default_rng([seed, li, d, _KIND[noise]])
            ww = dict(w)
            ww[f"W{li}"] = perturb(w[f"W{li}"], noise, mag, float(np.abs(w[f"W{li}"]).max()), rng)
            tot += np.linalg.norm(forward(ww, x) - y0, axis=1).mean()
        assert gt.scores[f"L{li}"] == pytest.approx(tot / draws, rel=1e-4)


@pytest.mark.parametrize("structured", [False, True])
@pytest.mark.parametrize("noise", ["U", "N", "D"])
def test_perturb_is_bit_identical_to_the_generator_formulas(noise, structured):
    """One draw serves every magnitude: the numbers must stay those of Generator.normal/random per call."""
    x = np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32)
    shape = [1, 5] if structured else [6, 5]
    for mag in (0.1, 0.3, 0.5):
        rng, ref_rng = np.random.default_rng([4, 1, 2]), np.random.default_rng([4, 1, 2])
        got = perturb(x, noise, mag, 2.5, rng, proportion=0.3, structured=structured, axis=1)
        out = x.astype(np.float64)
        if noise == "U":
            out = out * (ref_rng.random(shape) >= mag)
        elif noise == "N":
            out = out + ref_rng.normal(0.0, mag * 2.5, shape)
        else:
            hit = ref_rng.random(shape) < 0.3
            sign = np.where(ref_rng.random(shape) < 0.5, -1.0, 1.0)
            out = out + hit * sign * (mag * 2.5)
        assert got.dtype == np.float32 and np.array_equal(got, out.astype(np.float32))


@pytest.mark.parametrize(("on", "kw"), [
    ("weights", {}), ("weights", {"cache_prefix": False}), ("weights", {"structured": True}),
    ("activations", {}), ("activations", {"act_pattern": "shared"}), ("activations", {"structured": True}),
])
@pytest.mark.parametrize("noise", ["U", "N", "D"])
def test_many_magnitudes_equal_one_call_per_magnitude(noise, on, kw):
    w = mlp_weights()
    model = build_mlp(w)
    x = np.random.default_rng(1).normal(size=(BLOCK + 10, 3)).astype(np.float32)
    mags = [0.1, 0.3, 0.5]
    sessions: dict = {}
    many = perturbation_importances(model, {"x": x}, noise, on, mags, 3, seed=2, batch_size=40, proportion=0.3,
                                    sessions=sessions, **kw)
    assert [g.meta["magnitude"] for g in many] == mags
    for mag, got in zip(mags, many, strict=True):
        one = perturbation_importance(model, {"x": x}, noise, on, mag, 3, seed=2, batch_size=40, proportion=0.3,
                                      **kw)
        assert got.scores == one.scores  # exactly: the same draws, applied at each magnitude


def test_activations_shared_pattern_match_brute_force(mlp):
    model, w, x = mlp
    gt = perturbation_importance(model, {"x": x}, "N", "activations", 0.3, 2, seed=1, structured=True,
                                 act_pattern="shared")
    y0 = forward(w, x)
    peaks = {}
    forward(w, x, act={i: (lambda h, i=i: peaks.__setitem__(i, np.abs(h).max()) or h) for i in range(3)})
    for li in range(3):
        tot = 0.0
        for d in range(2):
            rng = np.random.default_rng([1, li, d, _KIND["N"]])
            width = w[f"W{li}"].shape[1]
            pattern = perturb(np.ones(width), "N", 0.3, peaks[li], rng, structured=True, axis=-1)
            y = forward(w, x, act={li: lambda h, p=pattern: h + (p - 1.0)})
            tot += np.linalg.norm(y - y0, axis=1).mean()
        assert gt.scores[f"L{li}"] == pytest.approx(tot / 2, rel=1e-4)


@pytest.mark.parametrize("noise", ["U", "N", "D"])
def test_activations_per_sample_patterns_match_brute_force(noise):
    """Default act_pattern="sample": sample i uses row i % BLOCK of the block drawn for i // BLOCK."""
    w = mlp_weights()
    model = build_mlp(w)
    x = np.random.default_rng(1).normal(size=(BLOCK + 30, 3)).astype(np.float32)  # two blocks
    draws, mag, seed = 2, 0.4, 3
    gt = perturbation_importance(model, {"x": x}, noise, "activations", mag, draws, seed=seed, batch_size=50,
                                 proportion=0.3)
    y0 = forward(w, x)
    peaks = {}
    forward(w, x, act={i: (lambda h, i=i: peaks.__setitem__(i, np.abs(h).max()) or h) for i in range(3)})
    for li in range(3):
        width = w[f"W{li}"].shape[1]
        tot = 0.0
        for d in range(draws):
            pats = np.concatenate([
                perturb(np.ones((BLOCK, width)), noise, mag, peaks[li],
                        np.random.default_rng([seed, li, d, _KIND[noise], b]), proportion=0.3)
                for b in range(2)])[: len(x)]
            assert not np.all(pats == pats[:1])  # the samples do not share one pattern
            fn = (lambda h, p=pats: h * p) if noise == "U" else (lambda h, p=pats: h + (p - 1.0))
            tot += np.linalg.norm(forward(w, x, act={li: fn}) - y0, axis=1).mean()
        assert gt.scores[f"L{li}"] == pytest.approx(tot / draws, rel=1e-4)


def test_activations_per_sample_do_not_depend_on_batching(mlp):
    model, _, x = mlp
    a = perturbation_importance(model, {"x": x}, "D", "activations", 0.5, 3, batch_size=7, structured=True)
    b = perturbation_importance(model, {"x": x}, "D", "activations", 0.5, 3, batch_size=None, structured=True)
    assert a.scores == pytest.approx(b.scores, rel=1e-6)


def test_activations_per_sample_are_more_repeatable_than_shared():
    """Same expectation, but two seeds agree far better with per-sample patterns (the benchmark's reason)."""
    w = mlp_weights(0, (3, 16, 16, 2))
    model = build_mlp(w)
    x = np.random.default_rng(1).normal(size=(200, 3)).astype(np.float32)

    def spread(pattern: str) -> float:
        runs = [perturbation_importance(model, {"x": x}, "U", "activations", 0.3, 4, seed=s, act_pattern=pattern)
                for s in range(4)]
        v = np.array([[r.scores[k] for k in ("L0", "L1", "L2")] for r in runs])
        return float((v.std(axis=0) / v.mean(axis=0)).mean())

    assert spread("sample") < 0.3 * spread("shared")


def test_prefix_cache_equals_full_runs(mlp):
    model, _, x = mlp
    a = perturbation_importance(model, {"x": x}, "D", "weights", 0.5, 3, cache_prefix=True)
    b = perturbation_importance(model, {"x": x}, "D", "weights", 0.5, 3, cache_prefix=False)
    assert a.scores == pytest.approx(b.scores, rel=1e-6)
    assert a.meta["suffix_nodes"]["L2"] == 1 and a.meta["suffix_nodes"]["L0"] == 5


def _fragile_model():
    """L1 carries one outlier weight on a dead input unit: it does not change f, but it sets max|w|,
    so a noise relative to max|w| swamps every other weight of L1."""
    w = mlp_weights(3)
    w["b0"][:] = np.abs(w["b0"]) + 0.1
    w["W0"][:, 0] = 0.0
    w["b0"][0] = -1.0  # unit 0 of the first hidden layer is always 0 after ReLU
    w["W1"][0, 1] = 60.0
    return w


@pytest.mark.parametrize(("noise", "on"), [("N", "weights"), ("D", "weights"), ("U", "weights")])
def test_fragile_layer_ranks_first(noise, on):
    w = _fragile_model()
    model = build_mlp(w)
    x = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    if noise == "U":  # zeroing is scale-free: make L1 fragile by routing everything through one weight
        w = mlp_weights(3, (3, 4, 1, 2))
        w["W1"][:] = 0.0
        w["W1"][:, 0] = 2.0
        model = build_mlp(w)
    else:  # the outlier is harmless to f itself
        clean = dict(w)
        clean["W1"] = w["W1"].copy()
        clean["W1"][0, 1] = 0.0
        np.testing.assert_allclose(forward(w, x), forward(clean, x))
    gt = perturbation_importance(model, {"x": x}, noise, on, 0.3, 16, proportion=0.3)
    assert gt.ranking()[0] == "L1", gt.scores


def test_fragile_activation_ranks_first():
    w = mlp_weights(4)
    w["W1"][:, 0] *= 0.0
    w["b1"][0] = 500.0  # one huge, unused neuron in L1's output: relative noise swamps the others
    w["W2"][0, :] = 0.0
    model = build_mlp(w)
    x = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    gt = perturbation_importance(model, {"x": x}, "N", "activations", 0.2, 8)
    assert gt.ranking()[0] == "L1", gt.scores


def test_accuracy_metric_and_labels(mlp):
    model, w, x = mlp
    labels = forward(w, x).argmax(1)
    gt = perturbation_importance(model, {"x": x, "y": labels}, "U", "weights", 1.0, 1, metric="accuracy")
    # zeroing all weights of the last layer leaves only its bias: accuracy drops to the bias's class share
    bias_class = int(np.argmax(w["b2"]))
    assert gt.scores["L2"] == pytest.approx(1.0 - float(np.mean(labels == bias_class)))


def test_bad_inputs(mlp):
    model, _, x = mlp
    with pytest.raises(UnknownNameError, match="U, N, D"):
        perturbation_importance(model, {"x": x}, "Q")
    with pytest.raises(UnknownNameError, match="weights, activations"):
        perturbation_importance(model, {"x": x}, "N", on="biases")
    with pytest.raises(DataError, match="magnitudes"):
        perturbation_importances(model, {"x": x}, "N", "weights", [0.2, 1.5])
    with pytest.raises(DataError, match="magnitudes"):
        perturbation_importances(model, {"x": x}, "N", "weights", [])
    with pytest.raises(UnknownNameError, match="sample, shared"):
        perturbation_importance(model, {"x": x}, "N", on="activations", act_pattern="each")
    with pytest.raises(DataError, match="magnitude"):
        perturbation_importance(model, {"x": x}, "N", magnitude=2.0)
    with pytest.raises(DataError, match="'x'"):
        perturbation_importance(model, {"x": x[:, :2]}, "N")
