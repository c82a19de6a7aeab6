"""Fine-tuning an ONNX model with onnxslice's own gradients: :func:`finetune`.

A small training loop over the ONNX graph, with no deep-learning framework: each step records the
forward pass of a mini-batch in onnxruntime (one session, the trained initializers fed as inputs),
seeds the loss cotangent on the logits and runs the VJP rules of :class:`GradientEngine` back to the
trained initializers, then applies plain SGD or Adam (PyTorch's update rules and defaults, so a
torch twin of the model trained on the same batches ends with the same weights).

Losses (mean over the batch):

- ``"ce"``: softmax cross-entropy with the data set's labels; the logits' cotangent is
  ``(softmax(z) - onehot(y)) / N``.
- ``"distill"``: ``T^2 * KL(softmax(t / T) || softmax(z / T))`` against a teacher's logits ``t``,
  computed once by onnxruntime on the teacher model (the input model by default); the cotangent is
  ``T * (softmax(z / T) - softmax(t / T)) / N``.

When the model output is a Softmax/LogSoftmax (through Identity nodes), the loss reads that op's
input logits. Batch-norm statistics are constants of the graph: training changes only initializers.
Used by model protection (a thief's fine-tuning) and by recovery after pruning.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxslice.console import progress as _progress
from onnxslice.data import Dataset, load_data
from onnxslice.errors import DataError
from onnxslice.grad.engine import GradientEngine, logits_value
from onnxslice.model import Model, load
from onnxslice.record import Device, Recorder, validate_inputs
from onnxslice.rewrite.passes import PassManager, ReplaceInitializers
from onnxslice.targets import BoundTarget

__all__ = ["LOSSES", "OPTIMIZERS", "FinetuneResult", "finetune"]

OPTIMIZERS = ("adam", "sgd")
LOSSES = ("ce", "distill")
_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8


class _Distill(BoundTarget):
    """Distillation target: per-sample ``T^2 KL(softmax(t/T) || softmax(z/T))``; ``labels`` are the teacher logits.

    It reads the same value as ``loss`` (the logits, before a final Softmax) and replaces only the seed.
    """

    def __init__(self, model: Model, output: str, temperature: float) -> None:
        super().__init__(model, "loss", output)
        self.temperature = temperature

    def seed(self, arr: np.ndarray, *, labels: np.ndarray | None = None, cotangent: np.ndarray | None = None,
             n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        if labels is None or np.shape(labels) != arr.shape:
            raise DataError(
                f"distillation needs teacher logits shaped like '{self.value}' {list(arr.shape)}, "
                f"got {None if labels is None else list(np.shape(labels))}"
            )
        t = self.temperature
        log_ps = _log_softmax(arr.astype(np.float64) / t)
        log_pt = _log_softmax(np.asarray(labels, dtype=np.float64) / t)
        pt = np.exp(log_pt)
        kl = (pt * (log_pt - log_ps)).sum(axis=1) * t * t
        return kl, (t * (np.exp(log_ps) - pt)).astype(arr.dtype)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    zmax = z.max(axis=1, keepdims=True)
    return z - zmax - np.log(np.exp(z - zmax).sum(axis=1, keepdims=True))


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns.

    Attributes:
        model: the fine-tuned :class:`Model` (same graph; the trained initializers replaced; the run is
            recorded in ``metadata_props``).
        losses: the mean batch loss of every step, measured before that step's update.
        weights: the trained initializers' final values, by name.
        steps: number of updates made.
        epochs: passes over the data (the last may be partial when ``steps`` cut it short).
        config: optimizer, learning rate, loss, batch size, seed, temperature.
        seconds: wall time of the loop.
    """

    model: Model
    losses: list[float]
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    steps: int = 0
    epochs: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def __repr__(self) -> str:
        c = self.config
        first = f"{self.losses[0]:.4g}" if self.losses else "-"
        last = f"{self.losses[-1]:.4g}" if self.losses else "-"
        return (
            f"FinetuneResult({c.get('optimizer')} lr={c.get('lr')}, loss={c.get('loss')}, {self.steps} steps "
            f"({self.epochs:g} epochs, batch {c.get('batch_size')}), loss {first} -> {last}, "
            f"{len(self.weights)} initializers trained, {self.seconds:.1f}s)"
        )


