"""Before/after cost of a rewritten model: parameters, MACs, serialized size, latency.

Latency is the median over repeats of one optimized onnxruntime session (graph optimizations on,
as deployed), after warm-up runs. How closely the rewritten model follows the original (output
error, top-1 agreement, KL, accuracy) is :mod:`onnxslice.rewrite.fidelity`, shared with the
quantizer. Used by the ``prune`` verb and its benchmark; nothing here edits a model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from onnxslice.flops import count_macs
from onnxslice.model import Model
from onnxslice.record import Recorder, make_session, runtime_proto
from onnxslice.session import round_robin_times

__all__ = ["ModelStats", "latency_ms", "model_stats", "paired_latency_ms"]


def paired_latency_ms(models: Sequence[Model], feed: Mapping[str, np.ndarray], repeats: int = 20, warmup: int = 3,
                      threads: int | None = 1) -> list[float]:
    """Median wall time (ms) of one run on ``feed`` for each model, measured round-robin.

    Every model gets its own optimized CPU session; each repeat runs every model once, starting one
    model later than the repeat before (so none always runs first, after another model's weights
    filled the caches), and load on a shared machine hits them alike: their ratios stay meaningful
    when absolute times drift.
    """
    sessions = [make_session(runtime_proto(m.proto), "cpu", optimize=True, threads=threads) for m in models]
    times = round_robin_times(sessions, [feed] * len(sessions), repeats, warmup)
    return [float(v) for v in np.median(times, axis=0)]


def latency_ms(model: Model, feed: Mapping[str, np.ndarray], repeats: int = 20, warmup: int = 3,
               threads: int | None = 1) -> float:
    """Median wall time (ms) of one run on ``feed`` in an optimized CPU session."""
    return paired_latency_ms([model], feed, repeats, warmup, threads)[0]


@dataclass
class ModelStats:
    """Size and speed of one model."""

    params: int
    macs: int
    bytes: int
    latency_ms: float

    def ratio(self, other: ModelStats) -> dict[str, float]:
        """``other / self`` for each measure (e.g. pruned / original)."""
        return {
            "params": other.params / max(self.params, 1),
            "macs": other.macs / max(self.macs, 1),
            "bytes": other.bytes / max(self.bytes, 1),
            "latency": other.latency_ms / max(self.latency_ms, 1e-9),
        }


def model_stats(model: Model, feed: Mapping[str, np.ndarray], repeats: int = 20,
                latency: float | None = None) -> ModelStats:
    """Parameters, MACs per sample, serialized bytes and median latency on ``feed`` (or the given ``latency``).

    MACs use the shapes recorded on ``feed`` (dynamic spatial sizes are then counted at the data's real
    size) and are divided by its number of samples.
    """
    ms = latency if latency is not None else latency_ms(model, feed, repeats)
    return ModelStats(model.num_params, _macs_on(model, feed), model.proto.ByteSize(), ms)


def _macs_on(model: Model, feed: Mapping[str, np.ndarray]) -> int:
    counted = [n for n in model.nodes if not n.domain and n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")]
    want = sorted({v for n in counted for v in (*n.inputs[:2], n.outputs[0])
                   if v and not model.is_initializer(v) and v not in model.input_names})
    n = len(next(iter(feed.values()))) if feed else 1
    try:
        rec = Recorder(model, want, "cpu").run(dict(feed))
    except Exception:  # shapes from the graph alone (never worse than before)
        return count_macs(model).total
    shapes = {k: v.shape for k, v in rec.items()}
    shapes.update({k: np.shape(v) for k, v in feed.items()})
    return count_macs(model, n, shapes).total // max(n, 1)
