"""``slice()``: NNSlicer end to end — record, forward analysis, backward analysis — over an executor.

The samples of the criterion are cut into units (batches of ``batch_size``); each unit is recorded
with onnxruntime, its deltas computed against the profile, and walked backwards; the per-unit tables
are summed. Units run in this process, in local processes or on Ray (:mod:`onnxslice.parallel`); the
tables are integer sums, so every backend gives the same result.
"""

from __future__ import annotations

import builtins
import contextlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxslice.data import parse_samples
from onnxslice.errors import DataError, OnnxSliceError
from onnxslice.model import Model
from onnxslice.opsets.capabilities.contrib import DEFAULT_CHUNK
from onnxslice.parallel import Backend, map_units
from onnxslice.profile import Profile
from onnxslice.record import Device, Recorder, as_feed, validate_inputs
from onnxslice.slicing.backward import BackwardOptions, backward
from onnxslice.slicing.forward import deltas
from onnxslice.slicing.result import Slice, layer_records
from onnxslice.slicing.targets import Target, parse_targets, seed_tables
from onnxslice.targets import default_output
from onnxslice.worker import in_process, job_state

__all__ = ["slice"]

_GRANULARITIES = ("element", "channel")
_DENOMINATORS = ("raw", "delta")
_SUMS = ("signed", "abs")
_ACCUMULATE = ("signed", "abs")


@dataclass
class _Job:
    """What every worker needs (sent once per worker)."""

    token: str
    model_bytes: bytes | None
    profile: Profile
    feed: dict[str, np.ndarray]
    targets: list[Target]
    output: str
    options: BackwardOptions
    device: str


def _state(job: _Job) -> tuple[Model, Recorder]:
    return job_state(job.token, job.model_bytes, job.device)


def _record(rec: Recorder, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return rec.run(feed, validated=True)  # a fixed-batch model runs in chunks of its batch (Recorder.run)


_UnitResult = tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]


def _slice_unit(job: _Job, unit: np.ndarray, seed: int) -> _UnitResult:
    """Forward and backward analysis of one unit of samples (runs in a worker)."""
    model, rec = _state(job)
    feed = {k: v[unit] for k, v in job.feed.items()}
    values = _record(rec, feed)
    values.update(feed)
    d = deltas(job.profile, values)
    seeds = seed_tables(model, job.targets, job.output, values, job.options.granularity == "channel", len(unit))
    out = values[job.output]
    preds = out.reshape(out.shape[0], -1).argmax(axis=1) if out.ndim == 2 else np.zeros(0, np.int64)
    neurons, synapses = backward(model, values, d, seeds, job.options, job.profile.axes)
    return neurons, synapses, preds


def _check_options(theta: float, granularity: str, theta_denominator: str, theta_sum: str,
                   accumulate: str = "signed") -> None:
    if not (isinstance(theta, (int, float)) and 0.0 < float(theta) < 1.0):
        raise OnnxSliceError(f"theta must lie strictly between 0 and 1, got {theta}")
    for name, val, allowed in (
        ("granularity", granularity, _GRANULARITIES),
        ("theta_denominator", theta_denominator, _DENOMINATORS),
        ("theta_sum", theta_sum, _SUMS),
        ("accumulate", accumulate, _ACCUMULATE),
    ):
        if val not in allowed:
            raise OnnxSliceError(f"{name} must be one of {', '.join(allowed)}, got '{val}'")


def _select(feed: dict[str, np.ndarray], samples: str | Sequence[int] | np.ndarray | None) -> np.ndarray:
    n = len(next(iter(feed.values())))
    if samples is None or isinstance(samples, str):
        return parse_samples(samples, n)
    idx = np.asarray(samples, dtype=np.int64).reshape(-1)
    if idx.size == 0 or idx.min() < 0 or idx.max() >= n:
        raise DataError(f"samples {idx.tolist()[:8]} are outside the data's 0..{n - 1}")
    return idx


