"""Fixtures for slicing tests (models come from ``slice_models``)."""

from __future__ import annotations

import numpy as np
import pytest
from slice_models import cnn_data, cnn_model

from onnxslice.model import Model
from onnxslice.profile import Profile, profile


@pytest.fixture(scope="module")
def cnn() -> tuple[Model, Profile, np.ndarray]:
    model = cnn_model()
    x = cnn_data()
    return model, profile(model, x, 8), x
