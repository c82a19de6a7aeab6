"""Bit flips, the staged fault runner and fault campaigns, checked against onnxruntime on edited models."""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest
from _common import small_cnn
from onnx import helper, numpy_helper

from onnxslice.apps.bits import class_bits, draw_flips, flip_bits
from onnxslice.apps.faults import FaultModel, checked_curve, fault_layers, min_checked, run_campaign, vulnerability
from onnxslice.apps.staged import FaultPoint, StagedRunner
from onnxslice.cli import main
from onnxslice.errors import DataError, ModelError
from onnxslice.model import Model, load
from onnxslice.record import make_session, runtime_proto
from onnxslice.sensitivity.cut import Suffix
from onnxslice.testing import make_model


def _run(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return make_session(runtime_proto(proto), "cpu").run(None, {"x": x})[0]


def _with_init(model: Model, name: str, value: np.ndarray) -> onnx.ModelProto:
    p = onnx.ModelProto()
    p.CopyFrom(model.proto)
    for t in p.graph.initializer:
        if t.name == name:
            t.CopyFrom(numpy_helper.from_array(value, name))
    return p


# -- bits ---------------------------------------------------------------------------------------------
def test_flip_known_bits_exact_values() -> None:
    one = np.array([1.0], np.float32)  # 0x3F800000
    assert np.isposinf(flip_bits(one, [0], [30])[0])  # exponent 0x7F -> 0xFF, mantissa 0: +inf
    assert flip_bits(one, [0], [31])[0] == -1.0  # sign
    assert flip_bits(one, [0], [23])[0] == 0.5  # lowest exponent bit: 127 -> 126
    assert flip_bits(one, [0], [22])[0] == 1.5  # top mantissa bit
    assert flip_bits(one, [0], [0])[0] == np.float32(1.0 + 2.0**-23)
    assert one[0] == 1.0  # the input is not modified
    assert np.isposinf(flip_bits(np.array([1.0], np.float16), [0], [14])[0])  # 0x3C00 -> 0x7C00
    assert flip_bits(np.array([1.0], np.float16), [0], [9])[0] == np.float16(1.5)
    assert flip_bits(np.array([1], np.int8), [0], [7])[0] == -127  # 0x01 -> 0x81
    assert flip_bits(np.array([1], np.uint8), [0], [7])[0] == 129
    assert flip_bits(np.array([1], np.int8), [0], [3], "int4")[0] == -7  # 0b0001 -> 0b1001
    assert flip_bits(np.array([-8], np.int8), [0], [3], "int4")[0] == 0
    assert flip_bits(np.array([7], np.uint8), [0], [3], "uint4")[0] == 15
    q = flip_bits(np.array([1, 2], ml_dtypes.int4), [1], [0])
    assert q.dtype == ml_dtypes.int4 and q.astype(np.int8).tolist() == [1, 3]
    twice = flip_bits(one, [0, 0], [30, 30])  # XOR: the same bit twice flips back
    assert twice[0] == 1.0


def test_bit_classes_and_bad_classes() -> None:
    assert class_bits("float32", "exponent").tolist() == list(range(23, 31))
    assert class_bits("float32", "mantissa").tolist() == list(range(23))
    assert class_bits("float16", "exponent").tolist() == list(range(10, 15))
    assert class_bits("int8", "sign").tolist() == [7]
    assert class_bits("int4", "mantissa").tolist() == [0, 1, 2]
    with pytest.raises(DataError, match="no exponent"):
        class_bits("int8", "exponent")
    with pytest.raises(DataError, match="no sign"):
        class_bits("uint8", "sign")
    with pytest.raises(DataError, match="unknown bit class"):
        class_bits("float32", "fraction")
    with pytest.raises(DataError, match="not float64"):
        flip_bits(np.zeros(2), [0], [1])


def test_draw_flips_counts_and_distinct() -> None:
    rng = np.random.default_rng(0)
    pos = class_bits("float32", "exponent")
    idx, bit = draw_flips(rng, 100, pos, None, 7)
    assert len(idx) == 7 and len(set(zip(idx.tolist(), bit.tolist(), strict=True))) == 7
    assert set(bit.tolist()) <= set(pos.tolist()) and idx.max() < 100
    counts = [len(draw_flips(np.random.default_rng(s), 1000, pos, 1e-3, None)[0]) for s in range(200)]
    assert 6.5 < np.mean(counts) < 9.5  # binomial(8000, 1e-3): mean 8


# -- the staged runner against onnxruntime on edited models ------------------------------------------------
def test_staged_weights_and_activation_match_edited_models() -> None:
    m = load(small_cnn())
    x = np.random.default_rng(1).normal(size=(6, 1, 8, 8)).astype(np.float32)
    runner = StagedRunner(m, [(slice(0, 6), {"x": x})])
    w_conv = flip_bits(m.initializer("conv.w"), [5], [30])
    w_fc = flip_bits(m.initializer("fc.w"), [3, 40], [31, 27])
    # weights of both layers: the reference is the whole model with both initializers replaced
    pts = [FaultPoint("conv.w", None), FaultPoint("fc.w", None)]
    runner.prepare(pts)
    got = runner.run(0, pts, {"conv.w": w_conv, "fc.w": w_fc}, lambda v, a: a)["logits"]
    ref = _run(_with_init(load(_with_init(m, "conv.w", w_conv)), "fc.w", w_fc), x)
    np.testing.assert_array_equal(got, ref)
    # the conv activation flipped, then fc's weight: the reference cuts the fc-edited model below conv
    pts = [FaultPoint(None, "c"), FaultPoint("fc.w", None)]
    runner.prepare(pts)

    def flip_c(value: str, a: np.ndarray) -> np.ndarray:
        assert value == "c"
        return flip_bits(a, [0, 77, 200], [30, 31, 29])

    got = runner.run(0, pts, {"fc.w": w_fc}, flip_c)["logits"]
    edited = load(_with_init(m, "fc.w", w_fc))
    suf = Suffix.build(edited, "conv", "activations")
    c = make_session(runtime_proto(m.proto, ["c"]), "cpu").run(["c"], {"x": x})[0]
    ref = suf.run({"c": c}, replace={"c": flip_c("c", c)})["logits"]
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_quantized_stored_weights_flip_like_an_edited_model(precision: str) -> None:
    from onnxslice.rewrite.bits_plan import uniform_plan
    from onnxslice.rewrite.quantize import quantize

    m = load(small_cnn())
    q = quantize(m, uniform_plan(m, precision, block_size=4), use_matmul_nbits=False)
    fc = next(x for x in fault_layers(q) if x.name == "fc")
    assert fc.weight_encoding == precision
    stored = np.asarray(q.initializer(fc.weight)).astype(np.int8)
    flipped = flip_bits(stored, [0, 9], [3, 1], precision)
    x = np.random.default_rng(2).normal(size=(4, 1, 8, 8)).astype(np.float32)
    runner = StagedRunner(q, [(slice(0, 4), {"x": x})])
    pts = [FaultPoint(fc.weight, None)]
    runner.prepare(pts)
    got = runner.run(0, pts, {fc.weight: flipped}, lambda v, a: a)["logits"]
    as_stored = flipped.astype(ml_dtypes.int4) if precision == "int4" else flipped
    ref = _run(_with_init(q, fc.weight, as_stored), x)
    np.testing.assert_array_equal(got, ref)
    assert not np.array_equal(got, _run(q.proto, x))


# -- campaigns ---------------------------------------------------------------------------------------
def _data(n: int = 48) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(n, 1, 8, 8)).astype(np.float32)
    return {"x": x, "y": rng.integers(0, 3, n)}


