"""Profiling equals a brute-force mean; memory stays flat as batches grow."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import pytest
from _common import small_cnn

import onnxslice as osl
from onnxslice.errors import DataError
from onnxslice.profile import Profile, profile
from onnxslice.record import record


def test_profile_equals_brute_force_mean(cnn_proto: onnx.ModelProto) -> None:
    m = osl.load(cnn_proto)
    x = np.random.default_rng(3).normal(size=(11, 1, 8, 8)).astype(np.float32)
    prof = profile(m, x, batch_size=4)  # 3 batches, the last one short
    trace = record(m, x)
    assert prof.count == 11
    for name in ("x", "c", "b", "r", "p", "f", "logits"):
        np.testing.assert_allclose(prof.mean[name], trace[name].mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(prof.channel("c"), trace["c"].mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6)


def test_profile_memory_does_not_grow_with_batches(cnn_proto: onnx.ModelProto) -> None:
    m = osl.load(cnn_proto)
    rng = np.random.default_rng(0)

    def peak(n_batches: int) -> int:
        x = rng.normal(size=(16 * n_batches, 1, 8, 8)).astype(np.float32)
        tracemalloc.start()
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        profile(m, x, batch_size=16)
        p = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        return p  # the input is allocated before tracing starts, so it is not counted

    small, large = peak(4), peak(64)
    assert large < small * 1.5 + 64_000, (small, large)


def test_profile_save_load_and_model_check(tmp_path: Path, cnn_proto: onnx.ModelProto, cnn_input: np.ndarray) -> None:
    m = osl.load(cnn_proto)
    prof = profile(m, cnn_input)
    back = Profile.load(prof.save(tmp_path / "p.npz"))
    assert back.count == prof.count and back.fingerprint == m.fingerprint
    np.testing.assert_array_equal(back.mean["r"], prof.mean["r"])
    back.check_model(m)
    other = small_cnn()
    other.graph.node[2].op_type = "Sigmoid"
    with pytest.raises(DataError, match="belongs to another model"):
        back.check_model(osl.load(other))


def test_profile_rejects_empty_data(cnn_proto: onnx.ModelProto) -> None:
    with pytest.raises(DataError, match="empty"):
        profile(osl.load(cnn_proto), np.zeros((0, 1, 8, 8), np.float32))


def test_profile_load_wrong_kind(tmp_path: Path) -> None:
    np.savez(tmp_path / "x.npz", a=np.zeros(2))
    with pytest.raises(DataError, match="not an onnxslice Profile"):
        Profile.load(tmp_path / "x.npz")


def test_saved_results_are_ordinary_files(tmp_path: Path, cnn_proto: onnx.ModelProto, cnn_input: np.ndarray) -> None:
    import os

    mask = os.umask(0o022)
    try:
        path = profile(osl.load(cnn_proto), cnn_input).save(tmp_path / "p.npz")
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["p.npz"]  # no temporary file left behind


def test_profile_of_a_model_with_an_untyped_value_checks_against_it():
    """An old Dropout's mask output gets no value_info from shape inference: a profile that records it must
    still be accepted by the same model (it was refused as "belongs to another model")."""
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 4], np.linspace(-1, 1, 12).tolist())
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("Dropout", ["h"], ["d", "mask"], ratio=0.5),
             helper.make_node("Relu", ["d"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [w])
    model = osl.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=4))
    assert "mask" not in model.value_info  # the situation of the conformance model light_inception_v1
    prof = profile(model, np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32))
    assert {"h", "mask"} <= set(prof.mean)
    prof.check_model(model)
    with pytest.raises(DataError, match="belongs to another model"):  # a value no node computes is still refused
        Profile({**prof.mean, "elsewhere": prof.mean["h"]}, prof.count, prof.fingerprint).check_model(model)
