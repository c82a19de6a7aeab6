"""How closely a rewritten model follows the original: output error, top-1 agreement, KL, accuracy.

Both models run in onnxruntime on the same samples; the first output is taken as class scores when
it is 2-D. Scores that are already probabilities (non-negative rows summing to 1) are used as they
are, anything else goes through a softmax before the KL divergence.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from onnxslice.data import Dataset
from onnxslice.model import Model
from onnxslice.record import Recorder, as_feed
from onnxslice.targets import batch_axis

__all__ = ["Fidelity", "compare_outputs", "fidelity", "run_outputs"]


@dataclass(frozen=True)
class Fidelity:
    """Agreement of a model's outputs with a reference's.

    Attributes:
        samples: how many samples were compared.
        rel_error: ``||y - y_ref|| / ||y_ref||`` over all outputs and samples.
        mean_l2: mean over samples of ``||y - y_ref||`` (the oracle's measure).
        top1_agreement: fraction of samples whose arg-max class matches the reference's (None if not 2-D).
        kl: mean ``KL(p_ref || p)`` of the class distributions (None if not 2-D).
        accuracy: top-1 accuracy against labels (None without labels).
        ref_accuracy: the reference's accuracy against the same labels.
    """

    samples: int
    rel_error: float
    mean_l2: float
    top1_agreement: float | None
    kl: float | None
    accuracy: float | None
    ref_accuracy: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def _probs(y: np.ndarray) -> np.ndarray:
    y = y.astype(np.float64)
    if (y >= 0).all() and np.allclose(y.sum(axis=1), 1.0, atol=1e-3):
        return np.clip(y, 1e-12, None)
    z = np.exp(y - y.max(axis=1, keepdims=True))
    return np.clip(z / z.sum(axis=1, keepdims=True), 1e-12, None)


def compare_outputs(
    ref: list[np.ndarray], out: list[np.ndarray], labels: np.ndarray | None = None
) -> Fidelity:
    """Compare outputs of two models on the same samples (sample axis first)."""
    n = len(ref[0]) if ref and ref[0].ndim else 1
    r = np.concatenate([a.reshape(n, -1).astype(np.float64) for a in ref], axis=1)
    o = np.concatenate([a.reshape(n, -1).astype(np.float64) for a in out], axis=1)
    rel = float(np.linalg.norm(o - r)) / max(float(np.linalg.norm(r)), 1e-30)
    l2 = float(np.linalg.norm(o - r, axis=1).mean())
    top1 = kl = acc = ref_acc = None
    if ref[0].ndim > 2 and sum(d > 1 for d in ref[0].shape[1:]) == 1:  # [N, C, 1, 1] classifiers
        ref, out = [ref[0].reshape(n, -1), *ref[1:]], [out[0].reshape(n, -1), *out[1:]]
    if ref[0].ndim == 2 and ref[0].shape[1] > 1:
        pr, po = _probs(ref[0]), _probs(out[0])
        top1 = float((ref[0].argmax(1) == out[0].argmax(1)).mean())
        kl = float((pr * (np.log(pr) - np.log(po))).sum(axis=1).mean())
        if labels is not None:
            acc = float((out[0].argmax(1) == labels).mean())
            ref_acc = float((ref[0].argmax(1) == labels).mean())
    return Fidelity(n, rel, l2, top1, kl, acc, ref_acc)


def run_outputs(model: Model, data: Any, batch_size: int = 64) -> list[np.ndarray]:
    """The model's outputs on ``data`` (CPU onnxruntime, batched), concatenated over batches.

    Each output's sample axis is moved to axis 0 (a time-first ``[T, N, C]`` output comes back as
    ``[N, T, C]``), so that the comparisons below always find the samples first.
    """
    rec = Recorder(model, None, "cpu")
    parts: list[list[np.ndarray]] = []
    for n, _, res in rec.iter_batches(as_feed(model, data), batch_size):
        parts.append([np.moveaxis(res[o], batch_axis(model, [o], res[o].shape, n), 0) if res[o].ndim else res[o]
                      for o in model.output_names])
    return [np.concatenate([p[i] for p in parts]) for i in range(len(model.output_names))]


def fidelity(
    model: Model,
    reference: Model,
    data: Any,
    labels: np.ndarray | None = None,
    batch_size: int = 64,
    ref_outputs: list[np.ndarray] | None = None,
) -> Fidelity:
    """Run ``model`` and ``reference`` on ``data`` and compare their outputs.

    Args:
        model: the rewritten model.
        reference: the original.
        data: samples (mapping, array or ``Dataset``; a ``Dataset``'s labels are used when ``labels`` is None).
        labels: integer labels for accuracy.
        batch_size: onnxruntime batch size.
        ref_outputs: the reference's outputs on ``data`` when already computed.
    """
    if labels is None and isinstance(data, Dataset):
        labels = data.labels
    ref = ref_outputs if ref_outputs is not None else run_outputs(reference, data, batch_size)
    return compare_outputs(ref, run_outputs(model, data, batch_size), labels)
