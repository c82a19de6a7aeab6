"""The model and recorder a worker keeps for one parallel job, built once per job and reused per unit.

A job carries a token and the serialized model; the first unit a worker runs loads the model and
opens its recording session, later units of the same job reuse them, and a new job replaces them (one
job per worker at a time). A job run in this process registers the caller's own model instead, so
nothing is serialized. This module only caches; what a unit computes is its caller's business.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from onnxslice.model import Model, load
from onnxslice.record import Recorder

__all__ = ["in_process", "job_state"]

_STATE: dict[str, tuple[Model, Recorder]] = {}


def job_state(token: str, model_bytes: bytes | None, device: Any) -> tuple[Model, Recorder]:
    """The model and an all-values recorder of job ``token``, loaded from ``model_bytes`` on first use."""
    if token not in _STATE:
        if model_bytes is None:  # a bug: in-process jobs are registered with in_process()
            raise RuntimeError(f"no model registered for job {token} in this process")
        model = load(model_bytes, check=False, infer_shapes=False)
        _STATE.clear()  # one job per worker at a time
        _STATE[token] = (model, Recorder(model, "all", device))
    return _STATE[token]


@contextmanager
def in_process(token: str, model: Model, device: Any) -> Iterator[None]:
    """Register the caller's ``model`` as job ``token`` for units run in this process; forget it after."""
    _STATE.clear()
    _STATE[token] = (model, Recorder(model, "all", device))
    try:
        yield
    finally:
        _STATE.pop(token, None)
