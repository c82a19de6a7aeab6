"""The one-shot ``gradients(path, x)`` reuses the engine built for a model file, and notices a new file."""

from __future__ import annotations

import os

import numpy as np
import onnx
from _grad_nets import cnn

from onnxslice.grad import GradientEngine, clear_cache, gradients
from onnxslice.grad import engine as engine_module


def test_oneshot_caches_engine_per_file_and_rebuilds_when_the_file_changes(tmp_path) -> None:
    clear_cache()
    path = tmp_path / "m.onnx"
    onnx.save(cnn(seed=0), path)
    x = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)
    g1 = gradients(str(path), x)
    assert len(engine_module._ENGINES) == 1
    (cached,) = engine_module._ENGINES.values()
    g2 = gradients(path, x)
    assert list(engine_module._ENGINES.values()) == [cached]  # served from the cache
    np.testing.assert_array_equal(g1.inputs["x"], g2.inputs["x"])
    onnx.save(cnn(seed=1), path)  # other weights, same structure
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    g3 = gradients(str(path), x)
    want = GradientEngine(str(path))(x)
    np.testing.assert_allclose(g3.inputs["x"], want.inputs["x"], rtol=1e-6)
    assert not np.allclose(g3.inputs["x"], g1.inputs["x"])
    gradients(str(path), x, target="class:1")  # another target: another engine
    assert len(engine_module._ENGINES) == 3
    clear_cache()
    assert not engine_module._ENGINES
