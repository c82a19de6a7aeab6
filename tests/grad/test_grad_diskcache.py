"""The on-disk cache of loaded models behind one-shot ``gradients(path, x)`` (:mod:`onnxslice.grad.diskcache`)."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from _grad_nets import cnn

from onnxslice import model as model_module
from onnxslice.grad import GradientEngine, clear_cache, gradients
from onnxslice.grad.diskcache import DETACH_MIN, cache_dir, load_cached, model_key

X = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("ONNXSLICE_CACHE", str(folder))
    clear_cache()
    yield folder
    clear_cache()


def _model(tmp_path: Path, seed: int = 0) -> Path:
    path = tmp_path / "models" / "m.onnx"
    path.parent.mkdir(exist_ok=True)
    onnx.save(cnn(seed=seed), path)
    return path


def _lenet(tmp_path: Path) -> Path:
    """LeNet-5 (conv and dense weights of 10-190 KB: the kind an entry keeps in its .bin)."""
    path = tmp_path / "models" / "lenet5.onnx"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes((Path(__file__).resolve().parents[2] / "models" / "lenet5.onnx").read_bytes())
    return path


XL = np.random.default_rng(1).random((3, 1, 28, 28), dtype=np.float32)


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in (folder / "models").glob("*")) if (folder / "models").exists() else []


def test_second_load_skips_checker_and_shape_inference(cache: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path = _model(tmp_path)
    g1 = gradients(str(path), X)
    key = model_key(path)
    assert _entries(cache) == [f"{key}.bin", f"{key}.json", f"{key}.onnx"]
    assert not any(p.name.startswith(".onnxslice") for p in path.parent.iterdir())  # nothing beside the model
    clear_cache()  # as in a fresh process: the in-process engine cache is empty

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("shape inference ran on a cache hit")

    monkeypatch.setattr(model_module, "_infer", boom)
    monkeypatch.setattr(model_module, "_check", boom)
    m = load_cached(path)
    assert m.path == path.resolve()
    assert "weights_fingerprint" in m.__dict__  # from the entry, not hashed again
    assert m.weights_fingerprint == g1.meta["weights"]  # as hashed from the file at the first load
    g2 = gradients(str(path), X)
    assert g2.meta["weights"] == g1.meta["weights"]
    for k, v in g1.weights.items():
        np.testing.assert_array_equal(g2.weights[k], v)
    np.testing.assert_array_equal(g2.inputs["x"], g1.inputs["x"])


def test_a_changed_file_gets_a_new_entry(cache: Path, tmp_path: Path) -> None:
    path = _model(tmp_path)
    gradients(str(path), X)
    before = model_key(path)
    onnx.save(cnn(seed=1), path)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with the old modification time
    assert model_key(path) != before  # the change time moved
    clear_cache()
    g = gradients(str(path), X)
    want = GradientEngine(str(path))(X)
    np.testing.assert_allclose(g.inputs["x"], want.inputs["x"], rtol=1e-6)
    assert len(_entries(cache)) == 6  # two entries of three files


def test_a_corrupt_entry_is_rebuilt_with_a_warning(cache: Path, tmp_path: Path) -> None:
    path = _model(tmp_path)
    g1 = gradients(str(path), X)
    entry = cache / "models" / f"{model_key(path)}.onnx"
    entry.write_bytes(b"not a model")
    clear_cache()
    with pytest.warns(UserWarning, match="unreadable.*rebuilding"):
        g2 = gradients(str(path), X)
    np.testing.assert_array_equal(g2.inputs["x"], g1.inputs["x"])
    assert onnx.load(str(entry)).graph.node  # rewritten whole
    clear_cache()
    load_cached(path)  # and read back without a warning


def test_cache_off_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONNXSLICE_CACHE", "off")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() is None
    clear_cache()
    gradients(str(_model(tmp_path)), X)
    clear_cache()
    assert not (tmp_path / "home").exists()


def test_default_folder_is_the_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ONNXSLICE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "onnxslice"


def test_an_unwritable_cache_warns_and_still_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("ONNXSLICE_CACHE", str(blocker / "sub"))  # a folder under a file: cannot be made
    clear_cache()
    with pytest.warns(UserWarning, match="cannot write the onnxslice cache"):
        g = gradients(str(_model(tmp_path)), X)
    clear_cache()
    assert np.isfinite(g.inputs["x"]).all()


def test_a_hit_maps_the_weights_and_holds_them_once(cache: Path, tmp_path: Path) -> None:
    path = _lenet(tmp_path)
    gradients(str(path), XL)
    clear_cache()
    m, ref = load_cached(path), model_module.load(path)
    big = {n for n in ref.initializer_names if ref.initializer(n).nbytes >= DETACH_MIN}
    assert big and m.detached == big  # the large weights come from the entry's .bin
    for n in ref.initializer_names:
        np.testing.assert_array_equal(m.initializer(n), ref.initializer(n))
    for n in big:
        a = m.initializer(n)
        assert not a.flags.writeable and not a.flags.owndata  # a read-only view of the mapped file
        t = next(t for t in m.skeleton.graph.initializer if t.name == n)
        assert not t.raw_data and t.data_location == onnx.TensorProto.EXTERNAL  # not held twice
    full = m.full_proto()  # what a save writes: every weight back in the proto
    onnx.checker.check_model(full, full_check=True)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in full.graph.initializer)
    out = m.save(tmp_path / "saved.onnx")
    again = model_module.load(out)
    for n in ref.initializer_names:
        np.testing.assert_array_equal(again.initializer(n), ref.initializer(n))
    edited = onnx.ModelProto()
    edited.CopyFrom(m.skeleton)
    twin = m.with_proto(edited)  # an edit of the held proto keeps the mapped arrays of what is still external
    assert twin.detached == big
    np.testing.assert_array_equal(GradientEngine(twin)(XL).inputs["x"], GradientEngine(ref)(XL).inputs["x"])


@pytest.mark.parametrize("executor", ["graph", "auto"])
def test_the_graph_executor_and_a_standalone_emission_run_on_a_hit(cache: Path, tmp_path: Path,
                                                                    executor: str) -> None:
    from onnxslice.grad.emit import emit_gradient_model, run_emitted

    path = _lenet(tmp_path)
    want = GradientEngine(model_module.load(path))(XL)
    gradients(str(path), XL)
    clear_cache()
    for _ in range(3):  # "auto" times both executors on its first calls
        g = gradients(str(path), XL, executor=executor)
    np.testing.assert_allclose(g.inputs["x"], want.inputs["x"], rtol=1e-5, atol=1e-7)
    engine = GradientEngine(load_cached(path))
    assert engine.model.detached
    proto = emit_gradient_model(engine, {"x": XL})  # standalone: the weights are written into the graph
    onnx.checker.check_model(proto, full_check=True)
    res = run_emitted(proto, {"x": XL})
    np.testing.assert_allclose(res["grad:x"], want.inputs["x"], rtol=1e-5, atol=1e-7)


def test_a_cut_entry_is_rebuilt_not_read(cache: Path, tmp_path: Path) -> None:
    path = _lenet(tmp_path)
    g1 = gradients(str(path), XL)
    entry = cache / "models" / f"{model_key(path)}.onnx"
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])  # may still parse as a shorter model
    clear_cache()
    with pytest.warns(UserWarning, match="unreadable.*model file"):
        g2 = gradients(str(path), XL)
    np.testing.assert_array_equal(g2.inputs["x"], g1.inputs["x"])


def test_an_entry_without_its_weights_file_is_rebuilt_with_a_warning(cache: Path, tmp_path: Path) -> None:
    path = _lenet(tmp_path)
    g1 = gradients(str(path), XL)
    (cache / "models" / f"{model_key(path)}.bin").unlink()
    clear_cache()
    with pytest.warns(UserWarning, match="unreadable.*weights file"):
        g2 = gradients(str(path), XL)
    np.testing.assert_array_equal(g2.inputs["x"], g1.inputs["x"])
    assert (cache / "models" / f"{model_key(path)}.bin").is_file()


def _is_mapped(a: np.ndarray) -> bool:
    """Whether ``a``'s memory is a mapped file (a cache hit's weights)."""
    base: object = a
    while isinstance(base, np.ndarray):
        if isinstance(base, np.memmap):
            return True
        base = base.base
    return isinstance(base, mmap.mmap)


def test_an_engine_built_from_a_path_goes_through_the_cache(cache: Path, tmp_path: Path) -> None:
    path = _lenet(tmp_path)
    first = GradientEngine(str(path))  # a miss: the entry is written (load() holds the weights in memory)
    assert _entries(cache) and first.model.detached and not any(_is_mapped(first.model.initializer(n))
                                                                for n in first.model.detached)
    again = GradientEngine(path)  # a later engine (process) maps the weights
    assert again.model.detached and all(_is_mapped(again.model.initializer(n)) for n in again.model.detached)
    want = GradientEngine(model_module.load(path))(XL)
    got = again(XL)
    np.testing.assert_array_equal(got.inputs["x"], want.inputs["x"])
    for k, v in want.weights.items():
        np.testing.assert_array_equal(got.weights[k], v)