def _check_args(
    epochs: int, steps: int | None, lr: float, optimizer: str, batch_size: int, loss: str, temperature: float
) -> None:
    if optimizer not in OPTIMIZERS:
        raise DataError(f"unknown optimizer '{optimizer}'; use {' or '.join(OPTIMIZERS)}")
    if loss not in LOSSES:
        raise DataError(f"unknown loss '{loss}'; use {' or '.join(LOSSES)}")
    if not (isinstance(epochs, int) and epochs >= 1):
        raise DataError(f"epochs must be a positive integer, got {epochs!r}")
    if steps is not None and not (isinstance(steps, int) and steps >= 1):
        raise DataError(f"steps must be a positive integer or None, got {steps!r}")
    if not (np.isfinite(lr) and lr > 0):
        raise DataError(f"the learning rate must be a positive number, got {lr!r}")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not (np.isfinite(temperature) and temperature > 0):
        raise DataError(f"the temperature must be a positive number, got {temperature!r}")


def _trainable(m: Model, trainable: Sequence[str] | None) -> list[str]:
    if trainable is None:
        names = [w for layer in m.layers for w in (layer.weight, layer.bias) if w]
        if not names:
            raise DataError("the model has no layer weights to train; name initializers with trainable=")
        return names
    if isinstance(trainable, str):
        trainable = [trainable]
    names = list(dict.fromkeys(trainable))
    if not names:
        raise DataError("trainable= names no initializer; give at least one")
    bad = [n for n in names if not m.is_initializer(n)]
    if bad:
        raise DataError(f"trainable names no initializer {', '.join(bad[:5])}; see `onnxslice inspect` for the weights")
    nonfloat = [n for n in names if not np.issubdtype(m.initializer(n).dtype, np.floating)]
    if nonfloat:
        raise DataError(f"initializer(s) {', '.join(nonfloat)} are not float: they cannot be trained")
    return names


