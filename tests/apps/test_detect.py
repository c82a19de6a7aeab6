"""The slice-feature detector on the reference LeNet-5: features against ``slice()``, the ONNX export, bad input.

Data: ``builtin:mnist`` (training split to fit, test split to score). Small sample counts keep it fast;
the detection quality itself is measured by ``benchmarks/bench_detect.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("mlxtend")
pytest.importorskip("sklearn")
pytest.importorskip("skl2onnx")

from _common import ROOT, files_in

from onnxslice.apps.detect import Detector, detection_metrics, fit_detector, model_digest
from onnxslice.apps.features import extract_features
from onnxslice.cli import main
from onnxslice.data import load_data
from onnxslice.errors import DataError
from onnxslice.model import load
from onnxslice.profile import profile
from onnxslice.slicing import slice as slice_model

LENET = ROOT / "models" / "lenet5.onnx"


@pytest.fixture(scope="module")
def setup():
    if not LENET.exists():
        pytest.skip("models/lenet5.onnx is not in this checkout")
    model = load(LENET)
    train = load_data("builtin:mnist?split=train")
    prof = profile(model, train.subset(slice(0, 500)), show_progress=False)
    return model, train.subset(slice(0, 120)), prof


@pytest.fixture(scope="module")
def detector(setup):
    model, train, prof = setup
    return fit_detector(model, train, profile=prof, granularity="channel", min_per_class=3)


def test_slice_features_are_each_samples_own_slice(setup):
    model, train, prof = setup
    x = train.x[:3]
    f = extract_features(model, x, "slice", profile=prof, granularity="channel")
    assert f.values.shape == (3, sum(n for _, n in f.blocks)) == (3, f.length)
    for i in range(3):
        s = slice_model(model, prof, x, "pred", granularity="channel", samples=[i])
        ref = []
        for r in s.layers:
            ref.append(s.channel_synapses(r["weight"], "sum"))
            ref.append(s.channel_neurons(r["output"], "sum") if r["output"] in s.neurons else np.zeros(len(ref[-1])))
        np.testing.assert_array_equal(f.values[i], np.concatenate(ref).astype(np.float32))
        assert f.predictions[i] == s.predictions[0]
    act = extract_features(model, x, "activation")
    assert act.values.shape == (3, sum(n for _, n in act.blocks))
    np.testing.assert_array_equal(act.predictions, f.predictions)
    grad = extract_features(model, x, "gradient")
    assert grad.values.shape == (3, sum(n for _, n in grad.blocks)) and np.isfinite(grad.values).all()


@pytest.mark.slow
def test_local_processes_give_the_same_features(setup):
    model, train, prof = setup
    x = train.x[:6]
    a = extract_features(model, x, "slice", profile=prof, granularity="channel", batch_size=3)
    b = extract_features(model, x, "slice", profile=prof, granularity="channel", batch_size=3, workers=2)
    np.testing.assert_array_equal(a.values, b.values)


def test_detector_round_trip_and_onnx_export(detector, setup, tmp_path):
    model, _train, _prof = setup
    test = load_data("builtin:mnist?split=test&n=20")
    res = detector.detect(model, test)
    assert res.flagged.shape == (20,) and ((res.probability >= 0) & (res.probability <= 1)).all()
    np.testing.assert_array_equal(res.disagree, res.detector_labels != res.predictions)
    np.testing.assert_array_equal(res.flagged, res.disagree | (res.probability < detector.threshold))
    assert 0.0 < detector.threshold < 1.0  # calibrated on the training samples' cross-validated probabilities
    path = detector.save(tmp_path / "det.npz")
    again = Detector.load(path)
    res2 = again.detect(model, test)
    np.testing.assert_array_equal(res.probability, res2.probability)
    onx = detector.save_onnx(tmp_path / "det.onnx")
    proto = onnx.load(str(onx))
    onnx.checker.check_model(proto, full_check=True)
    assert {p.key for p in proto.metadata_props} >= {"onnxslice.detector.model_fingerprint"}
    import onnxruntime as ort

    f = detector.features(model, test)
    sess = ort.InferenceSession(str(onx), providers=["CPUExecutionProvider"])
    labels, _probs = sess.run(None, {"features": f.values[:, detector.columns]})
    np.testing.assert_array_equal(labels, res.detector_labels)
    m = detection_metrics(res.scores[:10], res.flagged[:10], res.scores[10:], res.flagged[10:])
    assert set(m) >= {"precision", "recall", "f1", "auc"}


def test_detector_refuses_another_model_profile_or_feature_length(detector, setup):
    model, train, _prof = setup
    other = load(LENET)
    w = other.layers[0].weight
    arr = other.initializer(w).copy()
    arr.flat[0] += 1.0
    from onnx import numpy_helper

    proto = onnx.ModelProto()
    proto.CopyFrom(other.proto)
    for t in proto.graph.initializer:
        if t.name == w:
            t.CopyFrom(numpy_helper.from_array(arr, w))
    changed = load(proto)
    assert changed.fingerprint == model.fingerprint and model_digest(changed) != model_digest(model)
    with pytest.raises(DataError, match="another model"):
        detector.check(changed)
    prof2 = profile(model, train.subset(slice(0, 50)), show_progress=False)
    with pytest.raises(DataError, match="another profile"):
        detector.check(model, prof2)
    with pytest.raises(DataError, match="length"):
        detector.classify(np.zeros((2, detector.feature_length + 1), np.float32))


def test_too_few_samples_per_class(setup):
    model, train, prof = setup
    with pytest.raises(DataError, match="too few"):
        fit_detector(model, train.subset(slice(0, 12)), profile=prof, granularity="channel", min_per_class=3)
    with pytest.raises(DataError, match="flag_rate"):
        fit_detector(model, train, profile=prof, granularity="channel", min_per_class=3, flag_rate=1.5)
    with pytest.raises(DataError, match="classifier"):
        fit_detector(model, train, profile=prof, classifier="svm")


def test_skip_output_drops_only_the_output_layer(detector):
    last = detector.options and detector.columns.max()
    assert last < detector.feature_length - 1
    assert len(detector.columns) == detector.feature_length - 20  # LeNet-5's fc3: 10 synapse + 10 neuron sums


# -- CLI -------------------------------------------------------------------------------------------------
def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_cli_fit_attack_score(setup, tmp_path: Path, capsys):
    _model, _train, prof = setup
    p = tmp_path / "p.npz"
    prof.save(p)
    det = tmp_path / "det.npz"
    data = "builtin:mnist?split=train&n=120"
    code, _out, err = _run(["detect", "fit", str(LENET), "--data", data, "--profile", str(p), "--out", str(det),
                           "--onnx", str(tmp_path / "det.onnx"), "--granularity", "channel", "--min-per-class", "3",
                           "--workers", "1"], capsys)  # fmt: skip
    assert code == 0, err
    adv = tmp_path / "adv.npz"
    code, _out, err = _run(["detect", "attack", str(LENET), "--data", "builtin:mnist?split=test&n=20", "--attack",
                           "pgd", "--successful", "--out", str(adv)], capsys)  # fmt: skip
    assert code == 0, err
    scores = tmp_path / "s.json"
    code, _out, err = _run(["detect", "score", str(LENET), "--detector", str(det), "--data", str(adv), "--out",
                           str(scores), "--workers", "1", "--profile", str(p)], capsys)  # fmt: skip
    assert code == 0, err
    res = json.loads(scores.read_text())
    assert res["samples"] == len(res["scores"]) > 0 and res["model_accuracy"] == 0.0


def test_cli_bad_input_writes_nothing(setup, tmp_path: Path, capsys):
    _model, _train, prof = setup
    p = tmp_path / "p.npz"
    prof.save(p)
    before = files_in(tmp_path)
    code, _, err = _run(["detect", "fit", str(LENET), "--data", "builtin:mnist?split=train&n=12", "--profile",
                         str(p), "--out", str(tmp_path / "det.npz"), "--granularity", "channel",
                         "--min-per-class", "3", "--workers", "1"], capsys)  # fmt: skip
    assert code == 2 and "too few" in err and err.count("\n") == 1
    assert files_in(tmp_path) == before
    other = ROOT / "models" / "resnet8_mnist.onnx"
    if other.exists():
        code, _, err = _run(["detect", "fit", str(other), "--data", "builtin:mnist?split=train&n=12", "--profile",
                             str(p), "--out", str(tmp_path / "det.npz")], capsys)  # fmt: skip
        assert code == 2 and "profile belongs to another model" in err and err.count("\n") == 1
    from test_attacks import _int_model

    im = tmp_path / "int.onnx"
    onnx.save_model(_int_model(), str(im))
    np.savez(tmp_path / "ids.npz", ids=np.ones((3, 4), np.int64), y=np.zeros(3, np.int64))
    before = files_in(tmp_path)
    code, _, err = _run(["detect", "attack", str(im), "--data", str(tmp_path / "ids.npz"), "--attack", "fgsm",
                         "--out", str(tmp_path / "adv.npz")], capsys)  # fmt: skip
    assert code == 2 and "integer" in err and err.count("\n") == 1
    assert files_in(tmp_path) == before
