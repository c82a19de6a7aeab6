"""Bit-flip fault campaigns: random bit flips in the weights and activations of chosen layers.

The fault model (see also :mod:`onnxslice.apps.bits` for the bit classes):

- **Where.** A *fault set* is a set of layers; each trial flips bits in every layer of the set, in its
  weights (``on="weights"``), its output activation (``"activations"``) or both. Float layers flip their
  float32/float16 weight initializer; layers of a quantized model (a ``DequantizeLinear`` of an
  int8/uint8/int4/uint4 initializer feeding the layer) flip the *stored* integer encoding; a
  ``MatMulNBits`` layer (onnxruntime's block-quantized int4 MatMul) flips the bytes of its packed weight
  ``B``, two 4-bit weights per byte, so one flip corrupts one weight.
- **How many.** ``rate``: each bit of the chosen class flips independently with probability ``rate``
  (a bit-error rate, BER); or ``flips``: exactly ``flips`` bits per layer and inference.
- **When.** A weight fault is a corrupted memory word: one draw per trial, seen by every sample of the
  trial. An activation fault is transient: every sample (inference) gets its own draw.
- **Randomness.** Trial ``t`` of a campaign with seed ``s`` gets the seed ``unit_seeds(s, trials)[t]``;
  layer ``i`` (its index in the model's layer list) draws from ``(trial seed, i, 0)`` for weights and
  ``(trial seed, i, 1)`` for activations, over the whole data set at once. So a layer's faults in a
  trial are the same in every fault set that contains it (common random numbers: curves of different
  orders differ only by which layers are checked), and results do not depend on the backend, the number
  of workers or the batch size.

Weights go through swappable-weight sessions; activations are flipped in the recorded tensor and only
the downstream nodes rerun (:class:`~onnxslice.apps.staged.StagedRunner`). Each unit (fault set x
trial) is independent and runs on :func:`onnxslice.parallel.map_units` (in-process by default,
processes or Ray when asked).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnxslice.apps.bits import class_bits, draw_flips, encoding, flip_bits
from onnxslice.apps.staged import FaultPoint, StagedRunner
from onnxslice.console import progress as bar
from onnxslice.errors import DataError, ModelError
from onnxslice.fault_sites import FaultLayer, constant_subgraph, fault_layers
from onnxslice.model import Model, load
from onnxslice.parallel import Backend, map_units, unit_seeds
from onnxslice.record import Device
from onnxslice.scores import LayerScores
from onnxslice.sensitivity.common import as_model, calibration

__all__ = [
    "TARGETS",
    "Campaign",
    "FaultLayer",
    "FaultModel",
    "SetResult",
    "check_float_inputs",
    "checked_curve",
    "constant_subgraph",
    "fault_layers",
    "min_checked",
    "run_campaign",
    "vulnerability",
]

TARGETS = ("weights", "activations", "both")
@dataclass(frozen=True)
class FaultModel:
    """What a trial flips (see the module docstring).

    Attributes:
        on: ``weights``, ``activations`` or ``both``.
        rate: bit-error rate in (0, 1), or None when ``flips`` is given.
        flips: flips per layer and inference, or None when ``rate`` is given.
        bits: bit class: ``any``, ``sign``, ``exponent``, ``mantissa``.
    """

    on: str = "weights"
    rate: float | None = 1e-6
    flips: int | None = None
    bits: str = "any"

    def check(self) -> FaultModel:
        """Validate; returns self.

        Raises:
            DataError: an unknown target or bit class, a rate outside (0, 1), flips < 1, or both/neither.
        """
        if self.on not in TARGETS:
            raise DataError(f"unknown fault target '{self.on}'; valid targets are: {', '.join(TARGETS)}")
        if (self.rate is None) == (self.flips is None):
            raise DataError("give exactly one of a bit-error rate (--rate) or a number of flips (--flips)")
        if self.rate is not None and not (0.0 < self.rate < 1.0 and math.isfinite(self.rate)):
            raise DataError(f"the bit-error rate must be in (0, 1), got {self.rate}")
        if self.flips is not None and self.flips < 1:
            raise DataError(f"--flips must be at least 1, got {self.flips}")
        class_bits("float32", self.bits)  # unknown class names fail here
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"on": self.on, "rate": self.rate, "flips": self.flips, "bits": self.bits}


@dataclass
class SetResult:
    """One fault set over all trials.

    Attributes:
        layers: the faulted layers.
        accuracy: per trial, accuracy against the labels (None without labels).
        agreement: per trial, top-1 agreement with the fault-free model.
        flips: per trial, the bits flipped (all layers, all samples).
    """

    layers: list[str]
    accuracy: list[float] | None
    agreement: list[float]
    flips: list[int]

    def metric(self, name: str) -> np.ndarray:
        """Per-trial values of ``accuracy`` or ``agreement``."""
        vals = self.accuracy if name == "accuracy" else self.agreement
        if vals is None:
            raise DataError("accuracy needs labelled data; use metric 'agreement'")
        return np.asarray(vals, np.float64)

    def mean_ci(self, name: str) -> tuple[float, float]:
        """Mean over trials and the half-width of its 95% interval (normal approximation over trials)."""
        v = self.metric(name)
        half = 1.96 * float(v.std(ddof=1)) / math.sqrt(len(v)) if len(v) > 1 else float("nan")
        return float(v.mean()), half

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"layers": self.layers, "accuracy": self.accuracy, "agreement": self.agreement, "flips": self.flips}


@dataclass
class Campaign:
    """The results of :func:`run_campaign`.

    Attributes:
        sets: one result per fault set, in the order given.
        clean_accuracy: fault-free accuracy (None without labels).
        fault_model: what was flipped.
        meta: trials, seed, samples, data, backend, seconds.
    """

    sets: list[SetResult]
    clean_accuracy: float | None
    fault_model: FaultModel
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def metric(self) -> str:
        """``accuracy`` when the data has labels, else ``agreement``."""
        return "accuracy" if self.clean_accuracy is not None else "agreement"

    @property
    def clean(self) -> float:
        """The fault-free value of :attr:`metric` (agreement of a clean model with itself is 1)."""
        return self.clean_accuracy if self.clean_accuracy is not None else 1.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"kind": "FaultCampaign", "fault_model": self.fault_model.to_dict(), "metric": self.metric,
                "clean": self.clean, "sets": [s.to_dict() for s in self.sets], "meta": self.meta}


# -- the work of one unit ------------------------------------------------------------------------------
@dataclass
class _Shared:
    model_bytes: bytes
    feed: dict[str, np.ndarray]
    labels: np.ndarray | None
    sets: list[list[int]]
    fault: FaultModel
    batch_size: int | None
    device: Device


_RUNNERS: dict[int, tuple[_Shared, Model, list[FaultLayer], StagedRunner, np.ndarray]] = {}
_PREPARED: dict[int, set[int]] = {}


def _runner(shared: _Shared) -> tuple[Model, list[FaultLayer], StagedRunner, np.ndarray]:
    hit = _RUNNERS.get(id(shared))
    if hit is not None and hit[0] is shared:
        return hit[1], hit[2], hit[3], hit[4]

    _RUNNERS.clear()
    _PREPARED.clear()
    m = load(shared.model_bytes, check=False)
    layers = fault_layers(m)
    n = len(next(iter(shared.feed.values())))
    bs = shared.batch_size or n
    batches = [(slice(s, min(s + bs, n)), {k: v[s : s + bs] for k, v in shared.feed.items()}) for s in range(0, n, bs)]
    runner = StagedRunner(m, batches, shared.device)  # stages are prepared lazily, per fault set
    first = m.output_names[0]
    clean = np.concatenate([_predict(runner.clean(b)[first]) for b in range(len(batches))])
    _RUNNERS[id(shared)] = (shared, m, layers, runner, clean)
    return m, layers, runner, clean


def _points(layers: list[FaultLayer], idx: Sequence[int], on: str) -> list[FaultPoint]:
    pts = []
    for i in sorted(idx):
        x = layers[i]
        pts.append(FaultPoint(x.weight if on in ("weights", "both") else None,
                              x.output if on in ("activations", "both") else None))
    return pts


def _predict(y: np.ndarray) -> np.ndarray:
    """Top-1 class per sample; a sample whose output holds NaN predicts nothing (-1). An integer output of
    one value per sample is a predicted label already (scikit-learn classifiers' first output) and is kept."""
    y = np.asarray(y)
    if y.ndim == 1 and np.issubdtype(y.dtype, np.integer):
        return y.astype(np.int64)
    y = y.reshape(len(y), -1)
    pred = np.argmax(np.nan_to_num(y, nan=-np.inf), axis=1)
    pred[np.isnan(y).any(axis=1)] = -1
    return pred


def _act_flips(rng: np.random.Generator, n: int, per_sample: int, positions: np.ndarray, fault: FaultModel,
               ) -> tuple[np.ndarray, np.ndarray]:
    """Flips of a whole data set's activations: per-sample draws, as flat indices into ``[n, per_sample]``."""
    total_bits = per_sample * len(positions)
    if fault.rate is not None:
        counts = rng.binomial(total_bits, fault.rate, size=n)
    else:
        counts = np.full(n, min(int(fault.flips or 0), total_bits))
    idx_parts, bit_parts = [], []
    for s in np.nonzero(counts)[0]:
        pick = rng.choice(total_bits, size=int(counts[s]), replace=False)
        idx_parts.append(s * per_sample + pick // len(positions))
        bit_parts.append(positions[pick % len(positions)])
    if not idx_parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(idx_parts).astype(np.int64), np.concatenate(bit_parts).astype(np.int64)


def _run_unit(shared: _Shared, unit: tuple[int, int, int], _seed: int) -> tuple[int, int, int, int]:
    """Run fault set ``unit[0]`` for trial ``unit[1]`` (trial seed ``unit[2]``): (correct, agree, n, flips)."""
    set_idx, _trial, trial_seed = unit
    m, layers, runner, clean = _runner(shared)
    fault = shared.fault
    chosen = [layers[i] for i in sorted(shared.sets[set_idx])]
    points = _points(layers, shared.sets[set_idx], fault.on)
    if set_idx not in _PREPARED.setdefault(id(runner), set()):
        runner.prepare(points)
        _PREPARED[id(runner)].add(set_idx)
    n = len(clean)
    flipped = 0
    weights: dict[str, np.ndarray] = {}
    if fault.on in ("weights", "both"):
        for x in chosen:
            w = np.asarray(m.initializer(x.weight))
            if x.weight_encoding in ("int4", "uint4"):
                w = w.astype(np.int8 if x.weight_encoding == "int4" else np.uint8)
            rng = np.random.default_rng([trial_seed, x.index, 0])
            idx, bit = draw_flips(rng, w.size, class_bits(x.weight_encoding, fault.bits), fault.rate, fault.flips)
            weights[x.weight] = flip_bits(w, idx, bit, x.weight_encoding)
            flipped += len(idx)
    acts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if fault.on in ("activations", "both"):
        first_batch = runner.clean(0)
        for x in chosen:
            a = first_batch[x.output]
            per_sample = int(np.prod(a.shape[1:]))
            rng = np.random.default_rng([trial_seed, x.index, 1])
            acts[x.output] = _act_flips(rng, n, per_sample, class_bits(encoding(a.dtype), fault.bits), fault)
            flipped += len(acts[x.output][0])
    first = m.output_names[0]
    correct = agree = 0
    for b, (rows, _) in enumerate(runner.batches):

        def overwrite(value: str, arr: np.ndarray, rows: slice = rows) -> np.ndarray:
            idx, bit = acts[value]
            per = int(np.prod(arr.shape[1:]))
            lo, hi = rows.start * per, rows.stop * per
            keep = (idx >= lo) & (idx < hi)
            return flip_bits(arr, idx[keep] - lo, bit[keep]) if keep.any() else arr

        out = runner.run(b, points, weights, overwrite)
        pred = _predict(out[first])
        agree += int((pred == clean[rows]).sum())
        if shared.labels is not None:
            correct += int((pred == shared.labels[rows]).sum())
    return correct, agree, n, flipped


def run_campaign(
    model: Model | Any,
    data: Any,
    fault_sets: Sequence[Sequence[str]],
    fault: FaultModel,
    *,
    trials: int = 20,
    samples: int | None = 256,
    batch_size: int | None = 256,
    seed: int = 0,
    backend: Backend = "local",
    workers: int | None = None,
    address: str | None = None,
    device: Device = "cpu",
    progress: bool | None = None,
) -> Campaign:
    """Run ``trials`` trials of every fault set (a list of layer names each).

    Args:
        model: a Model or a path.
        data: data (spec, Dataset, array or mapping); labels give accuracy, else top-1 agreement only.
        fault_sets: the layers faulted together in each set (an empty set measures the clean model).
        fault: what is flipped (validated here).
        trials: independent trials per set.
        samples: the first ``samples`` samples (None: all).
        batch_size: samples per onnxruntime run.
        seed: the campaign seed (see the module docstring).
        backend: ``local`` (default) or ``ray``; ``workers`` processes (local) or CPUs (Ray).
        address: a Ray cluster to join.
        device: onnxruntime device.
        progress: draw a progress bar (default: ``ONNXSLICE_PROGRESS`` / terminal).

    Raises:
        DataError: a bad fault model, trials < 1, bad data. ModelError: an unknown layer or no layers.
    """
    fault.check()
    if trials < 1:
        raise DataError(f"trials must be at least 1, got {trials}")
    m = as_model(model)
    layers = fault_layers(m)
    index = {x.name: x.index for x in layers}
    for s in fault_sets:
        bad = [n for n in s if n not in index]
        if bad:
            raise ModelError(f"no layer named {', '.join(bad)}; layers are: {', '.join(index)}")
    check_float_inputs(m)
    cal = calibration(m, data, samples)
    sets = [sorted({index[n] for n in s}) for s in fault_sets]
    shared = _Shared(m.proto.SerializeToString(), cal.feed, cal.labels, sets, fault, batch_size, device)
    t0 = time.perf_counter()
    tseeds = unit_seeds(seed, trials)
    results: list[SetResult] = []
    for si in bar(range(len(sets)), total=len(sets), desc="fault campaign", enabled=progress):
        units = [(si, t, tseeds[t]) for t in range(trials)]
        raw = map_units(_run_unit, units, shared, backend=backend, workers=workers, address=address, seed=seed)
        n = raw[0][2]
        results.append(SetResult(
            [layers[i].name for i in sets[si]],
            [r[0] / n for r in raw] if cal.labels is not None else None,
            [r[1] / n for r in raw],
            [r[3] for r in raw],
        ))
    clean_acc = None
    if cal.labels is not None:
        clean_acc = float((_runner(shared)[3] == cal.labels).mean())
    meta = {"trials": trials, "samples": len(cal), "data": cal.name, "seed": seed, "backend": backend,
            "workers": workers, "batch_size": batch_size, "seconds": time.perf_counter() - t0,
            "layers": [x.name for x in layers]}
    return Campaign(results, clean_acc, fault, meta)


def check_float_inputs(m: Model) -> None:
    """Refuse a model with a non-float input (token ids, integer images): faults and guards need float data.

    Raises:
        DataError: naming the first such input.
    """
    bad = [vi for vi in m.inputs if vi.dtype is None or not np.issubdtype(vi.dtype, np.floating)]
    if bad:
        raise DataError(
            f"input '{bad[0].name}' is {bad[0].describe()}: fault campaigns and guards need float inputs "
            "(a model taking token ids or integer images is not supported)"
        )


def vulnerability(
    model: Model | Any, data: Any, fault: FaultModel, *, layers: list[str] | None = None, trials: int = 20, **kw: Any,
) -> tuple[LayerScores, Campaign]:
    """The measured per-layer vulnerability: the loss when faults hit that layer alone (SAfER's oracle).

    Returns:
        ``LayerScores`` (criterion ``vulnerability``: clean minus faulted accuracy or agreement, higher =
        more vulnerable) and the campaign behind it (one set per layer).
    """
    m = as_model(model)
    names = layers or [x.name for x in fault_layers(m)]
    camp = run_campaign(m, data, [[n] for n in names], fault, trials=trials, **kw)
    metric = camp.metric
    scores = {s.layers[0]: camp.clean - s.mean_ci(metric)[0] for s in camp.sets}
    meta = {"metric": metric, "fault_model": fault.to_dict(), "trials": trials,
            "ci95": {s.layers[0]: s.mean_ci(metric)[1] for s in camp.sets}}
    return LayerScores(scores, "vulnerability", "", meta), camp


def checked_curve(
    model: Model | Any, data: Any, order: Sequence[str], fault: FaultModel, *, trials: int = 20,
    checked: Sequence[int] | None = None, **kw: Any,
) -> Campaign:
    """Faults hit only the unchecked layers: the first ``k`` layers of ``order`` (most important first) are
    checked, for every ``k`` in ``checked`` (default ``0..L``). Set ``i`` of the result has ``checked[i]``
    checked layers."""
    ks = list(checked) if checked is not None else list(range(len(order) + 1))
    sets = [list(order[k:]) for k in ks]
    camp = run_campaign(model, data, sets, fault, trials=trials, **kw)
    camp.meta["checked"] = ks
    camp.meta["order"] = list(order)
    return camp


def min_checked(camp: Campaign, max_loss: float) -> int | None:
    """The smallest number of checked layers ``k`` such that every ``k' >= k`` of a :func:`checked_curve`
    keeps the mean loss within ``max_loss`` (a fraction: 0.01 = one point); None if none does."""
    ks: list[int] = camp.meta["checked"]
    best: int | None = None
    for k, s in sorted(zip(ks, camp.sets, strict=True), key=lambda p: -p[0]):
        if camp.clean - s.mean_ci(camp.metric)[0] <= max_loss + 1e-12:
            best = k
        else:
            break
    return best

