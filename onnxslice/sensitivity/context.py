"""The state one sensitivity run shares between criteria: model, calibration data, target, options.

A :class:`Context` is built once per call of :func:`~onnxslice.sensitivity.sensitivity` (or by hand,
to evaluate several criteria on the same data); it opens onnxruntime sessions and the gradient engine
lazily and keeps them, so criteria that compose (SmoothGrad over a gradient criterion) reuse them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnxslice.console import progress_bar
from onnxslice.errors import DataError
from onnxslice.grad import GradientEngine
from onnxslice.model import Layer, Model
from onnxslice.record import Device, Recorder
from onnxslice.sensitivity.common import Calibration, Target, calibration, logits_value, model_layers
from onnxslice.sensitivity.cut import Suffix
from onnxslice.sensitivity.stacked import stack_model, stack_problem, stack_subject
from onnxslice.targets import BoundTarget

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
    _reference: np.ndarray | None = field(default=None, repr=False)
    _stacked: dict[tuple[int, bool], Any] = field(default_factory=dict, repr=False)
    _subject: dict[tuple[str, int], Any] = field(default_factory=dict, repr=False)
    _sample_bytes: float | None = field(default=None, repr=False)

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
        if self.cal is None:
            raise DataError(f"criterion '{who}' needs calibration data (--data)")
        return self.cal

    def option(self, name: str, default: Any) -> Any:
        """A criterion option (``options[name]``) or its default."""
        return self.options.get(name, default)

    # -- the target ----------------------------------------------------------------------------
    @property
    def output(self) -> str | None:
        """The model output the target reads (``options["output"]``; None: the first)."""
        return self.options.get("output")

    @property
    def bound(self) -> BoundTarget:
        """The target bound to the model output (:mod:`onnxslice.targets`)."""
        return BoundTarget(self.model, self.target, self.output)

    @property
    def value(self) -> str:
        """The value ``f`` reads (the logits; see :func:`~onnxslice.sensitivity.common.logits_value`)."""
        return logits_value(self.model, self.target, self.output)

    def reference(self) -> np.ndarray:
        """The unperturbed value ``f`` reads, for every calibration sample (one full run, cached).

        Batches are joined along the value's sample axis (axis 1 of a time-first ``[T, N, C]`` output)."""
        if self._reference is None:
            cal = self.need_data("target")
            rec = Recorder(self.model, [self.value], self.device)
            parts = [(len(next(iter(b.values()))), rec.run(b, validated=True)[self.value])
                     for _, b in cal.batches(self.batch_size)]
            axis = self.bound.batch_axis(parts[0][1], parts[0][0])
            self._reference = np.concatenate([p for _, p in parts], axis=axis)
        return self._reference

    def target_fn(self) -> Target:
        """The target ``f`` with its per-sample class fixed by the unperturbed model."""
        if self._target is None:
            cal = self.need_data("target")
            ref = self.reference()
            n = len(cal)
            labels = cal.labels if self.target == "loss" else None
            t = Target(self.target, self.value, ref, labels, bound=self.bound)
            if t.choice is not None and len(t.choice) != n:
                t.choice = self.bound.choose(ref, n, labels)
            self._target = t
        return self._target

    # -- black-box evaluation through suffix sessions --------------------------------------------
    def suffix(self, layer: Layer) -> Suffix:
        """The (cached) suffix below ``layer`` with its weight swappable."""
        if layer.name not in self._suffixes:
            self._suffixes[layer.name] = Suffix.build(
                self.model, layer.name, "weights", [layer.weight], self.device, extra_outputs=[self.value]
            )
        return self._suffixes[layer.name]

    def batches(self) -> list[tuple[slice, dict[str, np.ndarray], dict[str, np.ndarray]]]:
        """Per batch: ``(rows, cache, reference values)``; the cache holds every suffix boundary value.

        Recorded once (one session of the full model) and kept for every criterion of this context.
        """
        if self._batches is None:
            cal = self.need_data("black-box")
            for layer in self.layers:
                self.suffix(layer)
            needed = {b for s in self._suffixes.values() for b in s.boundary} | {self.value}
            base = Recorder(self.model, sorted(needed - set(self.model.input_names)), self.device)
            self._batches = []
            for rows, batch in cal.batches(self.batch_size):
                ref = base.run(batch, validated=True)
                self._batches.append((rows, {**batch, **ref}, ref))
        return self._batches

    def f_suffix(self, layer: Layer, weight: np.ndarray) -> np.ndarray:
        """``f`` per calibration sample with ``layer``'s weight replaced (suffix runs only)."""
        target = self.target_fn()
        suf = self.suffix(layer)
        parts = []
        for rows, cache, ref in self.batches():
            out = suf.run(cache, weights={layer.weight: weight}) if suf.outputs else {}
            parts.append(target({**ref, **out}, rows))
        return np.concatenate(parts)

    # -- gradients (onnxslice.grad) ----------------------------------------------------------------
    def engine(self) -> Any:
        """The gradient engine over the layers' weights (all swappable), built once.

        Raises:
            UnsupportedOpError: an op on the gradient path has no VJP rule and ``options["exact"]`` is
                true (otherwise the engine falls back to finite differences for that node, with a warning).
        """
        if self._engine is None:
            names = [x.weight for x in self.layers]
            engine_target = self.target
            self._engine = GradientEngine(
                self.model, engine_target, weights=names, inputs=False, swappable=names, device=self.device,
                output=self.output,
                exact=bool(self.option("exact", False)),
            )
        return self._engine

    def grad_chunks(
        self, weights: Mapping[str, np.ndarray] | None = None, per_sample: bool = False, chunk: int | None = None
    ) -> Iterator[tuple[int, Any]]:
        """``(samples, Gradients)`` per chunk of the calibration set at ``weights`` (class fixed)."""
        cal = self.need_data("gradient")
        eng = self.engine()
        for rows, batch in cal.batches(chunk or self.gradient_batch()):
            cot = self._cotangent_rows(rows)
            labels = cal.labels[rows] if cal.labels is not None and self.target == "loss" else None
            g = eng(batch, labels=labels, weights=weights, per_sample=per_sample, cotangent=cot)
            yield rows.stop - rows.start, g

    def _cotangent_rows(self, rows: slice) -> np.ndarray | None:
        if self.target in ("loss", "output-norm") or self.value != self.bound.output:
            return None
        t = self.target_fn()
        ref = self.reference()
        axis = self.bound.batch_axis(ref, len(self.need_data("target")))
        return t.cotangent(np.take(ref, np.arange(rows.start, rows.stop), axis=axis), rows)

    def mean_grads(self, weights: Mapping[str, np.ndarray] | None = None) -> tuple[dict[str, np.ndarray], float]:
        """``E_x[df/dw]`` per layer weight at ``weights`` and ``E_x[f]``."""
        cal = self.need_data("gradient")
        total: dict[str, np.ndarray] = {}
        fsum = 0.0
        for _, g in self.grad_chunks(weights):
            for x in self.layers:
                gw = np.asarray(g.weights[x.weight], np.float64)
                total[x.weight] = total[x.weight] + gw if x.weight in total else gw
            fsum += float(np.sum(g.target_values))
        n = len(cal)
        return {k: v / n for k, v in total.items()}, fsum / n

    # -- many weight settings per engine call (stacked.py) -----------------------------------------
    def stack_problem(self, structural: bool = False) -> str | None:
        """Why points cannot be stacked along the batch here (None when they can).

        ``structural``: leave out nodes that combine a batch's samples, which stop only the stacking of
        points below them (:func:`~onnxslice.sensitivity.stacked.stack_problem`).
        """
        if not self.option("stack", True):
            return "stacking is turned off (option stack=False)"
        why = stack_problem(self.model, self.layers, structural)
        if why is None:
            ref = self.reference()
            if self.bound.batch_axis(ref, len(self.need_data("target"))) != 0:
                why = "the target's samples are not on axis 0"
        return why

    def _bytes_per_sample(self) -> float:
        """Twice the bytes of one sample's recorded forward values (measured once on one sample): the values
        and the cotangents of a gradient call, or the values of a stacked graph, which also records each
        layer's split input and its copies' outputs."""
        if self._sample_bytes is None:
            cal = self.need_data("gradient")
            _, one = cal.batches(1)[0]
            vals = self.engine().recorder.run(one, validated=True)
            self._sample_bytes = 2.0 * sum(np.asarray(v).nbytes for v in vals.values()) + 1.0
        return self._sample_bytes

    def gradient_batch(self) -> int:
        """Samples per gradient call: ``batch_size``, lowered so that a call's forward values and cotangents
        fit ``options["batch_mb"]`` (default 1024 MB). EfficientNet-Lite0 records about 130 MB per 224x224
        image: 64 images in one call peaked at 9.6 GB and ran slower than batches of 8 (2.3 GB). The
        gradients are sums over batches, so the batch changes only the order of the float additions."""
        n = self.batch_size or len(self.need_data("gradient"))
        budget = float(self.option("batch_mb", 1024)) * 2**20
        return max(1, min(n, int(budget // self._bytes_per_sample())))

    def _stack_size(self, points: int, chunk: int, per_sample: bool, force: bool = False) -> int:
        """Points per engine call: as many as the memory budget ``stack_mb`` (default 1024) allows.

        Points that change every layer (noise draws, the global path) stack only with
        ``options["stack_all"]``: measured on the reference models (``benchmarks/bench_grad.py
        --criteria``), one call per point was as fast or faster (SmoothGrad 1.1-2.5x faster unstacked on
        LeNet-5, ResNet-8 and the Keras CNN). Points of one layer's path (``force``) always stack.
        Per-sample gradients stack only with ``options["stack_per_sample"]`` too (the per-sample gradient
        arrays of a call grow with the points).
        """
        if points < 2 or (not force and (not self.option("stack_all", False) or self.stack_problem() is not None)):
            return 1
        if per_sample and not self.option("stack_per_sample", False):
            return 1
        per = self._bytes_per_sample()
        if per_sample:
            per += 12.0 * sum(self.model.initializer(x.weight).size for x in self.layers)
        budget = float(self.option("stack_mb", 1024)) * 2**20
        return max(1, min(points, int(self.option("stack_max", 64)), int(budget // (chunk * per))))

    def _stacked_engine(self, groups: int, per_sample: bool) -> tuple[Any, Any]:
        """``(engine, Stacked)`` for ``groups`` points per call (built once per size and kind)."""
        key = (groups, per_sample)
        if key not in self._stacked:
            batched = not per_sample and bool(self.option("stack_batched", True))
            st = stack_model(self.model, self.layers, groups, batch=batched)
            names = st.names([x.weight for x in self.layers])
            self._stacked[key] = (GradientEngine(
                st.model, self.target, weights=names, inputs=False, swappable=names, device=self.device,
                output=self.output, exact=bool(self.option("exact", False)), parts=False,
            ), st)
        return self._stacked[key]

    def _subject_engine(self, layer: Layer, groups: int) -> tuple[Any, Any] | None:
        """``(engine, Stacked)`` for ``groups`` settings of ``layer``'s weight alone (None: not possible)."""
        key = (layer.name, groups)
        if key not in self._subject:
            for other in [k for k in self._subject if k[0] != layer.name]:
                del self._subject[other]  # one layer at a time: engines of earlier layers are not needed again
            st = stack_subject(self.model, layer, groups, [self.value, *self.bound_outputs()])
            if isinstance(st, str):
                self._subject[key] = None
            else:
                names = st.names([layer.weight])
                self._subject[key] = (GradientEngine(
                    st.model, self.target, weights=names, inputs=False, swappable=names, device=self.device,
                    output=self.output, exact=bool(self.option("exact", False)), parts=False,
                ), st)
        return self._subject[key]

    def bound_outputs(self) -> list[str]:
        """The model output the target reads (the first when ``options["output"]`` is unset)."""
        return [self.output or self.model.output_names[0]]

    def grad_chunks_many(
        self, points: Sequence[Mapping[str, np.ndarray] | None], per_sample: bool = False,
        chunk: int | None = None, desc: str = "", subjects: Sequence[Layer | None] | None = None,
    ) -> Iterator[tuple[int, int, dict[str, np.ndarray], np.ndarray]]:
        """``(point, samples, weight gradients, target values)`` per chunk of the calibration set, per point.

        The same numbers as :meth:`grad_chunks` at each point, but several points share one engine call
        (stacked along the batch axis, see :mod:`~onnxslice.sensitivity.stacked`) as the memory budget
        allows. ``subjects[i]``, when given, is the one layer whose weight point ``i`` changes (points of
        one layer consecutive): those points then run only the graph below that layer and give only its
        gradient (keys of the yielded gradients: the layers' weight names, or the subject's alone). A
        progress bar with an ETA counts points (``desc`` names the work).
        """
        self.need_data("gradient")  # a clear error without data, before any work
        size = chunk or self.gradient_batch()
        runs: list[tuple[int, int, Layer | None]] = []
        for i in range(len(points)):
            subj = subjects[i] if subjects is not None else None
            if runs and runs[-1][2] is subj:
                runs[-1] = (runs[-1][0], i + 1, subj)
            else:
                runs.append((i, i + 1, subj))
        with progress_bar(len(points), desc or "gradients", enabled=None if len(points) > 1 else False) as advance:
            for r0, r1, subj in runs:
                yield from self._run_points(points, r0, r1, subj, per_sample, size, chunk, advance)

    def _run_points(
        self, points: Sequence[Mapping[str, np.ndarray] | None], r0: int, r1: int, subject: Layer | None,
        per_sample: bool, size: int, chunk: int | None, advance: Any,
    ) -> Iterator[tuple[int, int, dict[str, np.ndarray], np.ndarray]]:
        cal = self.need_data("gradient")
        count = r1 - r0
        sub = subject is not None and self.option("stack", True) and self.stack_problem(structural=True) is None
        groups = self._stack_size(count, min(size, len(cal)), per_sample, force=sub)
        blocks = max(1, -(-count // groups))
        bounds = r0 + np.linspace(0, count, blocks + 1).round().astype(int)  # near-equal blocks: <= 2 engines
        for b0, b1 in itertools.pairwise(bounds):
            k = int(b1 - b0)
            built = self._subject_engine(subject, k) if sub and subject is not None else None
            if built is None and (k == 1 or self.stack_problem() is not None):  # one call per point
                for i in range(int(b0), int(b1)):
                    for n, g in self.grad_chunks(points[i], per_sample, chunk):
                        yield i, n, {x.weight: g.weights[x.weight] for x in self.layers}, g.target_values
                    advance("")
                continue
            eng, st = built if built is not None else self._stacked_engine(k, per_sample)
            names = [subject.weight] if built is not None and subject is not None else [x.weight for x in self.layers]
            values = []
            for j in range(k):
                point = points[b0 + j] or {}  # made once (Points may draw it on demand)
                values.append({x: np.asarray(point.get(x, self.model.initializer(x))) for x in names})
            w = st.feed(names, values)
            for rows, batch in cal.batches(size):
                n = rows.stop - rows.start
                feed = {name: np.concatenate([v] * k) for name, v in batch.items()}
                cot = self._cotangent_rows(rows)
                labels = cal.labels[rows] if cal.labels is not None and self.target == "loss" else None
                g = eng(feed, labels=None if labels is None else np.concatenate([labels] * k), weights=w,
                        per_sample=per_sample, cotangent=None if cot is None else np.concatenate([cot] * k))
                for j in range(k):
                    rows_j = slice(j * n, (j + 1) * n)
                    yield (int(b0) + j, n,
                           {x: st.grad(g.weights, x, j, rows_j if per_sample else None) for x in names},
                           g.target_values[rows_j])
            for _ in range(k):
                advance("")

    def mean_grads_many(
        self, points: Sequence[Mapping[str, np.ndarray] | None], desc: str = "",
        subjects: Sequence[Layer | None] | None = None,
    ) -> list[tuple[dict[str, np.ndarray], float]]:
        """:meth:`mean_grads` at every point, several points per engine call (``subjects``: see
        :meth:`grad_chunks_many`; a point with a subject then holds that layer's gradient only)."""
        cal = self.need_data("gradient")
        totals: list[dict[str, np.ndarray]] = [{} for _ in points]
        fsums = [0.0] * len(points)
        for i, _, gw, f in self.grad_chunks_many(points, desc=desc, subjects=subjects):
            total = totals[i]
            for name, arr in gw.items():
                v = np.asarray(arr, np.float64)
                total[name] = total[name] + v if name in total else v
            fsums[i] += float(np.sum(f))
        n = len(cal)
        return [({k: v / n for k, v in t.items()}, fs / n) for t, fs in zip(totals, fsums, strict=True)]

    def rng(self, *key: int) -> np.random.Generator:
        """A generator for ``(seed, *key)``."""
        return np.random.default_rng([self.seed, *key])

    def iter_layers(self) -> Iterator[tuple[int, Layer]]:
        """``(index, layer)`` in model order."""
        yield from enumerate(self.layers)
