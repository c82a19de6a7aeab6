"""The state one sensitivity run shares between criteria: model, calibration data, target, options.

A :class:`Context` is built once per call of :func:`~onnxslice.sensitivity.sensitivity` (or by hand,
to evaluate several criteria on the same data); it opens onnxruntime sessions and the gradient engine
lazily and keeps them, so criteria that compose (SmoothGrad over a gradient criterion) reuse them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnxslice.model import Layer, Model
from onnxslice.record import Device, Recorder
from onnxslice.sensitivity.common import Calibration, Target, calibration, model_layers
from onnxslice.sensitivity.cut import Suffix

__all__ = ["Context"]


@dataclass
class Context:
    """Everything a criterion reads.

    Attributes:
        model: the model.
        cal: calibration inputs (None for data-free criteria).
        target: the target spec (``pred``, ``class:K``, ``output-norm``, ``loss``).
        layers: the layers to score, in model order.
        steps: path steps (IG, GIG, IDGI).
        noise_samples: noise draws (SmoothGrad, VarGrad, fd's noise mode).
        seed: base seed.
        batch_size: samples per run.
        device: onnxruntime device.
        options: criterion options (``path``, ``sigma``, ``masks``, ``h``, ...).
    """

    model: Model
    cal: Calibration | None
    target: str
    layers: list[Layer]
    steps: int = 16
    noise_samples: int = 16
    seed: int = 0
    batch_size: int | None = 64
    device: Device = "cpu"
    options: dict[str, Any] = field(default_factory=dict)
    _suffixes: dict[str, Suffix] = field(default_factory=dict, repr=False)
    _base: Recorder | None = field(default=None, repr=False)
    _batches: list[tuple[slice, dict[str, np.ndarray], dict[str, np.ndarray]]] | None = field(default=None, repr=False)
    _target: Target | None = field(default=None, repr=False)
    _engine: Any = field(default=None, repr=False)

    @classmethod
    def build(
        cls, model: Model, data: Any, target: str = "pred", *, samples: int | None = 256,
        layers: list[str] | None = None, **kw: Any,
    ) -> Context:
        """Prepare a context (data may be None for data-free criteria)."""
        chosen = model_layers(model, layers)
        cal = calibration(model, data, samples) if data is not None else None
        return cls(model, cal, target, chosen, **kw)

    def need_data(self, who: str) -> Calibration:
        """The calibration data, or a DataError saying that ``who`` needs some."""
        from onnxslice.errors import DataError

        if self.cal is None:
            raise DataError(f"criterion '{who}' needs calibration data (--data)")
        return self.cal

    def option(self, name: str, default: Any) -> Any:
        """A criterion option (``options[name]``) or its default."""
        return self.options.get(name, default)

    # -- black-box evaluation through suffix sessions --------------------------------------------
    def suffix(self, layer: Layer) -> Suffix:
        """The (cached) suffix below ``layer`` with its weight swappable."""
        if layer.name not in self._suffixes:
            self._suffixes[layer.name] = Suffix.build(self.model, layer.name, "weights", [layer.weight], self.device)
        return self._suffixes[layer.name]

    def batches(self) -> list[tuple[slice, dict[str, np.ndarray], dict[str, np.ndarray]]]:
        """Per batch: ``(rows, cache, reference outputs)``; the cache holds every suffix boundary value.

        Recorded once (one session of the full model) and kept for every criterion of this context.
        """
        if self._batches is None:
            cal = self.need_data("black-box")
            for layer in self.layers:
                self.suffix(layer)
            needed = sorted({b for s in self._suffixes.values() for b in s.boundary} - set(self.model.input_names))
            self._base = Recorder(self.model, needed, self.device)
            self._batches = []
            for rows, batch in cal.batches(self.batch_size):
                ref = self._base.run(batch, validated=True)
                self._batches.append((rows, {**batch, **ref}, ref))
        return self._batches

    def target_fn(self) -> Target:
        """The target ``f`` with its per-sample class fixed by the unperturbed model."""
        if self._target is None:
            cal = self.need_data("target")
            first = self.model.output_names[0]
            ref = np.concatenate([r[first] for _, _, r in self.batches()]) if self.cal else None
            assert ref is not None
            self._target = Target(self.target, first, np.asarray(ref), cal.labels)
        return self._target

    def f_suffix(self, layer: Layer, weight: np.ndarray) -> np.ndarray:
        """``f`` per calibration sample with ``layer``'s weight replaced (suffix runs only)."""
        target = self.target_fn()
        suf = self.suffix(layer)
        parts = []
        for rows, cache, ref in self.batches():
            out = suf.run(cache, weights={layer.weight: weight}) if suf.outputs else {}
            parts.append(target({**ref, **out}, rows))
        return np.concatenate(parts)

    def f_reference(self) -> np.ndarray:
        """``f`` per calibration sample for the unperturbed model."""
        target = self.target_fn()
        return np.concatenate([target(ref, rows) for rows, _, ref in self.batches()])

    def rng(self, *key: int) -> np.random.Generator:
        """A generator for ``(seed, *key)``."""
        return np.random.default_rng([self.seed, *key])

    def iter_layers(self) -> Iterator[tuple[int, Layer]]:
        """``(index, layer)`` in model order."""
        yield from enumerate(self.layers)
