"""onnxruntime sessions and the recording of intermediate values.

:func:`record` runs a model with the requested intermediate values added as graph outputs and all
graph optimizations off, so that every value survives under the name the graph gives it (no fusion:
BatchNormalization stays a node). :class:`Recorder` keeps one session for repeated runs.
Inputs are validated first: a missing input, a wrong rank, shape or dtype, NaN or Inf raise
:class:`DataError` naming the input. Nothing here changes the caller's model.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxslice.data import Dataset
from onnxslice.errors import DataError, OnnxSliceError, UnsupportedOpError
from onnxslice.io import load_npz, save_npz
from onnxslice.model import Model
from onnxslice.session import (
    Device,
    _session_device,
    cuda_usable,
    make_session,
    max_ort_ir_version,
    runtime_proto,
)

__all__ = [
    "Device",
    "Recorder",
    "Trace",
    "as_feed",
    "cuda_usable",
    "fixed_batch_of",
    "make_session",
    "max_ort_ir_version",
    "record",
    "runtime_proto",
    "validate_inputs",
]

log = logging.getLogger("onnxslice")


def validate_inputs(model: Model, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Check and convert inputs against the model's declared inputs.

    Float data is cast to the model's float type (and integers to its integer type); a change of kind
    (float to int, int to float) is refused. Returns arrays ready for onnxruntime.

    Raises:
        DataError: a missing or unknown input, a wrong rank/shape/dtype, NaN or Inf.
    """
    expected = {vi.name: vi for vi in model.inputs}
    unknown = [k for k in inputs if k not in expected]
    if unknown:
        raise DataError(f"unknown input(s) {', '.join(unknown)}; the model's inputs are {', '.join(expected)}")
    out: dict[str, np.ndarray] = {}
    batch: int | None = None
    for name, vi in expected.items():
        if name not in inputs:
            raise DataError(f"missing input '{name}' (expected {vi.describe()})")
        arr = np.asarray(inputs[name])
        want = vi.dtype
        if want is not None and arr.dtype != want:
            same_kind = (np.issubdtype(arr.dtype, np.floating) and np.issubdtype(want, np.floating)) or (
                np.issubdtype(arr.dtype, np.integer) and np.issubdtype(want, np.integer)
            )
            if not same_kind:
                raise DataError(
                    f"input '{name}' has dtype {arr.dtype}; the model expects {vi.describe()}. "
                    "Convert (and scale) the data first."
                )
            arr = arr.astype(want)
        if vi.shape is not None:
            if arr.ndim != len(vi.shape):
                raise DataError(
                    f"input '{name}' has shape {list(arr.shape)} (rank {arr.ndim}); "
                    f"the model expects {vi.describe()} (rank {len(vi.shape)})"
                )
            for axis, (got, dim) in enumerate(zip(arr.shape, vi.shape, strict=True)):
                if isinstance(dim, int) and dim > 0 and got != dim and axis != 0:
                    raise DataError(
                        f"input '{name}' has shape {list(arr.shape)}; the model expects "
                        f"{vi.describe()} (axis {axis} must be {dim})"
                    )
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).sum())
            raise DataError(f"input '{name}' holds {bad} NaN or Inf value(s); clean the data first")
        if arr.ndim and batch is not None and arr.shape[0] != batch:
            raise DataError(f"input '{name}' has {arr.shape[0]} samples, other inputs have {batch}")
        if arr.ndim:
            batch = arr.shape[0]
        out[name] = np.ascontiguousarray(arr)
    return out


