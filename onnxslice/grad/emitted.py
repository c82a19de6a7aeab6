"""Running a :class:`~onnxslice.grad.GradientEngine` through its emitted gradient graph.

Used with ``device="cuda"`` and, on the CPU, with ``executor="graph"`` (or ``"auto"`` where it was
measured faster). With ``device="cuda"`` the whole backward pass runs as one onnxruntime session on the CUDA provider:
the engine emits its gradient graph (:func:`~onnxslice.grad.emit.emit_gradient_model`) once per batch
shape, traced on the CPU, and feeds each batch to it. Where onnxruntime cannot use CUDA the session
creation fails with the one-line error of :func:`onnxslice.record.make_session` (nothing falls back
silently to the CPU). The providers the session really uses are ``session.get_providers()``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from onnxslice.errors import DataError, OnnxSliceError
from onnxslice.opsets.vjp.kernels import split_samples, threads
from onnxslice.record import make_session, runtime_proto
from onnxslice.session import trim_heap

from .emit import emit_gradient_model, fed_weights, grad_output_name
from .result import Gradients

if TYPE_CHECKING:
    from .engine import GradientEngine

__all__ = ["FED_MIN", "GRAPH_PREPACK", "GRAPH_SPLIT_MIN_MACS", "GRAPH_SPLIT_MIN_SAMPLES", "GRAPH_TOL",
           "EmittedRunner", "cpu_session", "graph_disagreement"]

#: ``executor="auto"`` keeps the graph only where it agrees with the eager engine within this (relative to
#: the largest gradient of the kind, as ``tests/grad/test_grad_emit.py`` measures it).
GRAPH_TOL = 2e-5


def graph_disagreement(a: Gradients, b: Gradients) -> float:
    """Largest ``max |a - b|`` over ``max |b|`` of all gradients of the same kind (weights, inputs)."""
    worst = 0.0
    for ga, gb in ((a.weights, b.weights), (a.inputs, b.inputs)):
        scale = max((float(np.max(np.abs(v))) for v in gb.values() if v.size), default=0.0) or 1.0
        for k, v in gb.items():
            if v.size:
                worst = max(worst, float(np.max(np.abs(ga[k] - v))) / scale)
    return worst


#: Whether the CPU session of a gradient graph lets onnxruntime prepack its constant weights. Off: its
#: ConvTranspose nodes (the input cotangents) read the model's filters instead of holding a transposed copy
#: of them: on the CIFAR ResNet-18 36-50 MiB less peak memory (1.33x -> about 1.0x torch's at batch 8) for
#: 6% more time per call at batch 8 and 32 (1 thread, the two sessions round-robin in one process).
GRAPH_PREPACK = False

#: Float weights of at least this many elements are handed to the CPU session from the model's own arrays
#: (:func:`~onnxslice.grad.emit.fed_weights`) rather than copied into the gradient graph's proto.
FED_MIN = 4096


#: On the CPU with several threads, a call runs as one part per thread, each a single-threaded run of the
#: graph traced at the part's batch, all at once (data parallel), when each part has at least this many
#: samples and :data:`GRAPH_SPLIT_MIN_MACS` of forward work. Two threads, parts against one two-threaded
#: run, paired in one process: CIFAR ResNet-18 b32 (parts of 16, 8.9 G multiply-adds each) 0.87-0.90x the
#: time, EfficientNet-Lite0 b32 (16, 6.2 G) 0.83x; not split: ResNet-18 b16 (parts of 8: 0.99x), LeNet-5
#: b32 (16 samples but 6.7 M: 1.46x, the hand-off costs more than the work).
GRAPH_SPLIT_MIN_SAMPLES = 16
GRAPH_SPLIT_MIN_MACS = 1 << 32


def cpu_session(proto: onnx.ModelProto, fed: Mapping[str, np.ndarray] | None = None, *, fused: bool = False,
                threads: int | None = None) -> Any:
    """A CPU session of a gradient graph, optimized up to onnxruntime's *extended* level (*all* when ``fused``).

    ``fed``: arrays of the weights the proto leaves out (external-data stubs), given to onnxruntime as
    in-memory external initializers; the session keeps references to them.

    The level follows the engine's recording, so that the graph decides its gates on the forward the
    eager engine records: the *all* level adds the NCHWc layout transformations, whose convolution
    kernels round the forward differently (on EfficientNet-Lite0 a Clip kink then flips and the input
    gradient moves by 1.2e-2 of its largest value against an unoptimized recording). ``fused``: the
    engine records at the *all* level (fused chains, ``GradientEngine.recording_optimized``). ``threads``:
    intra-op threads (default: as every session, ``ONNXSLICE_THREADS`` or onnxruntime's choice).
    """
    try:  # mem_pattern off: peak memory of the runs ResNet-18 b8 +100 MiB instead of +159, same speed;
        # prepack off: see GRAPH_PREPACK
        return make_session(proto, "cpu", optimize=True if fused else "extended", external=fed, mem_pattern=False,
                            prepack=GRAPH_PREPACK, threads=threads)
    except OnnxSliceError as e:
        raise OnnxSliceError(f"onnxruntime cannot run the emitted gradient graph: {e.__cause__ or e}") from e


class EmittedRunner:
    """The emitted gradient graphs of one engine, one session per batch shape, on ``engine.device``."""

    def __init__(self, engine: GradientEngine) -> None:
        self.engine = engine
        self._sessions: dict[tuple[Any, ...], Any] = {}
        self._norms: dict[str, float] | None = None

    def session(self, feed: Mapping[str, np.ndarray], single: bool = False) -> Any:
        """The session of the gradient graph traced at ``feed``'s shapes (built on first use); ``single``:
        a single-threaded one, for the parts of a data-parallel call (:meth:`parts`)."""
        key = (tuple(sorted((k, np.shape(v)) for k, v in feed.items())), single)
        if key not in self._sessions:
            e = self.engine
            if e.device == "cuda":
                proto = emit_gradient_model(e, feed, trace_device="cpu")
                self._sessions[key] = make_session(runtime_proto(proto), "cuda", optimize=True)
            else:
                proto = emit_gradient_model(e, feed, trace_device="cpu", fed_min=FED_MIN)
                if e.executor == "graph":  # the recording session only traced the graph: let it go before
                    e.release_recorder()  # the graph's session and its arena take its place
                    trim_heap()
                self._sessions[key] = cpu_session(runtime_proto(proto), fed_weights(proto, e.model),
                                                  fused=e.recording_optimized, threads=1 if single else None)
            del proto
            trim_heap()  # the tracing's buffers go back before the graph's first run grows its arena
        return self._sessions[key]

    def parts(self, n: int, batch_size: int | None, feed: Mapping[str, np.ndarray]) -> int:
        """How many data-parallel parts a CPU call on ``n`` samples runs as: one per thread
        (:func:`~onnxslice.opsets.vjp.kernels.threads`) when no smaller ``batch_size`` is asked, the samples
        split evenly and each part has at least :data:`GRAPH_SPLIT_MIN_SAMPLES` samples and
        :data:`GRAPH_SPLIT_MIN_MACS` of forward work, their extra weight gradients fit
        (:meth:`~onnxslice.grad.GradientEngine.parts_fit`), and the model's samples are independent (checked once
        on ``feed``, :meth:`~onnxslice.grad.GradientEngine.samples_independent`); else 1."""
        if self.engine.device == "cuda" or (batch_size is not None and batch_size < n):
            return 1
        p = threads()
        if p < 2 or n % p or n // p < GRAPH_SPLIT_MIN_SAMPLES:
            return 1
        if self.engine.forward_macs() * (n // p) < GRAPH_SPLIT_MIN_MACS or not self.engine.parts_fit(n, p):
            return 1
        return p if self.engine.samples_independent(feed) else 1

    def providers(self, feed: Mapping[str, np.ndarray]) -> list[str]:
        """``get_providers()`` of the session serving ``feed``'s shapes."""
        return list(self.session(feed).get_providers())

    def __call__(
        self, feed: Mapping[str, np.ndarray], labels: np.ndarray | None, batch_size: int | None
    ) -> Gradients:
        """Gradients of validated ``feed`` (batches of ``batch_size``; the last may be smaller)."""
        e = self.engine
        n = len(next(iter(feed.values()))) if feed else 1
        if e.target.kind == "loss" and labels is None:
            raise DataError("target 'loss' needs labels (class per sample)")
        parts = self.parts(n, batch_size, feed)
        bs = n // parts if parts > 1 else batch_size or n
        wsum: dict[str, np.ndarray] = {}
        iparts: dict[str, list[np.ndarray]] = {k: [] for k in e.input_names}
        fparts: list[np.ndarray] = []

        def run(s0: int) -> dict[str, np.ndarray]:
            chunk = {k: np.ascontiguousarray(v[s0 : s0 + bs]) for k, v in feed.items()}
            sess = self.session(chunk, single=parts > 1)
            run_feed = dict(chunk)
            if e.target.kind == "loss":
                assert labels is not None
                run_feed["labels"] = np.asarray(labels[s0 : s0 + bs], dtype=np.int64)
            names = [o.name for o in sess.get_outputs()]
            return dict(zip(names, sess.run(None, run_feed), strict=True))

        def add(res: dict[str, np.ndarray]) -> None:
            fparts.append(res["target"])
            for w in e.weight_names:
                v = res[grad_output_name(w)]
                if w in wsum:
                    wsum[w] += v  # in place: the session's outputs are fresh arrays of ours
                else:
                    wsum[w] = v
            for k in e.input_names:
                iparts[k].append(res[grad_output_name(k)])

        split = None
        if parts > 1:  # one part per thread, at once, on one session built before they run
            self.session({k: v[:bs] for k, v in feed.items()}, single=True)
            split = split_samples(n, lambda lo, _hi: run(lo), 0, min_part=0)
        for res in split if split is not None else (run(s0) for s0 in range(0, n, bs)):
            add(res)
        m = e.model
        if self._norms is None:
            self._norms = {k: float(np.linalg.norm(m.initializer(k))) for k in e.weight_names}
        norms = dict(self._norms)
        return Gradients(
            wsum,
            {k: v[0] if len(v) == 1 else np.concatenate(v) for k, v in iparts.items()},
            fparts[0] if len(fparts) == 1 else np.concatenate(fparts),
            e.target.spec,
            False,
            dict(e.layers),
            norms,
            {"fingerprint": m.fingerprint, "weights": m.weights_fingerprint, "value": e.value, "output": e.output,
             "backend": "emitted gradient graph"},
        )
