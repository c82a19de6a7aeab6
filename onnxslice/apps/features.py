"""Per-sample feature vectors of a model's decision: its NNSlicer slice, and two baselines.

:func:`extract_features` is the one public entry point. For every sample it returns a fixed-length
vector, one block per layer (``model.layers``, in graph order):

- ``"slice"`` (NNSlicer, the detector's features): the sample's own slice for the criterion
  (sample, predicted class), i.e. the backward analysis seeded with +1 on the predicted logit. Per
  layer: the synapse CONTRIB of its weight summed per output channel (``aggregate="channel"``), then
  the neuron CONTRIB of its output summed per channel. ``aggregate="none"`` keeps every synapse (the
  paper's per-synapse vector; long: LeNet-5 has 61k weights).
- ``"activation"`` (the feature-map baseline): the per-channel mean activation of each layer's output.
- ``"gradient"`` (the saliency baseline): per layer, ``|w * d z_pred / d w|`` summed per output
  channel (the first-order contribution of each synapse to the predicted logit, the continuous
  counterpart of CONTRIB), then ``|d z_pred / d w|`` averaged per output channel.

The slice features need one backward walk per sample (a slice of a single sample); units of
``batch_size`` samples run on the parallel executor (:mod:`onnxslice.parallel`: this process, local
processes or Ray). The baselines are batched in this process.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnxslice.console import progress
from onnxslice.data import Dataset
from onnxslice.errors import DataError
from onnxslice.grad import GradientEngine
from onnxslice.model import Model
from onnxslice.parallel import Backend, map_units
from onnxslice.profile import Profile
from onnxslice.record import Recorder, as_feed, validate_inputs
from onnxslice.slicing import BackwardOptions, backward, deltas, parse_targets, seed_tables
from onnxslice.slicing.result import layer_records
from onnxslice.targets import default_output
from onnxslice.worker import in_process, job_state

__all__ = ["FEATURE_KINDS", "Features", "extract_features"]

FEATURE_KINDS = ("slice", "activation", "gradient")
_AGGREGATES = ("channel", "none")


@dataclass
class Features:
    """Feature vectors of a batch of samples.

    Attributes:
        values: ``[N, F]`` float32, one row per sample.
        predictions: the model's predicted class per sample.
        blocks: ``(name, length)`` per block, in column order (``layer/synapses``, ``layer/neurons``...).
        kind: ``slice``, ``activation`` or ``gradient``.
        options: what produced them (theta, granularity, aggregate).
        seconds: wall time of the extraction.
    """

    values: np.ndarray
    predictions: np.ndarray
    blocks: list[tuple[str, int]] = field(default_factory=list)
    kind: str = "slice"
    options: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def length(self) -> int:
        """Feature length ``F``."""
        return int(self.values.shape[1])


# -- slice features (per sample, on the executor) ----------------------------------------------------
@dataclass
class _Job:
    token: str
    model_bytes: bytes | None
    profile: Profile
    feed: dict[str, np.ndarray]
    output: str
    options: BackwardOptions
    aggregate: str
    device: str


def _state(job: _Job) -> tuple[Model, Recorder]:
    return job_state(job.token, job.model_bytes, job.device)


def _per_channel(table: np.ndarray, axis: int) -> np.ndarray:
    if table.ndim <= 1:
        return table.astype(np.float32).reshape(-1)
    return np.moveaxis(table, axis, 0).reshape(table.shape[axis], -1).sum(axis=1).astype(np.float32)


def _slice_row(
    model: Model,
    neurons: dict[str, np.ndarray],
    synapses: dict[str, np.ndarray],
    aggregate: str,
    layers: list[dict[str, Any]],
    sizes: dict[str, tuple[int, ...]],
) -> np.ndarray:
    parts = []
    for r in layers:
        w = synapses.get(r["weight"])
        wshape = sizes[r["weight"]]
        if w is None:
            w = np.zeros(wshape, np.int64)
        parts.append(w.reshape(-1).astype(np.float32) if aggregate == "none" else _per_channel(w, r["axis"]))
        n = neurons.get(r["output"])
        cout = wshape[r["axis"]]
        parts.append(_per_channel(n, 0) if n is not None else np.zeros(cout, np.float32))
    return np.concatenate(parts)


def _slice_unit(job: _Job, unit: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Slice features of the samples in ``unit``, each sample its own criterion (runs in a worker)."""
    model, rec = _state(job)
    layers = layer_records(model)
    sizes = {r["weight"]: tuple(model.initializer(r["weight"]).shape) for r in layers}
    targets = parse_targets("pred")
    rows, preds = [], []
    for i in unit:
        feed = {k: v[i : i + 1] for k, v in job.feed.items()}
        values = rec.run(feed, validated=True)
        values.update(feed)
        d = deltas(job.profile, values)
        seeds = seed_tables(model, targets, job.output, values, job.options.granularity == "channel", 1)
        out = values[job.output]
        preds.append(int(out.reshape(1, -1).argmax()))
        neurons, synapses = backward(model, values, d, seeds, job.options)
        rows.append(_slice_row(model, neurons, synapses, job.aggregate, layers, sizes))
    return np.stack(rows), np.asarray(preds, np.int64)


