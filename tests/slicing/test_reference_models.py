"""Every reference model of ``models/zoo.py`` slices end to end: all its ops have ``contributions`` rules,
CONTRIB reaches the first layer and the input, and the sliced model runs in onnxruntime."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from onnxslice.opsets import REGISTRY

from onnxslice.data import load_data
from onnxslice.model import load
from onnxslice.profile import profile
from onnxslice.rewrite import slice_to_model
from onnxslice.slicing import slice
from onnxslice.testing import run_ort

zoo = pytest.importorskip("models.zoo")

CASES = [
    pytest.param("lenet5", 64, 4, id="lenet5"),
    pytest.param("resnet8_mnist", 64, 2, id="resnet8_mnist"),
    pytest.param("mlp_digits", 64, 4, id="mlp_digits"),
    pytest.param("efficientnet_lite0", 8, 1, id="efficientnet_lite0", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("name", "n_profile", "n_slice"), CASES)
def test_reference_model_slices_end_to_end(name: str, n_profile: int, n_slice: int):
    entry = zoo.get(name)
    model = load(zoo.path(name))
    data = load_data(entry.data)
    data = data.subset(np.arange(min(n_profile, len(data))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prof = profile(model, data, 32)
    s = slice(model, prof, data, "pred", 0.3, samples=list(range(n_slice)), output=entry.output, workers=1)
    first = model.layers[0]
    assert (s.synapses[first.weight] != 0).any(), f"CONTRIB did not reach {first.name}"
    assert any((s.neurons[i] != 0).any() for i in model.input_names if i in s.neurons)
    assert all(REGISTRY.has("contributions", n.op_type, n.domain, n.opset) for n in model.nodes if n.domain == "")
    out = run_ort(slice_to_model(s, model), {k: v[:2] for k, v in data.bind(model).items()})
    assert all(np.isfinite(o).all() for o in out if np.issubdtype(o.dtype, np.floating))
