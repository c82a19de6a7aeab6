"""Shared fixtures. Helpers live in ``_common.py`` (import them from there, not from a conftest)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from _common import small_cnn

os.environ.setdefault("ONNXSLICE_PROGRESS", "0")
os.environ.setdefault("ONNXSLICE_CACHE", "off")  # tests never write the user's cache (test_grad_diskcache sets one)


@pytest.fixture
def cnn_proto() -> onnx.ModelProto:
    return small_cnn()


@pytest.fixture
def cnn_path(tmp_path: Path, cnn_proto: onnx.ModelProto) -> Path:
    p = tmp_path / "cnn.onnx"
    onnx.save_model(cnn_proto, str(p))
    return p


@pytest.fixture
def cnn_input() -> np.ndarray:
    return np.random.default_rng(1).normal(size=(5, 1, 8, 8)).astype(np.float32)
