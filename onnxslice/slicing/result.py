"""The :class:`Slice` result: CONTRIB per neuron and per synapse, summaries, save/load, sliced model.

A neuron or synapse is *in the slice* when its CONTRIB is non-zero. Tables are integer sums over the
criterion's samples; applications threshold on ``|CONTRIB|``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxslice.artifacts import check_array, check_belongs, check_finite_number, check_keys, check_shapes
from onnxslice.console import format_table
from onnxslice.errors import DataError
from onnxslice.io import load_npz, save_npz

if TYPE_CHECKING:
    from onnxslice.model import Model

__all__ = ["Slice", "layer_records"]


def layer_records(model: Model) -> list[dict[str, Any]]:
    """Per layer: name, op, weight, output value and the weight axis of its output channels."""
    return [
        {"layer": x.name, "op": x.op_type, "weight": x.weight, "output": x.output, "axis": x.out_axis}
        for x in model.layers
    ]


@dataclass
class Slice:
    """A dynamic slice (NNSlicer) of a model for a criterion (samples, targets).

    Attributes:
        neurons: value name -> integer CONTRIB per neuron (one sample's shape; ``(C,)`` or the feature
            vector at channel granularity), summed over the samples.
        synapses: weight initializer name -> integer CONTRIB with the weight's shape.
        samples: indices of the criterion's samples in the data they came from.
        targets: the criterion's targets, as strings (``pred``, ``class:K``, ``value:NAME[idx]``).
        theta: the theta used.
        options: granularity, theta_denominator, theta_sum, output, ...
        fingerprint: structure hash of the sliced model.
        layers: per-layer records (see :func:`layer_records`) for summaries.
        predictions: the model's prediction (argmax of the output) per sample, when it is a vector.
        weights: weights hash of the sliced model (``Model.weights_fingerprint``; empty in old files).
    """

    neurons: dict[str, np.ndarray]
    synapses: dict[str, np.ndarray]
    samples: np.ndarray
    targets: list[str]
    theta: float
    options: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""
    layers: list[dict[str, Any]] = field(default_factory=list)
    predictions: np.ndarray | None = None
    weights: str = ""

    @property
    def count(self) -> int:
        """Number of samples in the criterion."""
        return len(self.samples)

    @property
    def granularity(self) -> str:
        """``"element"`` or ``"channel"``."""
        return str(self.options.get("granularity", "element"))

    def channel_neurons(self, value: str, reduce: str = "sum") -> np.ndarray:
        """Per-channel summary of a value's neuron CONTRIB (axis 0 of one sample).

        Args:
            value: the value name.
            reduce: ``"sum"`` of CONTRIB, ``"abs"`` (sum of ``|CONTRIB|``) or ``"count"`` (neurons in
                the slice).
        """
        c = self._get(self.neurons, value, "neuron value")
        flat = c.reshape(-1, 1) if c.ndim <= 1 else c.reshape(c.shape[0], -1)
        return _reduce(flat, reduce)

    def channel_synapses(self, weight: str, reduce: str = "sum") -> np.ndarray:
        """Per-output-channel summary of a weight's synapse CONTRIB (``sum``, ``abs`` or ``count``)."""
        c = self._get(self.synapses, weight, "weight")
        axis = next((r["axis"] for r in self.layers if r["weight"] == weight), 0)
        flat = np.moveaxis(c, axis, 0).reshape(c.shape[axis], -1)
        return _reduce(flat, reduce)

    def in_slice(self, name: str) -> np.ndarray:
        """Boolean mask of the neurons (value) or synapses (weight) with non-zero CONTRIB."""
        table = self.synapses.get(name)
        if table is None:
            table = self._get(self.neurons, name, "value or weight")
        return table != 0

    def _get(self, tables: dict[str, np.ndarray], name: str, what: str) -> np.ndarray:
        if name not in tables:
            known = ", ".join(list(tables)[:8])
            raise DataError(f"the slice has no {what} '{name}'; it has {known}{', ...' if len(tables) > 8 else ''}")
        return tables[name]

    def per_layer(self) -> list[dict[str, Any]]:
        """One row per layer: neurons of its output and synapses of its weight, and the fractions in the slice."""
        rows = []
        for r in self.layers:
            n = self.neurons.get(r["output"])
            s = self.synapses.get(r["weight"])
            rows.append(
                {
                    "layer": r["layer"],
                    "op": r["op"],
                    "neurons": int(n.size) if n is not None else 0,
                    "neurons_in": float((n != 0).mean()) if n is not None and n.size else 0.0,
                    "synapses": int(s.size) if s is not None else 0,
                    "synapses_in": float((s != 0).mean()) if s is not None and s.size else 0.0,
                    "max_contrib": int(np.abs(s).max()) if s is not None and s.size else 0,
                }
            )
        return rows

    def table(self) -> str:
        """The per-layer summary as a text table."""
        title = (
            f"slice of {self.count} sample(s), targets {', '.join(self.targets)}, theta {self.theta}, "
            f"{self.granularity} level"
        )
        return format_table(self.per_layer(), title=title)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Save as ``.npz`` (atomic)."""
        arrays = {f"neuron/{k}": v for k, v in self.neurons.items()}
        arrays.update({f"synapse/{k}": v for k, v in self.synapses.items()})
        arrays["samples"] = np.asarray(self.samples, np.int64)
        if self.predictions is not None:
            arrays["predictions"] = np.asarray(self.predictions, np.int64)
        meta = {
            "kind": "Slice",
            "targets": self.targets,
            "theta": self.theta,
            "options": self.options,
            "fingerprint": self.fingerprint,
            "layers": self.layers,
            "weights": self.weights,
        }
        return save_npz(path, arrays, meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Slice:
        """Load a slice written by :meth:`save`, checking its header, keys, dtypes and values.

        Raises:
            DataError: the file is not a complete slice; the message names the file and the problem.
        """
        arrays, meta = load_npz(path, kind="Slice")
        check_keys(path, "slice", meta, {"targets": list, "theta": (int, float), "options": dict, "layers": list})
        theta = check_finite_number(path, "slice", "theta", meta["theta"])
        if not 0 < theta < 1:
            raise DataError(f"slice '{path}': theta {theta} is not in (0, 1)")
        if not all(isinstance(t, str) for t in meta["targets"]) or not meta["targets"]:
            raise DataError(f"slice '{path}': 'targets' must be a non-empty list of strings")
        if "samples" not in arrays:
            raise DataError(f"slice '{path}' has no 'samples' array; it is incomplete")
        check_array(path, "slice", "samples", arrays["samples"], dtype="int", ndim=1)
        if len(arrays["samples"]) == 0 or int(arrays["samples"].min()) < 0:
            raise DataError(f"slice '{path}': 'samples' is empty or has negative indices")
        if "predictions" in arrays:
            check_array(path, "slice", "predictions", arrays["predictions"], dtype="int", ndim=1)
        for k, v in arrays.items():
            if k.startswith(("neuron/", "synapse/")):
                check_array(path, "slice", k, v, dtype="int")
            elif k not in ("samples", "predictions"):
                raise DataError(f"slice '{path}' has an unexpected array '{k}'; it is not a slice")
        for r in meta["layers"]:
            if not isinstance(r, dict) or not {"layer", "weight", "output"} <= set(r):
                raise DataError(f"slice '{path}': a layer record is malformed ({str(r)[:60]})")
        return cls(
            neurons={k[7:]: v for k, v in arrays.items() if k.startswith("neuron/")},
            synapses={k[8:]: v for k, v in arrays.items() if k.startswith("synapse/")},
            samples=arrays["samples"],
            targets=list(meta["targets"]),
            theta=float(meta["theta"]),
            options=dict(meta.get("options", {})),
            fingerprint=str(meta.get("fingerprint", "")),
            layers=list(meta.get("layers", [])),
            predictions=arrays.get("predictions"),
            weights=str(meta.get("weights", "") or ""),
        )

    def check_model(self, model: Model, path: str | os.PathLike[str] | None = None) -> None:
        """Raise DataError when this slice was computed on another model (structure, weights, weight shapes)."""
        check_belongs(path, "slice", {"fingerprint": self.fingerprint, "weights": self.weights}, model)
        shapes = {n: list(model.initializer(n).shape) for n in model.initializer_names}
        check_shapes(path, "slice", self.synapses, shapes, "weight")

    def __repr__(self) -> str:
        n_in = sum(int((v != 0).sum()) for v in self.neurons.values())
        n_all = sum(int(v.size) for v in self.neurons.values())
        s_in = sum(int((v != 0).sum()) for v in self.synapses.values())
        s_all = sum(int(v.size) for v in self.synapses.values())
        return (
            f"Slice({self.count} samples, targets {', '.join(self.targets)}, theta {self.theta}, {self.granularity}: "
            f"{n_in:,}/{n_all:,} neurons, {s_in:,}/{s_all:,} synapses in the slice)"
        )


def _reduce(flat: np.ndarray, reduce: str) -> np.ndarray:
    if reduce == "sum":
        return flat.sum(axis=1)
    if reduce == "abs":
        return np.abs(flat).sum(axis=1)
    if reduce == "count":
        return (flat != 0).sum(axis=1)
    raise DataError(f"unknown reduction '{reduce}'; use sum, abs or count")
