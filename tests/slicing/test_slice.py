"""``onnxslice.slicing.slice`` end to end: the worked example, criteria, summaries, files, sliced models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _slice_nets import cnn_data, cnn_model, worked_example_model, zero_profile

from onnxslice.errors import DataError, OnnxSliceError
from onnxslice.model import Model
from onnxslice.profile import Profile, profile
from onnxslice.rewrite import slice_to_model
from onnxslice.slicing import Slice, slice
from onnxslice.testing import run_ort


@pytest.fixture(scope="module")
def cnn() -> tuple[Model, Profile, np.ndarray]:
    model = cnn_model()
    x = cnn_data()
    return model, profile(model, x, 8), x


def test_slice_worked_example_exact():
    model = worked_example_model()
    s = slice(model, zero_profile(model), np.array([[1, 2]], np.float32), "class:0", theta=0.3, workers=1)
    # out1 <- h2[0] (w=2); h2[0] <- h1[0] (w=1), h1[2] (w=2); h1[0] <- in1 (w=3), in2 (w=1); h1[2] <- in2 (w=1)
    np.testing.assert_array_equal(s.neurons["out"], [1, 0])
    np.testing.assert_array_equal(s.neurons["h2"], [1, 0])
    np.testing.assert_array_equal(s.neurons["h1"], [1, 0, 1])
    np.testing.assert_array_equal(s.neurons["x"], [1, 2])
    # weights are stored (K, N) for MatMul: W3.T[i, j] is the synapse from h2[i] to out[j]
    np.testing.assert_array_equal(s.synapses["W3"], [[1, 0], [0, 0]])
    np.testing.assert_array_equal(s.synapses["W2"], [[1, 0, 1], [0, 0, 0]])  # Gemm transB: rows = outputs
    np.testing.assert_array_equal(s.synapses["W1"], [[1, 0, 0], [1, 0, 1]])
    assert all((v >= 0).all() for v in [*s.neurons.values(), *s.synapses.values()])
    np.testing.assert_array_equal(s.predictions, [0])


def test_slice_worked_example_theta_abs_keeps_more():
    model = worked_example_model()
    s = slice(model, zero_profile(model), np.array([[1, 2]], np.float32), 0, theta=0.3, theta_sum="abs", workers=1)
    assert (s.neurons["h1"] != 0).sum() >= 2


def test_slice_abs_accumulation_counts_uses_and_keeps_neurons(cnn):
    model, prof, x = cnn
    signed = slice(model, prof, x, "pred", samples="0:4", workers=1)
    counted = slice(model, prof, x, "pred", samples="0:4", workers=1, accumulate="abs")
    assert counted.options["accumulate"] == "abs" and signed.options["accumulate"] == "signed"
    for name in signed.neurons:
        np.testing.assert_array_equal(counted.neurons[name], signed.neurons[name])
    for name, table in signed.synapses.items():
        assert (counted.synapses[name] >= np.abs(table)).all()
    # conv weights are used at many positions: some uses disagree in sign, so the counts exceed |signed|
    assert (counted.synapses["c1_w"] > np.abs(signed.synapses["c1_w"])).any()
    # the worked example has one use per synapse: both accumulations agree there
    we = worked_example_model()
    a = slice(we, zero_profile(we), np.array([[1, 2]], np.float32), "class:0", workers=1, accumulate="abs")
    np.testing.assert_array_equal(a.synapses["W1"], [[1, 0, 0], [1, 0, 1]])
    with pytest.raises(OnnxSliceError, match="accumulate"):
        slice(model, prof, x, accumulate="count", workers=1)  # type: ignore[arg-type]


def test_slice_sums_per_sample_tables(cnn):
    model, prof, x = cnn
    whole = slice(model, prof, x, "pred", samples="0:4", batch_size=3, workers=1)
    parts = [slice(model, prof, x, "pred", samples=[i], workers=1) for i in range(4)]
    assert sum(int((v != 0).sum()) for v in whole.neurons.values()) > 50
    for name, table in whole.neurons.items():
        np.testing.assert_array_equal(table, sum(p.neurons[name] for p in parts if name in p.neurons))
    for name, table in whole.synapses.items():
        np.testing.assert_array_equal(table, sum(p.synapses[name] for p in parts if name in p.synapses))
    np.testing.assert_array_equal(whole.predictions, [p.predictions[0] for p in parts])
    assert whole.neurons["x"].shape == (1, 6, 6) and whole.synapses["c1_w"].shape == (4, 1, 3, 3)


def test_slice_fixed_batch_model_runs_sample_by_sample():
    model = cnn_model(fixed_batch=True)
    x = cnn_data(6)
    prof = profile(model, x, 4)
    s = slice(model, prof, x, "pred", samples="0:3", batch_size=3, workers=1)
    ref = cnn_model()
    s_ref = slice(ref, profile(ref, x, 4), x, "pred", samples="0:3", batch_size=3, workers=1)
    for name in s_ref.synapses:
        np.testing.assert_array_equal(s.synapses[name], s_ref.synapses[name])


def test_slice_targets_classes_and_intermediate_value(cnn):
    model, prof, x = cnn
    both = slice(model, prof, x, [1, 3], samples="0:2", workers=1)
    one = slice(model, prof, x, "class:1", samples="0:2", workers=1)
    three = slice(model, prof, x, "class:3", samples="0:2", workers=1)
    np.testing.assert_array_equal(both.synapses["fc_w"], one.synapses["fc_w"] + three.synapses["fc_w"])
    assert both.targets == ["class:1", "class:3"]
    mid = slice(model, prof, x, "value:r1[2]", samples="0:2", workers=1)
    assert "fc_w" not in mid.synapses and "c2_w" not in mid.synapses  # only ancestors of r1
    assert mid.synapses["c1_w"][[0, 1, 3]].sum() == 0  # channel 2's filter only
    assert (mid.synapses["c1_w"][2] != 0).any()
    elem = slice(model, prof, x, "value:r1[2,3,3]", samples="0:2", workers=1)
    assert (elem.neurons["r1"] != 0).sum() <= 1


def test_slice_channel_granularity_and_summaries(cnn):
    model, prof, x = cnn
    s = slice(model, prof, x, "pred", samples="0:4", granularity="channel", workers=1)
    assert s.neurons["c1"].shape == (4,) and s.neurons["logits"].shape == (5,)
    assert s.synapses["c1_w"].shape == (4, 1, 3, 3)
    e = slice(model, prof, x, "pred", samples="0:4", workers=1)
    np.testing.assert_array_equal(e.channel_neurons("c1"), e.neurons["c1"].reshape(4, -1).sum(1))
    np.testing.assert_array_equal(e.channel_synapses("c1_w", "count"), (e.synapses["c1_w"] != 0).reshape(4, -1).sum(1))
    np.testing.assert_array_equal(e.channel_synapses("fc_w"), e.synapses["fc_w"].sum(1))  # Gemm transB: rows
    rows = e.per_layer()
    assert [r["layer"] for r in rows] == [layer.name for layer in model.layers]
    fc = rows[-1]
    assert fc["synapses"] == 20 and 0 < fc["synapses_in"] <= 1
    assert "slice of 4 sample(s)" in e.table() and "Slice(4 samples" in repr(e)


def test_slice_save_load_roundtrip(cnn, tmp_path: Path):
    model, prof, x = cnn
    s = slice(model, prof, x, "pred", samples="0:3", workers=1)
    path = s.save(tmp_path / "s.npz")
    t = Slice.load(path)
    assert t.targets == s.targets and t.theta == s.theta and t.options == s.options and t.layers == s.layers
    for name in s.neurons:
        np.testing.assert_array_equal(t.neurons[name], s.neurons[name])
    for name in s.synapses:
        np.testing.assert_array_equal(t.synapses[name], s.synapses[name])
    np.testing.assert_array_equal(t.samples, s.samples)
    np.testing.assert_array_equal(t.predictions, s.predictions)
    with pytest.raises(DataError, match="Profile"):
        Profile.load(path)


def test_slice_to_model_zeroes_outside_synapses(cnn):
    model, prof, x = cnn
    s = slice(model, prof, x, "pred", samples="0:6", workers=1)
    sliced = slice_to_model(s, model)
    for layer in model.layers:
        w, ws = model.initializer(layer.weight), sliced.initializer(layer.weight)
        inside = s.synapses.get(layer.weight, np.zeros(w.shape)) != 0
        np.testing.assert_array_equal(ws[inside], w[inside])
        assert (ws[~inside] == 0).all()
    np.testing.assert_array_equal(sliced.initializer("c1_b"), model.initializer("c1_b"))  # biases kept
    out = run_ort(sliced, {"x": x[:6]})[0]
    assert out.shape == (6, 5) and np.isfinite(out).all()
    assert any(p.key == "onnxslice.pass" and p.value == "slice" for p in sliced.proto.metadata_props)


def test_slice_rejects_profile_of_another_model(cnn):
    model, _, x = cnn
    other = worked_example_model()
    with pytest.raises(DataError, match="another model"):
        slice(model, zero_profile(other), x, "pred", workers=1)


@pytest.mark.parametrize("theta", [0, 1, 1.5, -0.2])
def test_slice_rejects_theta_outside_open_interval(cnn, theta):
    model, prof, x = cnn
    with pytest.raises(OnnxSliceError, match="theta must lie strictly between 0 and 1"):
        slice(model, prof, x, "pred", theta=theta, workers=1)


@pytest.mark.parametrize(
    ("target", "match"),
    [
        ("class:5", "out of range"),
        ([0, 9], "out of range"),
        ("value:nope", "not a value"),
        ("value:r1[9]", "out of range"),
        ("bogus", "unknown target"),
    ],
)
def test_slice_rejects_bad_targets(cnn, target, match):
    model, prof, x = cnn
    with pytest.raises(DataError, match=match):
        slice(model, prof, x, target, samples="0:1", workers=1)


def test_slice_rejects_bad_options_and_samples(cnn):
    model, prof, x = cnn
    with pytest.raises(OnnxSliceError, match="granularity"):
        slice(model, prof, x, granularity="layer", workers=1)  # type: ignore[arg-type]
    with pytest.raises(DataError, match="outside"):
        slice(model, prof, x, samples=[99], workers=1)


def test_slice_to_model_and_summaries_reject_foreign_names(cnn):
    model, prof, x = cnn
    s = slice(model, prof, x, "pred", samples="0:2", workers=1)
    with pytest.raises(DataError, match="another model"):
        slice_to_model(s, worked_example_model())
    with pytest.raises(DataError, match="no neuron value 'nope'"):
        s.channel_neurons("nope")
    with pytest.raises(DataError, match="unknown reduction"):
        s.channel_synapses("c1_w", "median")
