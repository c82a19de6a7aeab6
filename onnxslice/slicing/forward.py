"""NNSlicer forward analysis: the delta of every neuron, ``dy_n(xi) = y_n(xi) - mean_n``.

A value holds neurons when the profile has a mean for it with the recorded per-sample shape (float
node outputs and model inputs with a batch axis); shape tensors, integers and batch-independent
values hold none. Nothing here runs a model: it takes recorded values and a :class:`Profile`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from onnxslice.profile import Profile

__all__ = ["deltas", "neuron_values"]


def neuron_values(profile: Profile, values: Mapping[str, np.ndarray]) -> list[str]:
    """Names of the recorded values that hold neurons (profiled, same per-sample shape, float)."""
    out = []
    for name, arr in values.items():
        mean = profile.mean.get(name)
        if mean is None or arr.ndim == 0 or not np.issubdtype(arr.dtype, np.floating):
            continue
        axis = profile.axis(name)
        if axis < arr.ndim and tuple(np.delete(arr.shape, axis)) == tuple(mean.shape):
            out.append(name)
    return out


def deltas(profile: Profile, values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Forward analysis: ``value - profiled mean`` (float32, batch axis first) for every neuron value.

    Args:
        profile: the model's profile (means without the batch axis).
        values: recorded values and model inputs, batch axis first.

    Returns:
        value name -> delta array of the same shape.
    """
    return {
        name: (values[name].astype(np.float32, copy=False)
               - np.expand_dims(profile.mean[name].astype(np.float32), profile.axis(name)))
        for name in neuron_values(profile, values)
    }
