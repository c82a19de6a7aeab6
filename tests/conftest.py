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


@pytest.fixture(autouse=True)
def _prune_speed_gate_off(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """prune's speed gate (refuse a default plan measured slower than its input) times models of a few
    microseconds on a shared CI machine, so a test that is not about the gate would fail on noise. The gate
    is tested with deterministic timings in tests marked ``speed_gate``; everywhere else it is off."""
    if request.node.get_closest_marker("speed_gate") is None:
        import onnxslice.commands.prune as prune_cmd

        monkeypatch.setattr(prune_cmd, "SLOWER", float("inf"))


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
