"""Adversarial examples from onnxslice's own input gradients: FGSM and PGD (L-infinity, random start).

Both attack the softmax cross-entropy of the true labels (``target="loss"``) through a
:class:`~onnxslice.grad.GradientEngine`, so any ONNX classifier works without its training code.
Inputs are kept in the valid box ``clip`` (``[0, 1]`` images by default). Nothing here changes the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from onnxslice.errors import DataError
from onnxslice.grad import GradientEngine
from onnxslice.model import Model, load
from onnxslice.record import Recorder

__all__ = ["accuracy", "fgsm", "pgd"]

Box = tuple[float, float] | None


def _engine(model: Model | Any, engine: GradientEngine | None) -> GradientEngine:
    if engine is not None:
        if engine.target.kind != "loss":
            raise DataError(f"attacks need an engine with target='loss', not '{engine.target.spec}'")
        return engine
    m = model if isinstance(model, Model) else load(model)
    return GradientEngine(m, "loss", weights=[], device="auto")


def _input_name(engine: GradientEngine) -> str:
    if len(engine.model.inputs) != 1 or not engine.input_names:
        raise DataError(f"attacks take one float input; the model has inputs {', '.join(engine.model.input_names)}")
    return engine.input_names[0]


def _loss_grad(engine: GradientEngine, x: np.ndarray, labels: np.ndarray, batch_size: int | None) -> np.ndarray:
    return engine(x, labels=labels, batch_size=batch_size).inputs[_input_name(engine)]


def _clip(x: np.ndarray, box: Box) -> np.ndarray:
    return np.clip(x, box[0], box[1]) if box is not None else x


def fgsm(
    model: Model | Any,
    x: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    epsilon: float = 0.1,
    *,
    clip: Box = (0.0, 1.0),
    engine: GradientEngine | None = None,
    batch_size: int | None = None,
) -> np.ndarray:
    """Fast Gradient Sign Method (Goodfellow et al., 2015): ``x + epsilon * sign(d loss / d x)``.

    Args:
        model: a Model, path or ModelProto (a classifier with one float input).
        x: inputs ``[N, ...]``.
        labels: true class per sample.
        epsilon: the L-infinity budget.
        clip: the valid input box (None: unbounded).
        engine: a prepared ``GradientEngine(model, "loss")`` to reuse.
        batch_size: samples per gradient pass.

    Returns:
        The adversarial inputs, same shape and dtype as ``x``.
    """
    eng = _engine(model, engine)
    lab = np.asarray(labels)
    g = _loss_grad(eng, x, lab, batch_size)
    return _clip(x + epsilon * np.sign(g), clip).astype(x.dtype)


def pgd(
    model: Model | Any,
    x: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    epsilon: float = 0.1,
    *,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    seed: int = 0,
    clip: Box = (0.0, 1.0),
    engine: GradientEngine | None = None,
    batch_size: int | None = None,
) -> np.ndarray:
    """Projected gradient descent in the L-infinity ball (Madry et al., 2018), with a random start.

    Args:
        model: a Model, path or ModelProto.
        x: inputs ``[N, ...]``.
        labels: true class per sample.
        epsilon: the L-infinity budget.
        steps: gradient-sign steps.
        step_size: size of each step (default ``2.5 * epsilon / steps``).
        random_start: start from a uniform point of the ball (seeded by ``seed``).
        seed: random seed of the start.
        clip: the valid input box (None: unbounded).
        engine: a prepared ``GradientEngine(model, "loss")`` to reuse.
        batch_size: samples per gradient pass.

    Returns:
        The adversarial inputs, within ``epsilon`` of ``x`` and inside ``clip``.
    """
    if steps < 1:
        raise DataError("pgd needs steps >= 1")
    eng = _engine(model, engine)
    lab = np.asarray(labels)
    alpha = step_size if step_size is not None else 2.5 * epsilon / steps
    rng = np.random.default_rng(seed)
    adv = x + rng.uniform(-epsilon, epsilon, x.shape) if random_start else x.copy()
    adv = _clip(adv, clip).astype(x.dtype)
    for _ in range(steps):
        g = _loss_grad(eng, adv, lab, batch_size)
        adv = np.clip(adv + alpha * np.sign(g), x - epsilon, x + epsilon)
        adv = _clip(adv, clip).astype(x.dtype)
    return adv


def accuracy(model: Model | Any, x: np.ndarray, labels: Sequence[int] | np.ndarray, batch_size: int = 256) -> float:
    """Top-1 accuracy of a classifier (argmax of its first output) on ``x``."""
    m = model if isinstance(model, Model) else load(model)
    rec = Recorder(m, None, "auto")
    name = m.input_names[0]
    preds = [
        out[m.output_names[0]].reshape(n, -1).argmax(axis=1) for n, _, out in rec.iter_batches({name: x}, batch_size)
    ]
    return float((np.concatenate(preds) == np.asarray(labels)).mean())