def slice(
    model: Model,
    profile: Profile,
    inputs: Any,
    targets: str | int | Sequence[str | int] = "pred",
    theta: float = 0.3,
    *,
    granularity: str = "element",
    theta_denominator: str = "raw",
    theta_sum: str = "signed",
    samples: str | Sequence[int] | np.ndarray | None = None,
    output: str | None = None,
    batch_size: int = 8,
    backend: Backend = "local",
    workers: int | None = None,
    address: str | None = None,
    device: Device = "cpu",
    chunk: int = DEFAULT_CHUNK,
    seed: int = 0,
    accumulate: str = "signed",
) -> Slice:
    """Dynamic slice of ``model`` for the criterion (``inputs[samples]``, ``targets``).

    Args:
        model: the model.
        profile: its profile (:func:`onnxslice.profile`).
        inputs: a Dataset, a data spec, arrays keyed by input name, or one array.
        targets: ``"pred"``, ``"class:K"``, a class or list of classes, ``"value:NAME[idx]"`` (see
            :mod:`onnxslice.targets`), or a list of these.
        theta: significance threshold in (0, 1) (ALGORITHMS.md 1.4).
        granularity: ``"element"`` (a neuron is a scalar) or ``"channel"`` (a neuron is a channel,
            its activation the spatial mean).
        theta_denominator: ``"raw"`` divides by ``|y_n|``, ``"delta"`` by ``|dy_n|``.
        theta_sum: ``"signed"`` or ``"abs"`` partial sums.
        samples: which samples of ``inputs`` (``"0:100"``, indices; default all).
        output: the output that ``pred`` and classes refer to (default: the first).
        batch_size: samples per unit of work (one recording and one batched backward walk).
        backend: ``"local"`` or ``"ray"``.
        workers: processes/CPUs (default None or 1: this process; N > 1: N local processes, which needs
            the ``if __name__ == "__main__":`` guard in scripts, like all Python multiprocessing).
        address: a Ray cluster to join.
        device: onnxruntime device for recording.
        chunk: the most elements a rule's temporaries hold at once (memory bound).
        seed: base seed of the units (the analysis itself is deterministic).
        accumulate: how a synapse's CONTRIB adds up over its uses (conv positions, samples):
            ``"signed"`` (NNSlicer: ``+= sign(contrib)``, so opposite uses cancel) or ``"abs"`` (``+= 1`` per
            use in which it is significant). Neuron CONTRIB is signed either way.

    Returns:
        The :class:`Slice`: CONTRIB per neuron and synapse summed over the samples.

    Raises:
        OnnxSliceError: theta outside (0, 1) or an unknown option.
        DataError: a profile of another model, bad inputs, a target out of range.
        UnsupportedOpError: CONTRIB reaches an op without a ``contributions`` rule (named).
    """
    _check_options(theta, granularity, theta_denominator, theta_sum, accumulate)
    if batch_size < 1:
        raise OnnxSliceError(f"batch_size must be >= 1, got {batch_size}")
    profile.check_model(model)
    out_name = output or default_output(model)
    if out_name not in model.output_names and model.producer(out_name) is None:
        raise DataError(f"no output or value named '{out_name}'; outputs are {', '.join(model.output_names)}")
    parsed = parse_targets(targets)
    for t in parsed:
        if t.kind not in ("pred", "class", "value"):
            raise DataError(f"target '{t}' selects no neurons to slice from; use pred, class:K or value:NAME[idx]")
        if t.kind == "value" and model.producer(t.value) is None and t.value not in model.input_names:
            raise DataError(f"target value '{t.value}' is not a value of this model (see `onnxslice inspect`)")
    feed = validate_inputs(model, as_feed(model, inputs))
    idx = _select(feed, samples)
    feed = {k: np.ascontiguousarray(v[idx]) for k, v in feed.items()}
    options = BackwardOptions(float(theta), granularity, theta_denominator, theta_sum, int(chunk), accumulate)
    units = [np.arange(s, min(len(idx), s + batch_size)) for s in builtins.range(0, len(idx), batch_size)]
    token = uuid.uuid4().hex
    serial = backend == "local" and (workers is None or workers == 1 or len(units) <= 1)
    job = _Job(token, None if serial else model.proto.SerializeToString(), profile, feed, parsed, out_name, options,
               device)
    with in_process(token, model, device) if serial else contextlib.nullcontext():
        results = map_units(_slice_unit, units, job, backend=backend, workers=workers, address=address, seed=seed)
    neurons: dict[str, np.ndarray] = {}
    synapses: dict[str, np.ndarray] = {}
    preds = []
    for n_tab, s_tab, p in results:
        for k, v in n_tab.items():
            neurons[k] = neurons[k] + v if k in neurons else v
        for k, v in s_tab.items():
            synapses[k] = synapses[k] + v if k in synapses else v
        preds.append(p)
    all_preds = np.concatenate(preds) if preds and preds[0].size else None
    return Slice(
        neurons=_ordered(model, neurons),
        synapses=_ordered_weights(model, synapses),
        samples=idx,
        targets=[str(t) for t in parsed],
        theta=float(theta),
        options={
            "granularity": granularity,
            "theta_denominator": theta_denominator,
            "theta_sum": theta_sum,
            "accumulate": accumulate,
            "output": out_name,
            "backend": backend,
        },
        fingerprint=model.fingerprint,
        weights=model.weights_fingerprint,
        layers=layer_records(model),
        predictions=all_preds,
    )


def _ordered(model: Model, tables: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Tables in graph order (inputs first), so summaries read front to back."""
    order = [*model.input_names, *(o for n in model.nodes for o in n.outputs)]
    return {k: tables[k] for k in order if k in tables}


def _ordered_weights(model: Model, tables: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    order = [i for n in model.nodes for i in n.inputs if i and model.is_initializer(i)]
    return {k: tables[k] for k in dict.fromkeys(order) if k in tables}
