"""Executors: seeds per unit, in-process and process-pool results identical; Ray gives the same slice."""

from __future__ import annotations

import numpy as np
import pytest

from onnxslice.errors import OnnxSliceError
from onnxslice.parallel import map_units, ray_available, unit_seeds


def _draw(shared: int, unit: int, seed: int) -> tuple[int, float]:
    return unit * shared, float(np.random.default_rng(seed).random())


def test_parallel_unit_seeds_depend_on_position_only():
    assert unit_seeds(3, 4) == unit_seeds(3, 4)
    assert len(set(unit_seeds(3, 4))) == 4
    assert unit_seeds(3, 4) != unit_seeds(4, 4)


@pytest.mark.slow
def test_parallel_local_processes_match_in_process():
    serial = map_units(_draw, [1, 2, 3], 10, workers=1, seed=5)
    pooled = map_units(_draw, [1, 2, 3], 10, workers=2, seed=5)
    assert serial == pooled and [r[0] for r in serial] == [10, 20, 30]


def test_parallel_rejects_bad_backend_and_workers():
    with pytest.raises(OnnxSliceError, match="unknown backend"):
        map_units(_draw, [1], 1, backend="dask")  # type: ignore[arg-type]
    with pytest.raises(OnnxSliceError, match="workers"):
        map_units(_draw, [1], 1, workers=0)


def _tables_equal(a, b) -> None:
    assert a.neurons.keys() == b.neurons.keys() and a.synapses.keys() == b.synapses.keys()
    for k in a.neurons:
        np.testing.assert_array_equal(a.neurons[k], b.neurons[k])
    for k in a.synapses:
        np.testing.assert_array_equal(a.synapses[k], b.synapses[k])


@pytest.mark.slow
def test_parallel_slice_local_processes_and_ray_give_identical_tables():
    from _slice_nets import cnn_data, cnn_model

    from onnxslice.profile import profile
    from onnxslice.slicing import slice

    model = cnn_model()
    x = cnn_data(12)
    prof = profile(model, x, 4)
    serial = slice(model, prof, x, "pred", samples="0:8", batch_size=2, workers=1)
    pooled = slice(model, prof, x, "pred", samples="0:8", batch_size=2, workers=2)
    _tables_equal(serial, pooled)
    if not ray_available():
        pytest.skip("ray is not installed (pip install 'onnxslice[ray]'); local backends were compared")
    ray_slice = slice(model, prof, x, "pred", samples="0:8", batch_size=2, backend="ray", workers=2)
    _tables_equal(serial, ray_slice)
    np.testing.assert_array_equal(serial.predictions, ray_slice.predictions)
