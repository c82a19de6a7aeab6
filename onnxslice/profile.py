"""NNSlicer profiling: the mean activation of every neuron over a data set, streamed batch by batch.

A *neuron* is one scalar of an intermediate value (element level); a *channel* is axis 1 of a value
(its mean over every other axis but the sample axis is the channel-level activation). Sums are kept
in float64 and only one batch of activations is alive at a time, so memory does not grow with the
number of batches. The model inputs are profiled too (NNSlicer's input deltas need their means).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxslice.artifacts import check_array, check_belongs, check_keys, check_shapes
from onnxslice.console import progress
from onnxslice.data import Dataset, load_data
from onnxslice.errors import DataError
from onnxslice.io import load_npz, save_npz
from onnxslice.model import Model
from onnxslice.record import Device, Recorder, as_feed, recordable_values
from onnxslice.targets import symbolic_batch_axis

__all__ = ["Profile", "profile"]


def channel_mean(arr: np.ndarray) -> np.ndarray:
    """Per-channel mean of one sample's value (axis 0 of ``arr`` is the channel; rank 0 -> itself)."""
    if arr.ndim <= 1:
        return arr.astype(np.float64)
    return arr.reshape(arr.shape[0], -1).mean(axis=1, dtype=np.float64)


@dataclass
class Profile:
    """Mean activations of a model over a data set.

    Attributes:
        mean: value name -> element-level mean (shape of one sample).
        count: number of samples profiled.
        fingerprint: structure hash of the profiled model (see ``Model.fingerprint``).
        data: the data spec it was computed on.
        weights: weights hash of the profiled model (``Model.weights_fingerprint``; empty in old files).
        axes: the sample axis of values whose samples are not on axis 0 (time-first ``[T, N, ...]``
            values of recurrent nets); ``mean`` is over that axis.
    """

    mean: dict[str, np.ndarray]
    count: int
    fingerprint: str
    data: str = ""
    weights: str = ""
    axes: dict[str, int] = field(default_factory=dict)

    def axis(self, value: str) -> int:
        """The sample axis of ``value`` (0 unless the value is time-first)."""
        return self.axes.get(value, 0)

    def channel(self, value: str) -> np.ndarray:
        """Channel-level mean of ``value`` (axis 1 of the batched value)."""
        return channel_mean(self.mean[value])

    def check_model(self, model: Model, path: str | os.PathLike[str] | None = None) -> None:
        """Raise DataError when this profile was computed on another model (structure, weights, values)."""
        if self.fingerprint != model.fingerprint:
            raise DataError(
                f"the profile{f' {str(path)!r}' if path else ''} belongs to another model (fingerprint "
                f"{self.fingerprint}, the model's is {model.fingerprint}); run `onnxslice profile` on this model first"
            )
        check_belongs(path, "profile", {"weights": self.weights}, model)
        # every value the model computes is known; shapes only where shape inference typed them (an old
        # Dropout's mask, for one, has no value_info)
        shapes: dict[str, Any] = {o: None for n in model.nodes for o in n.outputs if o}
        shapes.update((k, vi.shape[1:] if vi.shape else None) for k, vi in model.value_info.items())
        check_shapes(path, "profile", self.mean, shapes, "value")

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Save as ``.npz`` (atomic)."""
        return save_npz(
            path,
            {f"mean/{k}": v for k, v in self.mean.items()},
            {"kind": "Profile", "count": self.count, "fingerprint": self.fingerprint, "data": self.data,
             "weights": self.weights, "axes": self.axes},
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Profile:
        """Load a profile written by :meth:`save`, checking its header, keys, dtypes and finite means.

        Raises:
            DataError: the file is not a complete profile; the message names the file and the problem.
        """
        arrays, meta = load_npz(path, kind="Profile")
        check_keys(path, "profile", meta, {"count": int, "fingerprint": str})
        if meta["count"] < 1:
            raise DataError(f"profile '{path}' was computed on {meta['count']} samples; profile on data first")
        stray = [k for k in arrays if not k.startswith("mean/")]
        if stray:
            raise DataError(f"profile '{path}' has an unexpected array '{stray[0]}'; it is not a profile")
        if not arrays:
            raise DataError(f"profile '{path}' holds no values")
        for k, v in arrays.items():
            check_array(path, "profile", k, v, dtype="float")
        return cls(
            {k[5:]: v for k, v in arrays.items()},
            int(meta["count"]),
            str(meta["fingerprint"]),
            str(meta.get("data", "")),
            str(meta.get("weights", "") or ""),
            {str(k): int(v) for k, v in (meta.get("axes") or {}).items()},
        )

    def summary(self) -> list[dict[str, Any]]:
        """One row per value: name, shape, mean of means, fraction of positive neurons."""
        return [
            {
                "value": k,
                "shape": list(v.shape),
                "mean": float(v.mean()) if v.size else 0.0,
                "active": float((v > 0).mean()) if v.size else 0.0,
            }
            for k, v in self.mean.items()
        ]

    def __repr__(self) -> str:
        neurons = sum(int(v.size) for v in self.mean.values())
        return f"Profile({len(self.mean)} values, {neurons:,} neurons, {self.count} samples, model {self.fingerprint})"


def profile(
    model: Model,
    data: Any,
    batch_size: int = 64,
    *,
    values: Iterable[str] | str = "all",
    device: Device = "auto",
    show_progress: bool | None = None,
) -> Profile:
    """Mean activation of every neuron over ``data``, streamed in batches.

    Args:
        model: the model.
        data: a Dataset, a data spec string, a mapping of arrays, or one array.
        batch_size: samples per unit (a model with a fixed batch runs in whole batches of its size).
        values: value names or ``"all"`` float node outputs with a sample axis.
        device: onnxruntime device.
        show_progress: draw a progress bar on stderr (default: when stderr is a terminal).

    Raises:
        DataError: empty or malformed data.
    """
    ds = data if isinstance(data, Dataset) else load_data(data) if isinstance(data, str) else None
    feed = ds.bind(model) if ds is not None else as_feed(model, data)
    name = ds.name if ds is not None else "arrays"
    n = len(next(iter(feed.values())))
    if n == 0:
        raise DataError("cannot profile on an empty data set")
    wanted = recordable_values(model) if values == "all" else list(values)
    rec = Recorder(model, wanted, device)

    sums: dict[str, np.ndarray] = {}
    axes: dict[str, int] = {}
    total = 0
    batches = rec.iter_batches(feed, batch_size)
    step = max(rec.fixed_batch, batch_size - batch_size % rec.fixed_batch) if rec.fixed_batch else batch_size
    nb = -(-n // step)
    for size, chunk, out in progress(batches, nb, "profile", show_progress):
        for key, arr in [*chunk.items(), *out.items()]:
            if not np.issubdtype(arr.dtype, np.floating) or arr.ndim == 0 or size not in arr.shape:
                continue  # shapes, indices and batch-independent values have no neurons
            if key not in axes:  # the sample axis: where the input's batch went (time-first values), else 0
                sym = symbolic_batch_axis(model, key, tuple(arr.shape))
                axes[key] = sym if sym is not None and arr.shape[sym] == size else 0
            if arr.shape[axes[key]] != size:
                continue
            s = arr.sum(axis=axes[key], dtype=np.float64)
            if key in sums:
                if sums[key].shape != s.shape:
                    raise DataError(f"value '{key}' changes shape between batches; profile with one batch size")
                sums[key] += s
            else:
                sums[key] = s
        total += size
    mean = {k: (v / total).astype(np.float32) for k, v in sums.items()}
    for k, v in mean.items():
        if not np.all(np.isfinite(v)):
            raise DataError(f"the mean activation of '{k}' is not finite (NaN/Inf): the data drive the model out of "
                            "float32 range; check the data's scale")
    return Profile(mean, total, model.fingerprint, name, model.weights_fingerprint,
                   {k: a for k, a in axes.items() if a and k in mean})
