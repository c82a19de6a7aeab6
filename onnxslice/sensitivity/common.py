"""Shared plumbing of the sensitivity analyses: model and data preparation, targets, channel axes.

The scalar ``f`` whose sensitivity every criterion measures (``target``):

- ``pred`` (default): per sample, the logit of the class the *unperturbed* model predicts (the class is
  fixed once, so perturbed and path-shifted evaluations score the same class);
- ``class:K``: the logit of class K;
- ``output-norm``: the L2 norm of the first output;
- ``loss``: softmax cross-entropy of the first output against the data's labels (labels required).

The first model output is taken as the logits ``[N, K]`` (other shapes are flattened to ``[N, -1]``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxslice.data import Dataset, load_data
from onnxslice.errors import DataError, ModelError
from onnxslice.grad.engine import logits_value as grad_logits_value
from onnxslice.model import Layer, Model, load
from onnxslice.record import as_feed, validate_inputs
from onnxslice.sensitivity.reductions import UnknownNameError

__all__ = [
    "TARGETS",
    "Calibration",
    "Target",
    "activation_axis",
    "as_model",
    "calibration",
    "channel_axis",
    "logits_value",
    "model_layers",
]

TARGETS = ("pred", "class:K", "output-norm", "loss")


def as_model(model: Model | str | os.PathLike[str] | Any) -> Model:
    """A :class:`Model` from a Model, a path or a ModelProto."""
    return model if isinstance(model, Model) else load(model)


def model_layers(model: Model, names: list[str] | None = None) -> list[Layer]:
    """The model's SAfER layers (optionally only ``names``).

    Raises:
        ModelError: the model has no layer (no node owns a float weight initializer), or a name is unknown.
    """
    layers = model.layers
    if not layers:
        raise ModelError(
            "the model has no layers to rank: no Conv/Gemm/MatMul node owns a float weight initializer "
            "(weights fed as graph inputs are not layers; fold them into initializers first)"
        )
    if names is None:
        return layers
    known = {x.name: x for x in layers}
    bad = [n for n in names if n not in known]
    if bad:
        raise ModelError(f"no layer named {', '.join(bad)}; layers are: {', '.join(known)}")
    return [known[n] for n in names]


@dataclass
class Calibration:
    """Validated model inputs (first ``samples`` of the data) and their labels, if any."""

    feed: dict[str, np.ndarray]
    labels: np.ndarray | None
    name: str

    def __len__(self) -> int:
        return len(next(iter(self.feed.values())))

    def batches(self, batch_size: int | None) -> list[tuple[slice, dict[str, np.ndarray]]]:
        """``(index slice, inputs)`` per batch of at most ``batch_size`` samples."""
        n = len(self)
        bs = batch_size or n
        return [(slice(s, min(s + bs, n)), {k: v[s : s + bs] for k, v in self.feed.items()}) for s in range(0, n, bs)]


def calibration(model: Model, data: Any, samples: int | None = 256) -> Calibration:
    """Bind ``data`` (spec, Dataset, array or mapping) to the model and keep the first ``samples``.

    Raises:
        DataError: unreadable data, no samples, or arrays that do not fit the model's inputs (named).
    """
    ds = data if isinstance(data, Dataset) else load_data(str(data)) if isinstance(data, (str, os.PathLike)) else None
    if ds is not None:
        labels = ds.labels
        feed = as_feed(model, ds)
        name = ds.name
    else:
        feed = as_feed(model, data)
        labels = np.asarray(data["y"]) if isinstance(data, Mapping) and "y" in data else None
        feed = {k: v for k, v in feed.items() if k != "y"}
        name = "arrays"
    if samples is not None:
        if samples < 1:
            raise DataError(f"samples must be at least 1, got {samples}")
        feed = {k: np.asarray(v)[:samples] for k, v in feed.items()}
        labels = None if labels is None else labels[:samples]
    feed = validate_inputs(model, feed)
    if not feed or len(next(iter(feed.values()))) == 0:
        raise DataError(f"data '{name}' holds no samples")
    return Calibration(feed, labels, name)


def channel_axis(model: Model, layer: Layer) -> int:
    """The output-channel (neuron) axis of the layer's weight: the axis pruning removes."""
    return layer.out_axis


def activation_axis(layer: Layer) -> int:
    """The channel axis of a layer's output: 1 for convolutions, the last axis otherwise."""
    return 1 if layer.op_type in ("Conv", "ConvTranspose") else -1


def logits_value(model: Model, target: str) -> str:
    """The value ``f`` reads: for logit targets (``pred``, ``class:K``, ``loss``) the logits feeding a final
    Softmax/LogSoftmax of the first output (``onnxslice.grad``'s convention), else the first output itself."""
    out = model.output_names[0]
    return out if target == "output-norm" else grad_logits_value(model, out)


def _logits(outputs: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    y = np.asarray(outputs[name], np.float64)
    return y.reshape(len(y), -1) if y.ndim != 2 else y


class Target:
    """The scalar ``f`` per sample, evaluated on model outputs (see the module docstring).

    Args:
        spec: ``pred``, ``class:K``, ``output-norm`` or ``loss``.
        output: name of the model output holding the logits.
        reference: the unperturbed outputs (fixes the ``pred`` class per sample).
        labels: labels (for ``loss``).

    Raises:
        UnknownNameError: an unknown spec (lists the valid ones).
        DataError: ``loss`` without labels, or a class index out of range.
    """

    def __init__(self, spec: str, output: str, reference: np.ndarray, labels: np.ndarray | None = None) -> None:
        self.spec, self.output = spec, output
        ref = reference.reshape(len(reference), -1) if reference.ndim != 2 else reference
        self.classes: np.ndarray | None = None
        if spec == "pred":
            self.classes = np.argmax(ref, axis=1)
        elif spec.startswith("class:"):
            try:
                k = int(spec.split(":", 1)[1])
            except ValueError:
                raise UnknownNameError(f"target '{spec}': K must be an integer (class:3)") from None
            if not 0 <= k < ref.shape[1]:
                raise DataError(f"target class {k} is outside the output's {ref.shape[1]} classes")
            self.classes = np.full(len(ref), k)
        elif spec == "loss":
            if labels is None:
                raise DataError("target 'loss' needs labels: use data with labels (y) or another target")
            self.classes = np.asarray(labels, np.int64)
        elif spec != "output-norm":
            raise UnknownNameError(f"unknown target '{spec}'; valid targets are: {', '.join(TARGETS)}")

    def __call__(self, outputs: Mapping[str, np.ndarray], rows: slice | None = None) -> np.ndarray:
        """``f`` per sample for the samples ``rows`` of the calibration set."""
        y = _logits(outputs, self.output)
        if self.spec == "output-norm":
            return np.sqrt((y * y).sum(axis=1))
        assert self.classes is not None
        cls = self.classes[rows] if rows is not None else self.classes
        picked = y[np.arange(len(y)), cls]
        if self.spec == "loss":
            m = y.max(axis=1)
            return np.log(np.exp(y - m[:, None]).sum(axis=1)) + m - picked
        return picked

    def cotangent(self, rows: slice | None = None, n_out: int | None = None) -> np.ndarray:
        """The one-hot output cotangent of ``pred``/``class:K`` (the fixed class per sample)."""
        assert self.classes is not None and n_out is not None
        cls = self.classes[rows] if rows is not None else self.classes
        ct = np.zeros((len(cls), n_out), np.float32)
        ct[np.arange(len(cls)), cls] = 1.0
        return ct
