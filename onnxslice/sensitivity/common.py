"""Shared plumbing of the sensitivity analyses: model and data preparation, targets, channel axes.

The scalar ``f`` whose sensitivity every criterion measures (``target``):

- ``pred`` (default): per sample, the logit of the class the *unperturbed* model predicts (the class is
  fixed once, so perturbed and path-shifted evaluations score the same class);
- ``class:K``: the logit of class K;
- ``output-norm``: the L2 norm of the first output;
- ``loss``: softmax cross-entropy of the first output against the data's labels (labels required).

The output (``options["output"]``, default the first) may be ``[N, C]``, ``[N, C, 1, 1]``, a sequence or a
dense map: :mod:`onnxslice.targets` reads it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxslice.data import Dataset, load_data
from onnxslice.errors import DataError, ModelError
from onnxslice.model import Layer, Model, load
from onnxslice.record import as_feed, validate_inputs
from onnxslice.sensitivity.reductions import UnknownNameError
from onnxslice.targets import BoundTarget, TargetSpec, parse_target

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

TARGETS = ("pred", "class:K", "output-norm", "loss", "value:NAME[idx]")


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


def logits_value(model: Model, target: str, output: str | None = None) -> str:
    """The value ``f`` reads: for logit targets (``pred``, ``class:K``, ``loss``) the logits feeding a final
    Softmax/LogSoftmax of the output (:mod:`onnxslice.targets`' convention), else the output itself."""
    return BoundTarget(model, _spec(target), output).value


def _spec(spec: str) -> TargetSpec:
    try:
        t = parse_target(spec)
    except DataError as e:
        raise UnknownNameError(f"{e}; valid targets are: {', '.join(TARGETS)}") from None
    if t.kind not in ("pred", "class", "loss", "output-norm", "value"):
        raise UnknownNameError(f"unknown target '{spec}'; valid targets are: {', '.join(TARGETS)}")
    return t


class Target:
    """The scalar ``f`` per sample, evaluated on recorded values (see :mod:`onnxslice.targets`).

    The class of ``pred`` is fixed per sample (and per position of a sequence or map) by the unperturbed
    model, so perturbed and path-shifted evaluations score the same class.

    Args:
        spec: ``pred``, ``class:K``, ``output-norm``, ``loss`` or ``value:NAME[idx]``.
        value: the value ``f`` reads (:func:`logits_value`).
        reference: the unperturbed value, samples on axis 0 of its canonical layout (see ``bound``).
        labels: labels (for ``loss``).
        bound: the bound target (its layout decides the batch axis); built from ``spec`` and the model.

    Raises:
        UnknownNameError: an unknown spec (lists the valid ones).
        DataError: ``loss`` without labels, or a class index out of range.
    """

    def __init__(self, spec: str, value: str, reference: np.ndarray, labels: np.ndarray | None = None,
                 bound: BoundTarget | None = None) -> None:
        self.spec, self.output = spec, value
        if bound is None:
            raise DataError("a sensitivity Target needs the bound target of its model")
        self.bound = bound
        self.choice: np.ndarray | None = None
        if bound.spec.kind in ("pred", "class", "loss"):
            self.choice = bound.choose(reference, len(labels) if labels is not None else None, labels)

    @property
    def classes(self) -> np.ndarray | None:
        """The fixed class per sample (``[N]``; ``[N, positions...]`` on sequences and maps)."""
        return self.choice

    def __call__(self, outputs: Mapping[str, np.ndarray], rows: slice | None = None) -> np.ndarray:
        """``f`` per sample for the samples ``rows`` of the calibration set."""
        y = np.asarray(outputs[self.output])
        if self.choice is None:
            return self.bound.seed(y, n=None if rows is None else rows.stop - rows.start)[0]
        ch = self.choice[rows] if rows is not None else self.choice
        return self.bound.score(y, ch, len(ch))

    def cotangent(self, value: np.ndarray, rows: slice | None = None) -> np.ndarray:
        """The output cotangent of ``pred``/``class:K`` for the fixed classes, shaped like ``value``."""
        assert self.choice is not None
        ch = self.choice[rows] if rows is not None else self.choice
        return self.bound.onehot(value, ch, len(ch))