def _frozen_masks(m: Model, names: Sequence[str], frozen: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    masks: dict[str, np.ndarray] = {}
    for name, mask in (frozen or {}).items():
        if name not in names:
            raise DataError(f"frozen names '{name}', which is not among the trained initializers")
        arr = np.asarray(mask)
        shape = m.initializer(name).shape
        if arr.dtype != np.bool_ or arr.shape != shape:
            raise DataError(f"the frozen mask of '{name}' must be a boolean array of shape {list(shape)}")
        masks[name] = arr
    return masks


def _teacher_logits(
    teacher: Model | str | Path | None, model: Model, feed: dict[str, np.ndarray], batch_size: int, device: Device
) -> np.ndarray:
    t = model if teacher is None else teacher if isinstance(teacher, Model) else load(teacher)
    if t.input_names != model.input_names:
        raise DataError(f"the teacher's inputs {t.input_names} differ from the model's {model.input_names}")
    value = logits_value(t, t.output_names[0])
    rec = Recorder(t, [value], device)
    parts = [vals[value] for _, _, vals in rec.iter_batches(feed, max(batch_size, 256))]
    return np.concatenate(parts)


class _Optimizer:
    """PyTorch's SGD (no momentum) and Adam (betas 0.9/0.999, eps 1e-8) updating numpy arrays in place."""

    def __init__(self, kind: str, lr: float, params: dict[str, np.ndarray]) -> None:
        self.kind = kind
        self.lr = lr
        self.params = params
        self.t = 0
        self.m = {k: np.zeros_like(v) for k, v in params.items()} if kind == "adam" else {}
        self.v = {k: np.zeros_like(v) for k, v in params.items()} if kind == "adam" else {}

    def step(self, grads: Mapping[str, np.ndarray]) -> None:
        """One update of every parameter with its (mean) gradient."""
        self.t += 1
        b1, b2 = _ADAM_BETAS
        for k, w in self.params.items():
            g = grads[k]
            if self.kind == "sgd":
                w -= np.asarray(self.lr, w.dtype) * g
                continue
            self.m[k] = b1 * self.m[k] + (1 - b1) * g
            self.v[k] = b2 * self.v[k] + (1 - b2) * g * g
            bc1 = 1 - b1**self.t
            bc2 = 1 - b2**self.t
            denom = np.sqrt(self.v[k]) / np.sqrt(bc2) + _ADAM_EPS
            w -= ((self.lr / bc1) * self.m[k] / denom).astype(w.dtype, copy=False)


def finetune(
    model: Model | str | Path,
    data: Dataset | str,
    *,
    epochs: int = 1,
    steps: int | None = None,
    lr: float = 1e-3,
    optimizer: str = "adam",
    batch_size: int = 32,
    loss: str = "ce",
    teacher: Model | str | Path | None = None,
    temperature: float = 1.0,
    trainable: Sequence[str] | None = None,
    seed: int = 0,
    progress: bool = True,
    frozen: Mapping[str, np.ndarray] | None = None,
    device: Device = "auto",
) -> FinetuneResult:
    """Fine-tune ``model``'s initializers on ``data`` with gradients from the ONNX graph.

    Each epoch visits the samples in a fresh random order (``numpy.random.default_rng(seed)``), in
    mini-batches of ``batch_size`` (the last one may be smaller). ``"sgd"`` is ``w -= lr * g``;
    ``"adam"`` is PyTorch's Adam (betas 0.9/0.999, eps 1e-8, no weight decay).

    Args:
        model: a :class:`Model` or a path to an ONNX file.
        data: a :class:`Dataset` (or a data spec); ``loss="ce"`` needs its labels.
        epochs: passes over the data (ignored when ``steps`` is given).
        steps: make exactly this many updates (epochs continue as needed), instead of ``epochs`` passes.
        lr: learning rate.
        optimizer: ``"adam"`` or ``"sgd"``.
        batch_size: samples per update.
        loss: ``"ce"`` (cross-entropy with the labels) or ``"distill"`` (KL to the teacher's softmax).
        teacher: the teacher model for ``"distill"`` (default: ``model`` itself as given).
        temperature: softmax temperature ``T`` of ``"distill"``.
        trainable: initializer names to update (default: every layer weight and bias).
        seed: seed of the shuffling.
        progress: draw a progress bar on stderr (when ``ONNXSLICE_PROGRESS``/a terminal allows it).
        frozen: initializer name -> boolean mask (its shape) of entries kept at their value.
        device: onnxruntime device of the forward passes.

    Returns:
        :class:`FinetuneResult` with the updated model and the per-step losses.

    Raises:
        DataError: bad arguments, no labels for ``"ce"``, unknown trainable initializers, bad masks.
    """
    _check_args(epochs, steps, lr, optimizer, batch_size, loss, temperature)
    m = model if isinstance(model, Model) else load(model)
    ds = data if isinstance(data, Dataset) else load_data(data)
    names = _trainable(m, trainable)
    masks = _frozen_masks(m, names, frozen)
    feed = validate_inputs(m, ds.bind(m))
    n = len(ds)
    if n == 0:
        raise DataError(f"data set '{ds.name}' has no samples")
    if loss == "ce":
        if ds.labels is None:
            raise DataError(f"loss 'ce' needs labels; data set '{ds.name}' has none (use loss='distill')")
        targets: np.ndarray = np.asarray(ds.labels)
    else:
        targets = _teacher_logits(teacher, m, feed, batch_size, device)
    engine = GradientEngine(m, "loss", weights=names, inputs=False, swappable=names, device=device)
    if loss == "distill":
        engine.bound = _Distill(m, engine.output, float(temperature))  # same logits value, the KL seed

    params = {k: np.array(m.initializer(k), copy=True) for k in names}
    opt = _Optimizer(optimizer, lr, params)
    per_epoch = -(-n // batch_size)
    total = steps if steps is not None else epochs * per_epoch
    rng = np.random.default_rng(seed)
    order = np.empty(0, dtype=np.int64)
    losses: list[float] = []
    t0 = time.perf_counter()
    for step in _progress(range(total), total, "finetune", None if progress else False):
        pos = (step % per_epoch) * batch_size
        if pos == 0:
            order = rng.permutation(n)
        idx = order[pos : pos + batch_size]
        batch = {k: v[idx] for k, v in feed.items()}
        g = engine(batch, labels=targets[idx], weights=params)
        losses.append(float(np.mean(g.target_values)))
        grads = {}
        for k, w in params.items():
            grad = (g.weights[k] / np.asarray(len(idx), dtype=w.dtype)).astype(w.dtype, copy=False)
            grads[k] = np.where(masks[k], np.zeros((), w.dtype), grad) if k in masks else grad
        opt.step(grads)
    seconds = time.perf_counter() - t0
    config = {
        "optimizer": optimizer,
        "lr": lr,
        "loss": loss,
        "batch_size": batch_size,
        "seed": seed,
        "temperature": temperature if loss == "distill" else None,
        "samples": n,
        "trainable": len(names),
        "frozen": sorted(masks),
    }
    out = _with_weights(m, params, config, total)
    return FinetuneResult(out, losses, params, total, round(total / per_epoch, 4), config, seconds)


def _with_weights(m: Model, params: Mapping[str, np.ndarray], config: Mapping[str, Any], steps: int) -> Model:
    """A copy of ``m`` with the trained initializers replaced and the run in ``metadata_props``."""
    new = {name: np.asarray(v) for name, v in params.items() if m.is_initializer(name)}
    extra = {**config, "steps": steps, "source": m.fingerprint}
    return PassManager("finetune", [ReplaceInitializers(new)]).run(m, extra=extra).model