def _slice_blocks(model: Model, aggregate: str) -> list[tuple[str, int]]:
    blocks = []
    for r in layer_records(model):
        shape = model.initializer(r["weight"]).shape
        blocks.append((f"{r['layer']}/synapses", int(np.prod(shape)) if aggregate == "none" else int(shape[r["axis"]])))
        blocks.append((f"{r['layer']}/neurons", int(shape[r["axis"]])))
    return blocks


def _slice_features(
    model: Model,
    profile: Profile,
    feed: dict[str, np.ndarray],
    theta: float,
    granularity: str,
    aggregate: str,
    batch_size: int,
    backend: Backend,
    workers: int | None,
    address: str | None,
    device: str,
    show_progress: bool | None,
) -> tuple[np.ndarray, np.ndarray]:
    profile.check_model(model)
    n = len(next(iter(feed.values())))
    units = [np.arange(s, min(n, s + batch_size)) for s in range(0, n, batch_size)]
    token = uuid.uuid4().hex
    serial = backend == "local" and (workers is None or workers == 1 or len(units) <= 1)
    options = BackwardOptions(float(theta), granularity)
    job = _Job(
        token,
        None if serial else model.proto.SerializeToString(),
        profile,
        feed,
        default_output(model),
        options,
        aggregate,
        device,
    )
    results: list[tuple[np.ndarray, np.ndarray]] = []
    if serial:
        with in_process(token, model, device):
            for u in progress(units, len(units), "slice features", show_progress):
                results.extend(map_units(_slice_unit, [u], job))
    else:
        results = map_units(_slice_unit, units, job, backend=backend, workers=workers, address=address)
    return np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results])


# -- baselines (batched, in this process) ---------------------------------------------------------------
def _activation_features(
    model: Model, feed: dict[str, np.ndarray], batch_size: int, device: str
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, int]]]:
    layers = layer_records(model)
    rec = Recorder(model, [r["output"] for r in layers], device)  # type: ignore[arg-type]
    rows, preds = [], []
    for size, _, vals in rec.iter_batches(feed, batch_size):
        parts = []
        for r in layers:
            v = vals[r["output"]]
            parts.append(v.reshape(size, v.shape[1], -1).mean(axis=2) if v.ndim > 2 else v.reshape(size, -1))
        rows.append(np.concatenate(parts, axis=1).astype(np.float32))
        out = vals[default_output(model)]
        preds.append(out.reshape(size, -1).argmax(axis=1))
    blocks = []
    for r in layers:
        shape = model.initializer(r["weight"]).shape
        blocks.append((f"{r['layer']}/activation", int(shape[r["axis"]])))
    return np.concatenate(rows), np.concatenate(preds), blocks