@dataclass
class Trace:
    """Recorded values of one run: arrays keyed by value name, the model's own outputs included.

    Attributes:
        values: value name -> array (sample axis first where the value has one).
        inputs: the validated model inputs that were fed.
        outputs: names of the model's outputs.
        device: ``"cpu"`` or ``"cuda"``: the provider the session really used.
    """

    values: dict[str, np.ndarray]
    inputs: dict[str, np.ndarray]
    outputs: list[str]
    device: str = "cpu"
    shapes: dict[str, tuple[int, ...]] = field(init=False)

    def __post_init__(self) -> None:
        self.shapes = {k: tuple(v.shape) for k, v in self.values.items()}

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self.values:
            return self.values[name]
        if name in self.inputs:
            return self.inputs[name]
        raise KeyError(f"value '{name}' was not recorded; record it with values=[...] or values='all'")

    def __contains__(self, name: object) -> bool:
        return name in self.values or name in self.inputs

    @property
    def output_values(self) -> list[np.ndarray]:
        """The model's outputs, in graph order."""
        return [self.values[o] for o in self.outputs]

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Save every array to ``.npz`` (``value/<name>`` and ``input/<name>``)."""
        arrays = {f"value/{k}": v for k, v in self.values.items()}
        arrays.update({f"input/{k}": v for k, v in self.inputs.items()})
        return save_npz(path, arrays, {"kind": "Trace", "outputs": self.outputs, "device": self.device})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Trace:
        """Load a trace written by :meth:`save`."""
        arrays, meta = load_npz(path, kind="Trace")
        values = {k[6:]: v for k, v in arrays.items() if k.startswith("value/")}
        inputs = {k[6:]: v for k, v in arrays.items() if k.startswith("input/")}
        return cls(values, inputs, list(meta["outputs"]), str(meta.get("device", "cpu")))

    def __repr__(self) -> str:
        n = next(iter(self.inputs.values())).shape[0] if self.inputs else 0
        mb = sum(v.nbytes for v in self.values.values()) / 2**20
        return f"Trace({len(self.values)} values, {n} samples, {mb:.1f} MiB, device={self.device})"


def recordable_values(model: Model) -> list[str]:
    """Every node output of the main graph (the values :func:`record` captures by default)."""
    return [o for n in model.nodes for o in n.outputs if o]


class Recorder:
    """One onnxruntime session that records chosen values; reuse it for many batches.

    Args:
        model: the model.
        values: value names to record, ``"all"`` (every node output), or None (only model outputs).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        weight_inputs: initializers to make swappable: :meth:`run` takes new values for them in
            ``weights=`` (the model's own values are fed otherwise). One session serves every value.
        arena: keep onnxruntime's CPU memory arena (see :func:`make_session`).
        in_memory: initializers handed to onnxruntime from the model's own arrays (no copy in the
            session); unlike ``weight_inputs`` they stay initializers, so graph optimizations fold them.
        optimize: run with onnxruntime's graph optimizations (level *all*: Conv, BatchNormalization and
            activation fused where no recorded value sits between them). The recorded values then
            differ from the unoptimized graph's in the last bits.
        spin: let onnxruntime's worker threads spin-wait after a run (see :func:`make_session`).
        threads: intra-op threads of the session (default: ``ONNXSLICE_THREADS`` or onnxruntime's choice).
    """

    def __init__(
        self,
        model: Model,
        values: Iterable[str] | str | None = "all",
        device: Device = "auto",
        weight_inputs: Sequence[str] = (),
        arena: bool = True,
        in_memory: Sequence[str] = (),
        optimize: bool = False,
        spin: bool = True,
        threads: int | None = None,
    ) -> None:
        self.model = model
        self.weight_inputs = list(dict.fromkeys(weight_inputs))
        if values == "all":
            names = recordable_values(model)
        elif values is None:
            names = []
        else:
            assert not isinstance(values, str)
            names = list(values)
            produced = set(recordable_values(model)) | set(model.input_names) | set(model.initializer_names)
            missing = [v for v in names if v not in produced]
            if missing:
                raise DataError(f"no value named {', '.join(missing[:5])} in the model")
            names = [v for v in names if v not in model.input_names and not model.is_initializer(v)]
        self.values = list(dict.fromkeys([*model.output_names, *names]))
        # a detached weight (Model.detached) has no data in the proto: it always comes from memory
        mem = [n for n in dict.fromkeys([*in_memory, *sorted(model.detached)]) if n not in self.weight_inputs]
        self.session = make_session(
            runtime_proto(model.skeleton, self.values, self.weight_inputs, mem), device, arena=arena,
            optimize=optimize, external={n: model.initializer(n) for n in mem}, spin=spin, threads=threads,
        )
        self.device = _session_device(self.session)
        self._refuse_non_tensors()
        self.fixed_batch = fixed_batch_of(model)

    def _refuse_non_tensors(self) -> None:
        """A Trace holds arrays: a recorded value that is a sequence or a map (ZipMap) is refused here,
        naming the op that makes it, rather than failing later on a list."""
        for out in self.session.get_outputs():
            if out.type.startswith("tensor("):
                continue
            hint = (
                f"Its value '{out.name}' is a {out.type}, not a tensor, and onnxslice records tensors only. "
                "Export the model without it (skl2onnx: options={'zipmap': False})."
            )
            node = self.model.producer(out.name)
            if node is None:
                raise DataError(hint)
            raise UnsupportedOpError.for_node(node, "record", hint)

    def run(
        self,
        inputs: Mapping[str, np.ndarray],
        *,
        validated: bool = False,
        weights: Mapping[str, np.ndarray] | None = None,
        samples: int | None = None,
    ) -> dict[str, np.ndarray]:
        """One onnxruntime run on a batch; returns value -> array.

        Args:
            inputs: model inputs (validated unless ``validated``).
            validated: skip validation (inputs come from :func:`validate_inputs`).
            weights: new values for some of the swappable ``weight_inputs``.
            samples: how many samples the inputs hold (default: the first data input's leading size); with
                it, the inputs whose leading size is ``samples`` carry samples (a sub-model's boundary).
        """
        feed = dict(inputs) if validated else validate_inputs(self.model, inputs)
        if weights:
            extra = set(weights) - set(self.weight_inputs)
            if extra:
                raise DataError(
                    f"weights {', '.join(sorted(extra))} are not swappable in this recorder; name them in weight_inputs"
                )
        for name in self.weight_inputs:
            w = weights.get(name) if weights else None
            ref = self.model.initializer(name)
            if w is None:
                feed[name] = ref
            else:
                if w.shape != ref.shape:
                    raise DataError(f"weight '{name}' must have shape {list(ref.shape)}, got {list(w.shape)}")
                feed[name] = np.ascontiguousarray(w, dtype=ref.dtype)
        n = samples if samples is not None else _samples(feed, self.model)
        if self.fixed_batch is not None and n is not None and n != self.fixed_batch:
            keys = ({k for k, v in feed.items() if np.ndim(v) and np.shape(v)[0] == n} if samples is not None
                    else set(self.model.input_names))
            return self._run_fixed(feed, n, self.fixed_batch, keys)
        try:
            res = self.session.run(self.values, feed)
        except Exception as e:
            raise OnnxSliceError(f"onnxruntime failed on this model: {e}") from e
        return dict(zip(self.values, res, strict=True))

    def _run_fixed(self, feed: dict[str, np.ndarray], n: int, b: int, data: set[str]) -> dict[str, np.ndarray]:
        """Run a model whose batch is fixed to ``b`` on ``n`` samples: chunks of ``b``, the last one padded
        by repeating its last sample, the padding cut off again along each value's sample axis."""
        parts: list[tuple[int, dict[str, np.ndarray]]] = []
        for s in range(0, n, b):
            chunk = {}
            for k, v in feed.items():
                if k in data and v.ndim:
                    part = v[s : s + b]
                    if len(part) < b:
                        part = np.concatenate([part, np.repeat(part[-1:], b - len(part), axis=0)])
                    chunk[k] = part
                else:
                    chunk[k] = v
            try:
                res = self.session.run(self.values, chunk)
            except Exception as e:
                raise OnnxSliceError(f"onnxruntime failed on this model: {e}") from e
            parts.append((min(b, n - s), dict(zip(self.values, res, strict=True))))
        out: dict[str, np.ndarray] = {}
        for name in self.values:
            first = parts[0][1][name]
            axis = _fixed_axis(first.shape, b)
            if axis is None:
                out[name] = first  # batch-independent (shapes, constants)
                continue
            out[name] = np.concatenate(
                [np.take(p[name], np.arange(keep), axis=axis) for keep, p in parts], axis=axis
            )
        return out

    def iter_batches(
        self,
        inputs: Mapping[str, np.ndarray],
        batch_size: int | None = None,
        weights: Mapping[str, np.ndarray] | None = None,
    ) -> Iterator[tuple[int, dict[str, np.ndarray], dict[str, np.ndarray]]]:
        """Validate once, then yield ``(n, batch_inputs, recorded)`` per batch.

        A model whose batch axis is fixed (to 1, 4, ...) runs in batches of that size (see :meth:`run`).
        """
        feed = validate_inputs(self.model, inputs)
        n = len(next(iter(feed.values()))) if feed else 1
        bs = batch_size or n
        if self.fixed_batch is not None:
            bs = max(self.fixed_batch, bs - bs % self.fixed_batch)
        for s in range(0, n, bs):
            chunk = {k: v[s : s + bs] for k, v in feed.items()}
            yield len(next(iter(chunk.values()))), chunk, self.run(chunk, validated=True, weights=weights)


def fixed_batch_of(model: Model) -> int | None:
    """The batch size fixed by the model's first input shape (None when the batch axis is dynamic)."""
    fixed = model.inputs[0].shape[0] if model.inputs and model.inputs[0].shape else None
    return fixed if isinstance(fixed, int) and fixed > 0 else None


def _samples(feed: Mapping[str, np.ndarray], model: Model) -> int | None:
    """Samples in a feed: the leading size of the first data input that has an axis."""
    for name in model.input_names:
        v = feed.get(name)
        if v is not None and np.ndim(v):
            return int(np.shape(v)[0])
    return None


def _fixed_axis(shape: tuple[int, ...], b: int) -> int | None:
    """The sample axis of a value recorded at fixed batch ``b`` (axis 0 first; None: no sample axis)."""
    if b == 1:
        return 0 if shape and shape[0] == 1 else None
    return next((i for i, s in enumerate(shape) if s == b), None)


def _merge(parts: list[dict[str, np.ndarray]], sizes: list[int]) -> dict[str, np.ndarray]:
    if len(parts) == 1:
        return parts[0]
    merged: dict[str, np.ndarray] = {}
    for name in parts[0]:
        arrays = [p[name] for p in parts]
        if all(a.ndim and a.shape[0] == s for a, s in zip(arrays, sizes, strict=True)):
            merged[name] = np.concatenate(arrays, axis=0)
        elif all(a.shape == arrays[0].shape and np.array_equal(a, arrays[0]) for a in arrays):
            merged[name] = arrays[0]  # batch-independent (shapes, constants)
        else:
            raise DataError(
                f"value '{name}' has no leading batch axis (shapes {[a.shape for a in arrays[:3]]}); "
                "record it without batching (batch_size=None)"
            )
    return merged


def record(
    model: Model,
    inputs: Mapping[str, Any] | np.ndarray | Any,
    values: Iterable[str] | str | None = "all",
    *,
    batch_size: int | None = None,
    device: Device = "auto",
) -> Trace:
    """Run ``model`` on ``inputs`` and record intermediate values.

    Args:
        model: a loaded :class:`Model`.
        inputs: arrays keyed by input name, one array for a single-input model, or a ``Dataset``.
        values: value names, ``"all"`` (default: every node output) or None (model outputs only).
        batch_size: run in batches of this many samples (results are concatenated).
        device: ``"auto"`` (CUDA when it really works), ``"cpu"`` or ``"cuda"``.

    Returns:
        A :class:`Trace` whose model outputs equal a plain onnxruntime run.

    Raises:
        DataError: bad inputs (named), or unknown value names.
    """
    feed = as_feed(model, inputs)
    rec = Recorder(model, values, device)
    parts: list[dict[str, np.ndarray]] = []
    sizes: list[int] = []
    fed: dict[str, list[np.ndarray]] = {}
    for n, chunk, out in rec.iter_batches(feed, batch_size):
        parts.append(out)
        sizes.append(n)
        for k, v in chunk.items():
            fed.setdefault(k, []).append(v)
    ins = {k: np.concatenate(v) for k, v in fed.items()}
    return Trace(_merge(parts, sizes), ins, model.output_names, rec.device)


def as_feed(model: Model, inputs: Any) -> dict[str, np.ndarray]:
    """Normalize ``inputs`` (mapping, single array, or Dataset) to arrays keyed by input name."""
    if isinstance(inputs, Dataset):
        return inputs.bind(model)
    if isinstance(inputs, np.ndarray):
        if len(model.inputs) != 1:
            raise DataError(
                f"the model has {len(model.inputs)} inputs ({', '.join(model.input_names)}); pass a mapping"
            )
        return Dataset({"x": inputs}).bind(model)
    if isinstance(inputs, Mapping):
        return dict(inputs)
    raise DataError(f"inputs must be a mapping, an array or a Dataset, not {type(inputs).__name__}")