def test_campaign_reproducible_and_batch_independent() -> None:
    m = load(small_cnn())
    fm = FaultModel("both", rate=2e-3, bits="exponent")
    a = run_campaign(m, _data(), [["conv"], ["fc"], ["conv", "fc"]], fm, trials=4, seed=5, batch_size=48)
    b = run_campaign(m, _data(), [["conv"], ["fc"], ["conv", "fc"]], fm, trials=4, seed=5, batch_size=7)
    assert [s.to_dict() for s in a.sets] == [s.to_dict() for s in b.sets]
    assert sum(sum(s.flips) for s in a.sets) > 0
    c = run_campaign(m, _data(), [["conv"]], fm, trials=4, seed=6)
    assert c.sets[0].flips != a.sets[0].flips
    assert a.clean_accuracy is not None and a.metric == "accuracy"


def test_campaign_one_flip_exact_effect() -> None:
    """flips=1 on a one-weight layer: the single possible fault is checked against an edited model."""
    w = np.array([[2.0]], np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    proto = make_model(nodes, {"x": (np.float32, ["N", 1])}, {"y": (np.float32, ["N", 1])}, {"w": w})
    m = load(proto)
    x = np.linspace(-1, 1, 10, dtype=np.float32)[:, None]
    # sign flip of the only weight: y = -2x; "accuracy" of a 1-column argmax is always 1, so check agreement 1
    camp = run_campaign(m, {"x": x}, [["mm"]], FaultModel("weights", rate=None, flips=1, bits="sign"), trials=2)
    assert camp.sets[0].flips == [1, 1] and camp.sets[0].agreement == [1.0, 1.0]
    assert flip_bits(w, [0], [31])[0, 0] == -2.0


def test_vulnerability_and_checked_curve() -> None:
    m = load(small_cnn())
    fm = FaultModel("weights", rate=None, flips=2, bits="exponent")
    scores, camp = vulnerability(m, _data(), fm, trials=3)
    assert set(scores.scores) == {"conv", "fc"} and scores.criterion == "vulnerability"
    curve = checked_curve(m, _data(), ["conv", "fc"], fm, trials=3)
    assert curve.meta["checked"] == [0, 1, 2]
    assert curve.sets[-1].layers == [] and curve.sets[-1].mean_ci("accuracy")[0] == curve.clean
    # every layer checked: no fault, so the loss is zero and min_checked is at most 2
    k = min_checked(curve, 0.01)
    assert k is not None and k <= 2
    # the curve's single-layer set equals the vulnerability campaign's (same trial seeds, same layer streams)
    assert curve.sets[1].to_dict() == camp.sets[1].to_dict()


@pytest.mark.slow
def test_campaign_same_on_process_pool() -> None:
    m = load(small_cnn())
    fm = FaultModel("both", rate=1e-3)
    a = run_campaign(m, _data(), [["conv", "fc"]], fm, trials=3, seed=2)
    b = run_campaign(m, _data(), [["conv", "fc"]], fm, trials=3, seed=2, workers=2)
    assert a.sets[0].to_dict() == b.sets[0].to_dict()


# -- bad input ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("rate", [0.0, 1.0, -1e-3, 2.0, float("nan")])
def test_rate_outside_open_interval(rate: float) -> None:
    with pytest.raises(DataError, match=r"in \(0, 1\)"):
        FaultModel("weights", rate=rate).check()


def test_bad_fault_models_and_layers() -> None:
    with pytest.raises(DataError, match="exactly one"):
        FaultModel("weights", rate=1e-3, flips=2).check()
    with pytest.raises(DataError, match="unknown fault target"):
        FaultModel("bias", rate=1e-3).check()
    m = load(small_cnn())
    with pytest.raises(ModelError, match="no layer named nope"):
        run_campaign(m, _data(), [["nope"]], FaultModel(rate=1e-3), trials=1)
    relu = make_model([helper.make_node("Relu", ["x"], ["y"], name="r")], {"x": (np.float32, ["N", 3])},
                      {"y": (np.float32, ["N", 3])}, {})
    with pytest.raises(ModelError, match="no layers faults can hit"):
        fault_layers(load(relu))


def _int_model() -> onnx.ModelProto:
    nodes = [helper.make_node("Cast", ["x"], ["xf"], name="cast", to=onnx.TensorProto.FLOAT),
             helper.make_node("MatMul", ["xf", "w"], ["y"], name="mm")]
    return make_model(nodes, {"x": (np.int64, ["N", 4])}, {"y": (np.float32, ["N", 2])},
                      {"w": np.ones((4, 2), np.float32)})


def test_cli_bad_input_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "m.onnx"
    onnx.save_model(small_cnn(), str(model))
    data = tmp_path / "d.npz"
    np.savez(data, **_data())
    out = tmp_path / "out.json"
    cases = [
        (["--rate", "1.5"], "bit-error rate must be in (0, 1)"),
        (["--rate", "0"], "bit-error rate must be in (0, 1)"),
        (["--layers", "conv,nope"], "no layer named nope"),
    ]
    for extra, msg in cases:
        rc = main(["faults", str(model), "--data", str(data), "--out", str(out), "--trials", "1", *extra])
        err = capsys.readouterr().err
        assert rc == 2 and msg in err and len(err.strip().splitlines()) == 1
        assert not out.exists()
    intm = tmp_path / "int.onnx"
    onnx.save_model(_int_model(), str(intm))
    np.savez(tmp_path / "i.npz", x=np.ones((4, 4), np.int64))
    rc = main(["faults", str(intm), "--data", str(tmp_path / "i.npz"), "--out", str(out), "--trials", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "float inputs" in err and not out.exists()


def test_cli_writes_campaign(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "m.onnx"
    onnx.save_model(small_cnn(), str(model))
    data = tmp_path / "d.npz"
    np.savez(data, **_data())
    out = tmp_path / "camp.json"
    rc = main(["faults", str(model), "--data", str(data), "--out", str(out), "--trials", "2", "--flips", "1",
               "--bits", "exponent", "--on", "weights"])
    assert rc == 0
    d = json.loads(out.read_text())
    assert d["kind"] == "FaultCampaign" and [s["layers"] for s in d["sets"]] == [["conv"], ["fc"]]
    assert all(f == [1, 1] for f in (s["flips"] for s in d["sets"]))
    assert "bit-flip faults" in capsys.readouterr().out


# -- models the project did not build: packed int4 layers, a label output first ---------------------------
def _mlp() -> Model:
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["logits"], name="fc2")]
    return load(make_model(nodes, {"x": (np.float32, ["N", 32])}, {"logits": (np.float32, ["N", 4])},
                           {"w1": rng.normal(size=(32, 32)).astype(np.float32),
                            "w2": rng.normal(size=(32, 4)).astype(np.float32)}))


def test_matmul_nbits_packed_bytes_are_fault_layers() -> None:
    """MatMulNBits layers flip the bytes of their packed weight; a flip changes exactly what the edited model gives."""
    from onnxslice.rewrite import matmul_nbits

    if not matmul_nbits.available():
        pytest.skip("onnxruntime's MatMulNBits quantizer is not importable here")
    m = _mlp()
    q = load(matmul_nbits.apply(m.proto, ["w1", "w2"], 16), check=False)
    layers = fault_layers(q)
    assert [x.weight_encoding for x in layers] == ["uint8", "uint8"]
    fc = layers[0]
    packed = np.asarray(q.initializer(fc.weight))
    flipped = flip_bits(packed, [5], [2])
    x = np.random.default_rng(5).normal(size=(6, 32)).astype(np.float32)
    runner = StagedRunner(q, [(slice(0, 6), {"x": x})])
    pts = [FaultPoint(fc.weight, None)]
    runner.prepare(pts)
    got = runner.run(0, pts, {fc.weight: flipped}, lambda v, a: a)["logits"]
    np.testing.assert_array_equal(got, _run(_with_init(q, fc.weight, flipped), x))
    assert not np.array_equal(got, _run(q.proto, x))


def test_campaign_reads_a_label_output_as_the_prediction() -> None:
    """A classifier whose first output is its integer label (scikit-learn's layout): the clean accuracy is
    the label's accuracy, not the argmax of a one-column output."""
    m = _mlp()
    p = onnx.ModelProto()
    p.CopyFrom(m.proto)
    p.graph.node.append(helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0))
    p.graph.output.insert(0, helper.make_tensor_value_info("label", onnx.TensorProto.INT64, ["N"]))
    labelled = load(p)
    x = np.random.default_rng(6).normal(size=(40, 32)).astype(np.float32)
    y = _run(m.proto, x).argmax(axis=1)
    camp = run_campaign(labelled, {"x": x, "y": y}, [["fc2"]], FaultModel("weights", rate=1e-3), trials=2)
    assert camp.clean_accuracy == 1.0
