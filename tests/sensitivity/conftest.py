"""Fixtures of the sensitivity tests (helpers live in ``_sens_helpers.py``)."""

from __future__ import annotations

import numpy as np
import pytest
from _sens_helpers import build_mlp, mlp_weights

from onnxslice.model import Model


@pytest.fixture
def mlp() -> tuple[Model, dict[str, np.ndarray], np.ndarray]:
    w = mlp_weights()
    x = np.random.default_rng(1).normal(size=(40, 3)).astype(np.float32)
    return build_mlp(w), w, x
