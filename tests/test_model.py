"""Loading: validation, normalization, layers, external data, and the bad paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from _common import files_in
from onnx import helper, numpy_helper

import onnxslice as osl
from onnxslice.errors import ModelError, OnnxSliceError
from onnxslice.testing import make_model


def test_load_path_proto_and_bytes_agree(cnn_path: Path, cnn_proto: onnx.ModelProto) -> None:
    a, b, c = osl.load(cnn_path), osl.load(cnn_proto), osl.load(cnn_proto.SerializeToString())
    assert a.fingerprint == b.fingerprint == c.fingerprint
    assert [n.name for n in a.nodes] == ["conv", "bn", "relu", "pool", "flatten", "fc"]
    assert a.input_names == ["x"] and a.output_names == ["logits"]
    assert a.inputs[0].describe() == "float32[N,1,8,8]"
    assert a.opsets == {"": 17}


def test_load_never_modifies_given_proto(cnn_proto: onnx.ModelProto) -> None:
    before = cnn_proto.SerializeToString()
    osl.load(cnn_proto)
    assert cnn_proto.SerializeToString() == before


def test_load_layers_and_param_counts(cnn_proto: onnx.ModelProto) -> None:
    m = osl.load(cnn_proto)
    assert [(x.name, x.op_type, x.weight, x.bias, x.params, x.out_channels) for x in m.layers] == [
        ("conv", "Conv", "conv.w", "conv.b", 4 * 9 + 4, 4),
        ("fc", "Gemm", "fc.w", "fc.b", 3 * 64 + 3, 3),
    ]
    assert m.num_params == sum(int(np.prod(t.dims)) for t in cnn_proto.graph.initializer)
    assert [x.out_axis for x in m.layers] == [0, 0]  # Conv: axis 0; Gemm with transB=1: axis 0


def test_load_matmul_layer_either_operand_but_not_activation_product() -> None:
    w = np.ones((4, 2), np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["a"], name="right"),
        helper.make_node("MatMul", ["V", "x2"], ["b"], name="left"),
        helper.make_node("MatMul", ["a", "b"], ["y"], name="act_by_act"),
    ]
    m = osl.load(
        make_model(
            nodes,
            {"x": (np.float32, [2, 4]), "x2": (np.float32, [4, 2])},
            {"y": (np.float32, [2, 2])},
            {"W": w, "V": np.ones((2, 4), np.float32)},
        )
    )
    assert {x.name: (x.weight_input, x.out_channels, x.out_axis) for x in m.layers} == {
        "right": (1, 2, 1),
        "left": (0, 2, 0),
    }


def test_load_constant_weights_become_initializers() -> None:
    w = np.arange(6, dtype=np.float32).reshape(3, 2)
    nodes = [
        helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(w)),
        helper.make_node("Constant", [], ["s"], value_float=2.0),
        helper.make_node("MatMul", ["x", "W"], ["h"]),
        helper.make_node("Mul", ["h", "s"], ["y"]),
    ]
    m = osl.load(make_model(nodes, {"x": (np.float32, ["N", 3])}, {"y": (np.float32, ["N", 2])}))
    assert [n.op_type for n in m.nodes] == ["MatMul", "Mul"]
    np.testing.assert_array_equal(m.initializer("W"), w)
    assert float(m.initializer("s")) == 2.0
    assert len(m.layers) == 1 and m.layers[0].weight == "W"
    assert any("Constant" in note for note in m.notes)


def test_load_folds_constant_of_shape_weights() -> None:
    shape = np.array([2, 3], np.int64)
    nodes = [
        helper.make_node(
            "ConstantOfShape", ["wshape"], ["W"], value=numpy_helper.from_array(np.array([0.5], np.float32))
        ),
        helper.make_node("MatMul", ["x", "W"], ["y"]),
    ]
    m = osl.load(make_model(nodes, {"x": (np.float32, ["N", 2])}, {"y": (np.float32, ["N", 3])}, {"wshape": shape}))
    assert [n.op_type for n in m.nodes] == ["MatMul"]
    np.testing.assert_array_equal(m.initializer("W"), np.full((2, 3), 0.5, np.float32))
    assert not m.is_initializer("wshape")  # dead after folding


def test_load_names_unnamed_nodes_deterministically(cnn_proto: onnx.ModelProto) -> None:
    for n in cnn_proto.graph.node:
        n.name = ""
    cnn_proto.graph.node[1].name = "dup"
    cnn_proto.graph.node[2].name = "dup"
    names = [n.name for n in osl.load(cnn_proto).nodes]
    assert names == [n.name for n in osl.load(cnn_proto).nodes]
    assert len(set(names)) == len(names)
    assert names[0] == "onnxslice/Conv_0" and "dup" in names and "dup_1" in names


def test_load_external_data(tmp_path: Path, cnn_proto: onnx.ModelProto) -> None:
    path = tmp_path / "ext.onnx"
    expected = numpy_helper.to_array(cnn_proto.graph.initializer[6])
    # save_model(save_as_external_data=True) rewrites the proto it is given: save a copy.
    onnx.save_model(
        onnx.ModelProto.FromString(cnn_proto.SerializeToString()),
        str(path),
        save_as_external_data=True,
        location="ext.data",
        size_threshold=0,
    )
    assert (tmp_path / "ext.data").is_file()
    m = osl.load(path)
    np.testing.assert_array_equal(m.initializer("fc.w"), expected)


def test_load_missing_external_data_names_tensor_and_writes_nothing(tmp_path: Path, cnn_proto: onnx.ModelProto) -> None:
    path = tmp_path / "ext.onnx"
    onnx.save_model(cnn_proto, str(path), save_as_external_data=True, location="ext.data", size_threshold=0)
    (tmp_path / "ext.data").unlink()
    before = files_in(tmp_path)
    with pytest.raises(ModelError, match=r"initializer 'conv\.w'.*ext\.data.*missing"):
        osl.load(path)
    assert files_in(tmp_path) == before


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (lambda d: d / "absent.onnx", "does not exist"),
        (lambda d: d, "is a directory"),
        (lambda d: _write(d / "empty.onnx", b""), "is empty"),
        (lambda d: _write(d / "text.onnx", b"hello, not a model\n"), "not a readable ONNX"),
    ],
)
def test_load_bad_files_raise_model_error(tmp_path: Path, make, pattern: str) -> None:
    path = make(tmp_path)
    before = files_in(tmp_path)
    with pytest.raises(ModelError, match=pattern):
        osl.load(path)
    assert files_in(tmp_path) == before


def test_load_truncated_file_raises_model_error(tmp_path: Path, cnn_proto: onnx.ModelProto) -> None:
    data = cnn_proto.SerializeToString()
    path = tmp_path / "trunc.onnx"
    path.write_bytes(data[: len(data) // 2])
    before = files_in(tmp_path)
    with pytest.raises(ModelError, match=r"trunc\.onnx"):
        osl.load(path)
    assert files_in(tmp_path) == before


def test_load_invalid_graph_names_the_problem() -> None:
    nodes = [helper.make_node("Relu", ["nowhere"], ["y"], name="r")]
    bad = helper.make_model(
        helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
        ir_version=10,
    )
    with pytest.raises(ModelError, match="not a valid ONNX model"):
        osl.load(bad)
    with pytest.raises(ModelError, match=r"node 'r'.*reads 'nowhere'"):
        osl.load(bad, check=False)


def test_save_is_atomic_and_refuses_to_overwrite_input(tmp_path: Path, cnn_path: Path) -> None:
    m = osl.load(cnn_path)
    original = cnn_path.read_bytes()
    with pytest.raises(OnnxSliceError, match="refusing to overwrite the input model"):
        m.save(cnn_path)
    assert cnn_path.read_bytes() == original
    out = m.save(tmp_path / "sub" / "copy.onnx")
    assert osl.load(out).fingerprint == m.fingerprint
    assert not [p for p in tmp_path.rglob(".onnxslice-*")]


def test_fingerprint_tracks_structure_not_weights(cnn_proto: onnx.ModelProto) -> None:
    a = osl.load(cnn_proto)
    changed = onnx.ModelProto()
    changed.CopyFrom(cnn_proto)
    changed.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.zeros((4, 1, 3, 3), np.float32), "conv.w"))
    assert osl.load(changed).fingerprint == a.fingerprint
    changed.graph.node[2].op_type = "Sigmoid"
    assert osl.load(changed).fingerprint != a.fingerprint


def test_load_keeps_fp16_weights_compressed() -> None:
    w16 = np.ones((3, 2), np.float16)
    nodes = [
        helper.make_node("Cast", ["W16"], ["W"], to=onnx.TensorProto.FLOAT),
        helper.make_node("MatMul", ["x", "W"], ["y"]),
    ]
    m = osl.load(make_model(nodes, {"x": (np.float32, ["N", 3])}, {"y": (np.float32, ["N", 2])}, {"W16": w16}))
    assert [n.op_type for n in m.nodes] == ["Cast", "MatMul"]
    assert m.initializer("W16").dtype == np.float16


def test_load_holds_large_weights_once(tmp_path: Path) -> None:
    """load() keeps every initializer of at least DETACH_MIN bytes as a read-only array only: the held proto
    (``skeleton``) has a data-less stub, ``proto``/``save`` put the data back, onnxruntime runs it."""
    from onnxslice.model import DETACH_MIN
    from onnxslice.record import Recorder

    rng = np.random.default_rng(0)
    big, small = rng.standard_normal((64, 32)).astype(np.float32), rng.standard_normal(32).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])]
    src = make_model(nodes, {"x": (np.float32, ["N", 64])}, {"y": (np.float32, ["N", 32])}, {"W": big, "b": small})
    m = osl.load(src)
    assert big.nbytes >= DETACH_MIN > small.nbytes
    assert m.detached == {"W"}
    held = {t.name: t for t in m.skeleton.graph.initializer}
    assert not held["W"].raw_data and held["W"].data_location == onnx.TensorProto.EXTERNAL
    assert held["b"].raw_data  # small tensors stay in the proto
    a = m.initializer("W")
    np.testing.assert_array_equal(a, big)
    assert not a.flags.writeable
    full = m.proto  # the whole model, as a user would save or inspect it
    onnx.checker.check_model(full, full_check=True)
    np.testing.assert_array_equal(numpy_helper.to_array(next(t for t in full.graph.initializer if t.name == "W")), big)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    y = Recorder(m, None, "cpu").run({"x": x})["y"]
    np.testing.assert_allclose(y, x @ big + small, rtol=1e-5, atol=1e-5)
    again = osl.load(m.save(tmp_path / "m.onnx"))
    np.testing.assert_array_equal(again.initializer("W"), big)
    assert again.weights_fingerprint == m.weights_fingerprint == osl.load(src).weights_fingerprint
