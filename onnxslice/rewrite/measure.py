"""Before/after measurements of a rewritten model: parameters, MACs, file size, latency, fidelity.

Latency is the median over repeats of one optimized onnxruntime session (graph optimizations on,
as deployed), after warm-up runs. Fidelity is the top-1 agreement with the original model's
predictions, and accuracy when labels are given. Used by the ``prune`` and ``quantize`` verbs and
their benchmarks; nothing here edits a model.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from onnxslice.flops import count_macs
from onnxslice.model import Model
from onnxslice.record import make_session, runtime_proto

__all__ = ["ModelStats", "latency_ms", "model_stats", "predictions"]


def latency_ms(model: Model, feed: Mapping[str, np.ndarray], repeats: int = 20, warmup: int = 3,
               threads: int | None = 1) -> float:
    """Median wall time (ms) of one run on ``feed`` in an optimized CPU session."""
    sess = make_session(runtime_proto(model.proto), "cpu", optimize=True, threads=threads)
    feed = dict(feed)
    for _ in range(warmup):
        sess.run(None, feed)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def predictions(model: Model, feed: Mapping[str, np.ndarray], batch_size: int = 256) -> np.ndarray:
    """Top-1 class of the first output for every sample (argmax over the last axis)."""
    sess = make_session(runtime_proto(model.proto), "cpu", optimize=True)
    n = len(next(iter(feed.values())))
    out = []
    for s in range(0, n, batch_size):
        y = sess.run([model.output_names[0]], {k: v[s : s + batch_size] for k, v in feed.items()})[0]
        out.append(np.asarray(y).reshape(len(y), -1).argmax(1))
    return np.concatenate(out)


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


def model_stats(model: Model, feed: Mapping[str, np.ndarray], repeats: int = 20) -> ModelStats:
    """Parameters, MACs per sample, serialized bytes and median latency on ``feed``."""
    return ModelStats(model.num_params, count_macs(model).total, model.proto.ByteSize(),
                      latency_ms(model, feed, repeats))