def _gradient_features(
    model: Model, feed: dict[str, np.ndarray], batch_size: int, device: str
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, int]]]:
    layers = layer_records(model)
    weights = [r["weight"] for r in layers]
    eng = GradientEngine(model, "pred", weights=weights, device=device)  # type: ignore[arg-type]
    rows, preds = [], []
    n = len(next(iter(feed.values())))
    rec = Recorder(model, None, device)  # type: ignore[arg-type]
    for s in range(0, n, batch_size):
        chunk = {k: v[s : s + batch_size] for k, v in feed.items()}
        size = len(next(iter(chunk.values())))
        g = eng(chunk, per_sample=True)
        parts = []
        for r in layers:
            w = model.initializer(r["weight"])
            gw = np.abs(g.weights[r["weight"]] * w[None])
            gw = np.moveaxis(gw, 1 + r["axis"], 1).reshape(size, w.shape[r["axis"]], -1).sum(axis=2)
            parts.append(gw)
            gn = np.abs(g.weights[r["weight"]])
            gn = np.moveaxis(gn, 1 + r["axis"], 1).reshape(size, w.shape[r["axis"]], -1).mean(axis=2)
            parts.append(gn)
        rows.append(np.concatenate(parts, axis=1).astype(np.float32))
        out = rec.run(chunk, validated=True)[default_output(model)]
        preds.append(out.reshape(size, -1).argmax(axis=1))
    blocks = []
    for r in layers:
        c = int(model.initializer(r["weight"]).shape[r["axis"]])
        blocks += [(f"{r['layer']}/grad_x_weight", c), (f"{r['layer']}/grad", c)]
    return np.concatenate(rows), np.concatenate(preds), blocks


def extract_features(
    model: Model,
    inputs: Any,
    kind: str = "slice",
    *,
    profile: Profile | None = None,
    theta: float = 0.3,
    granularity: str = "element",
    aggregate: str = "channel",
    batch_size: int = 16,
    backend: Backend = "local",
    workers: int | None = None,
    address: str | None = None,
    device: str = "cpu",
    show_progress: bool | None = None,
) -> Features:
    """Per-sample feature vectors (see the module docstring) for the detector and its baselines.

    Args:
        model: the classifier (first output: a class vector per sample).
        inputs: a Dataset, data spec, arrays keyed by input name, or one array.
        kind: ``"slice"``, ``"activation"`` or ``"gradient"``.
        profile: the model's profile (needed for ``slice``).
        theta: NNSlicer's significance threshold (``slice``).
        granularity: ``"element"`` or ``"channel"`` neurons for the backward analysis (``slice``).
        aggregate: ``"channel"`` (per-layer, per-output-channel sums) or ``"none"`` (every synapse).
        batch_size: samples per unit of work (``slice``) or per batch (baselines).
        backend: executor for ``slice``: ``"local"`` or ``"ray"``.
        workers: processes / Ray CPUs (None or 1: this process).
        address: a Ray cluster to join.
        device: onnxruntime device.
        show_progress: progress bar on stderr (default: when stderr is a terminal).

    Returns:
        :class:`Features`; the same model, options and inputs give the same values on every backend.

    Raises:
        DataError: an unknown kind or aggregate, a missing profile, a profile of another model, bad inputs.
    """
    if kind not in FEATURE_KINDS:
        raise DataError(f"unknown feature kind '{kind}'; use {', '.join(FEATURE_KINDS)}")
    if aggregate not in _AGGREGATES:
        raise DataError(f"unknown aggregate '{aggregate}'; use {', '.join(_AGGREGATES)}")
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")

    data = inputs.bind(model) if isinstance(inputs, Dataset) else inputs
    feed = validate_inputs(model, as_feed(model, data))
    if not model.layers:
        raise DataError("the model has no layers with weights (Conv/Gemm/MatMul); there is nothing to featurise")
    start = time.perf_counter()
    options: dict[str, Any] = {}
    if kind == "slice":
        if profile is None:
            raise DataError("slice features need the model's profile (run `onnxslice profile` first)")
        values, preds = _slice_features(
            model,
            profile,
            feed,
            theta,
            granularity,
            aggregate,
            batch_size,
            backend,
            workers,
            address,
            device,
            show_progress,
        )
        blocks = _slice_blocks(model, aggregate)
        options = {"theta": float(theta), "granularity": granularity, "aggregate": aggregate}
    elif kind == "activation":
        values, preds, blocks = _activation_features(model, feed, max(batch_size, 64), device)
    else:
        values, preds, blocks = _gradient_features(model, feed, batch_size, device)
    if values.shape[1] != sum(b[1] for b in blocks):  # a bug, not a user error
        raise RuntimeError(f"feature length {values.shape[1]} differs from its blocks {sum(b[1] for b in blocks)}")
    return Features(values, preds, blocks, kind, options, time.perf_counter() - start)
