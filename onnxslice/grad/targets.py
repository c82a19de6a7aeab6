"""Scalar targets whose gradient is taken: ``pred``, ``class:K``, ``loss``, ``output-norm``, a cotangent.

A target turns the recorded value it reads (the logits, or the model output) into one scalar per
sample and the cotangent that seeds the reverse walk. ``pred``, ``class:K`` and ``loss`` read the
logits: when the chosen output is computed by Softmax or LogSoftmax (through Identity nodes), they
read that op's input, so ``pred`` is the predicted class's logit and ``loss`` the usual softmax
cross-entropy. ``output-norm`` and an explicit cotangent read the output itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxslice.errors import DataError

__all__ = ["TARGET_KINDS", "Target", "parse_target"]

TARGET_KINDS = ("pred", "class", "loss", "output-norm", "cotangent")


@dataclass(frozen=True)
class Target:
    """A parsed target spec.

    Attributes:
        kind: one of :data:`TARGET_KINDS`.
        cls: the class index for ``class:K``.
    """

    kind: str
    cls: int | None = None

    @property
    def spec(self) -> str:
        """The spec string (``class:3``, ``pred``, ...)."""
        return f"class:{self.cls}" if self.kind == "class" else self.kind

    @property
    def reads_logits(self) -> bool:
        """Whether the target reads the logits (the Softmax input) rather than the output itself."""
        return self.kind in ("pred", "class", "loss")

    def seed(
        self,
        value: np.ndarray,
        *,
        labels: np.ndarray | None = None,
        cotangent: np.ndarray | None = None,
        name: str = "",
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per-sample target values ``[N]`` and the cotangent of ``value`` that seeds the backward walk.

        Raises:
            DataError: a class out of range, missing or bad labels, a cotangent of the wrong shape,
                logits that are not ``[N, classes]``.
        """
        if self.kind == "cotangent":
            if cotangent is None:
                raise DataError("target 'cotangent' needs cotangent=<array shaped like the output>")
            if cotangent.shape != value.shape:
                raise DataError(
                    f"the cotangent for output '{name}' has shape {list(cotangent.shape)}, the output has "
                    f"{list(value.shape)}"
                )
            c = cotangent.astype(value.dtype, copy=False)
            return (c * value).reshape(len(value), -1).sum(axis=1), c
        if self.kind == "output-norm":
            flat = value.reshape(len(value), -1).astype(np.float64)
            norm = np.sqrt((flat * flat).sum(axis=1))
            safe = np.where(norm > 0, norm, 1.0)
            return norm, (flat / safe[:, None]).reshape(value.shape).astype(value.dtype)
        if value.ndim != 2:
            raise DataError(
                f"target '{self.spec}' needs logits shaped [samples, classes]; '{name}' has shape "
                f"{list(value.shape)}. Use target='output-norm' or pass cotangent=."
            )
        n, classes = value.shape
        onehot = np.zeros_like(value)
        if self.kind == "pred":
            k = value.argmax(axis=1)
        elif self.kind == "class":
            assert self.cls is not None
            if not 0 <= self.cls < classes:
                raise DataError(
                    f"target class {self.cls} is out of range: '{name}' has {classes} classes (0..{classes - 1})"
                )
            k = np.full(n, self.cls)
        else:
            k = _check_labels(labels, n, classes)
        onehot[np.arange(n), k] = 1
        if self.kind != "loss":
            return value[np.arange(n), k], onehot
        z = value.astype(np.float64)
        zmax = z.max(axis=1, keepdims=True)
        lse = np.log(np.exp(z - zmax).sum(axis=1, keepdims=True)) + zmax
        prob = np.exp(z - lse)
        return (lse[:, 0] - z[np.arange(n), k]), (prob - onehot).astype(value.dtype)


def _check_labels(labels: np.ndarray | None, n: int, classes: int) -> np.ndarray:
    if labels is None:
        raise DataError("target 'loss' needs labels= (one integer class per sample)")
    lab = np.asarray(labels)
    if lab.shape != (n,):
        raise DataError(f"labels must have shape [{n}] (one per sample), got {list(lab.shape)}")
    if not np.issubdtype(lab.dtype, np.integer):
        if not np.all(np.mod(lab, 1) == 0):
            raise DataError("labels must be integer class indices")
        lab = lab.astype(np.int64)
    if lab.min(initial=0) < 0 or lab.max(initial=0) >= classes:
        raise DataError(f"labels must lie in 0..{classes - 1}; got values {lab.min()}..{lab.max()}")
    return lab


def parse_target(spec: str | Target) -> Target:
    """Parse ``pred``, ``class:K``, ``loss``, ``output-norm`` or ``cotangent``.

    Raises:
        DataError: an unknown spec or a class that is not an integer.
    """
    if isinstance(spec, Target):
        return spec
    s = str(spec).strip()
    if s.startswith("class:"):
        try:
            return Target("class", int(s[6:]))
        except ValueError:
            raise DataError(f"target '{s}': the class after 'class:' must be an integer") from None
    if s in ("pred", "loss", "output-norm", "cotangent"):
        return Target(s)
    raise DataError(f"unknown target '{s}'; use pred, class:K, loss, output-norm, or pass cotangent=")
