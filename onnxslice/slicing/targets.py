"""Slicing criteria: the CONTRIB seeds of the targets (parsing and layouts: :mod:`onnxslice.targets`).

A criterion is a target spec or a list of them (``pred``, ``class:K``, ``class:K1,K2``,
``value:NAME[idx]``); pred and class targets read the chosen output in any layout (``[N, C]``,
``[N, C, 1, 1]``, sequences, time-first sequences, dense maps). Seeds are +1 on every selected neuron
of every sample.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from onnxslice.errors import DataError
from onnxslice.model import Model
from onnxslice.targets import BoundTarget, TargetSpec, parse_targets

__all__ = ["Target", "parse_targets", "seed_tables"]

Target = TargetSpec


def seed_tables(
    model: Model, targets: Sequence[TargetSpec], output: str, values: dict[str, np.ndarray], channel: bool, n: int
) -> dict[str, np.ndarray]:
    """CONTRIB seeds (+1 per selected neuron and sample) keyed by value, shaped like the value.

    At channel granularity the seed tables of rank >= 3 values are ``(B, C)``.

    Raises:
        DataError: a value target names no recorded value or indexes outside it; a class out of range.
    """
    seeds: dict[str, np.ndarray] = {}
    for t in targets:
        bound = BoundTarget(model, t, output, logits=False)
        if bound.value not in values:
            raise DataError(f"target value '{bound.value}' is not a value of this model (see `onnxslice inspect`)")
        arr = values[bound.value]
        mask = bound.mask(arr, n)
        if channel and arr.ndim > 2:
            mask = (mask.reshape(arr.shape[0], arr.shape[1], -1).sum(axis=2) > 0).astype(np.int32)
        seeds[bound.value] = seeds[bound.value] + mask if bound.value in seeds else mask.astype(np.int32)
    return seeds
