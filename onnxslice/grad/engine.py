"""Reverse-mode differentiation over the ONNX graph: :class:`GradientEngine` and :func:`gradients`.

The engine is built once per (model, target, weights) and called many times. At build time it
decides which values carry a gradient (float values on a path from a requested weight or input to
the target), asks the walker for the reverse order of the nodes that matter (``Walker.reverse("vjp")``)
and keeps one onnxruntime session that records exactly the values the VJP rules read, with the
``swappable`` initializers as session inputs. A call records the forward pass, seeds the target's
cotangent and runs each node's VJP rule, accumulating cotangents. Integer and shape subgraphs carry
no gradient and are never visited. Nothing here edits the model.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from onnxslice.data import Dataset
from onnxslice.errors import DataError, UnsupportedOpError
from onnxslice.flops import count_macs
from onnxslice.model import Model, Node, load
from onnxslice.opsets.capabilities.vjp import PerSampleUnsupported, VjpContext, VjpRule
from onnxslice.opsets.vjp.kernels import split_samples, threads
from onnxslice.record import Device, Recorder, as_feed, cuda_usable, fixed_batch_of, validate_inputs
from onnxslice.targets import BoundTarget, TargetSpec, batch_axis, default_output, logits_value, parse_target
from onnxslice.walk import Walker

from .chains import CHAIN_RULE, Chain, find_chains
from .diskcache import load_cached
from .emit import EmissionError
from .emitted import GRAPH_TOL, EmittedRunner, graph_disagreement
from .fallback import finite_difference_rule
from .result import Gradients

__all__ = [
    "EAGER_SPLIT_MEMORY_SHARE", "EAGER_SPLIT_MIN_MACS", "EXECUTORS", "FUSED_RECORDING_BATCH", "FUSED_RECORDING_SHARE",
    "GradientEngine", "clear_cache", "gradients", "logits_value",
]

_NO_GRAD_DTYPES = ("i", "u", "b", "O", "U", "S")
#: Float initializers with at least this many elements are fed to the recording session, not copied into it.
_FEED_MIN = 4096
#: The recording runs fused where the chains' convolution weights are at most this share of the bytes it
#: holds for a batch of FUSED_RECORDING_BATCH samples (see ``GradientEngine.recording_optimized``).
FUSED_RECORDING_SHARE = 0.25
FUSED_RECORDING_BATCH = 8
#: The ways a call may run (see ``GradientEngine(executor=)``).
EXECUTORS = ("auto", "eager", "graph")


@dataclass(frozen=True)
class _Step:
    node: Node
    rule: VjpRule
    needs: tuple[bool, ...]  # which inputs want a cotangent
    static_in: tuple[bool, ...]  # which inputs are batch-independent (weights or computed from weights only)


def _is_float(model: Model, value: str) -> bool | None:
    """Whether ``value`` has a float type (None when shape inference gave no type)."""
    if model.is_initializer(value):
        return bool(np.issubdtype(model.initializer(value).dtype, np.floating))
    vi = model.value_info.get(value)
    if vi is None or vi.dtype is None:
        return None
    return bool(np.issubdtype(vi.dtype, np.floating))


#: With several threads an eager call runs as one part of its samples per thread, each part recorded and
#: differentiated on single-threaded sessions and kernels, all at once, when each part has at least this
#: much forward work (multiply-adds). Two threads, paired in one process against one call on two-threaded
#: sessions and kernels: EfficientNet-Lite0 b8 (parts of 1.5 G) 0.70x the time, CIFAR ResNet-18 b32
#: (8.9 G) 0.89x, b8 (2.2 G) 0.91x but see EAGER_SPLIT_MEMORY_SHARE.
EAGER_SPLIT_MIN_MACS = 1 << 30
#: ... and when the extra sets of weight cotangents (each part holds one) are at most this share of what
#: the call's recording holds (the graph executor's parts too). Two threads, peak memory added by the call:
#: CIFAR ResNet-18 b8 (weights 1.3x its recording) 171 against 75 MiB, so not split; b32 (0.33x) 301
#: against 259 MiB; EfficientNet-Lite0 b8 (0.02x) 756 against 785 MiB.
EAGER_SPLIT_MEMORY_SHARE = 0.5


class GradientEngine:
    """Gradients of a scalar target with respect to weights and inputs, for many calls on one model.

    Args:
        model: a :class:`Model`, a path (loaded through the on-disk cache of :mod:`.diskcache`: in a later
            process its weights are mapped from the cache and held once) or a ``ModelProto``.
        target: ``"pred"`` (the predicted class's logit per sample), ``"class:K"``, ``"loss"`` (softmax
            cross-entropy with ``labels``), ``"output-norm"`` (L2 norm of the output per sample) or
            ``"cotangent"`` (``<cotangent, output>`` per sample; pass ``cotangent=`` at call time).
            When the output comes from Softmax/LogSoftmax, ``pred``, ``class:K`` and ``loss`` read
            its input logits.
        weights: ``"all"`` (every float initializer that reaches the target), ``"params"`` (the
            initializers a framework trains, :attr:`~onnxslice.model.Model.parameter_names`: no
            BatchNormalization statistics, Clip bounds or scalar constants; what PyTorch differentiates),
            ``"layers"`` (the weights and biases of ``model.layers``), or a list of initializer names.
        inputs: also return input gradients (turn off to skip the first layers' input cotangents).
        swappable: initializers whose values a call may replace with ``weights=`` (one session serves all).
        device: onnxruntime device for the forward pass (the backward runs in numpy); ``"cuda"`` runs
            forward and backward as one emitted gradient graph on the GPU (:mod:`.emitted`) for
            calls without ``per_sample``, ``cotangent`` or ``weights``.
        executor: how calls without ``per_sample``, ``cotangent`` or ``weights`` run on the CPU:
            ``"eager"`` (recording + VJP rules in numpy), ``"graph"`` (the emitted gradient graph, one
            onnxruntime session per batch shape, cached) or ``"auto"`` (default: the second call of a
            batch shape times both and keeps the graph only where it is faster and agrees with the eager
            result within :data:`~onnxslice.grad.emitted.GRAPH_TOL`). Models the graph cannot be emitted
            for stay eager (with a warning for ``"graph"``). ``"eager"`` also turns the graph off on CUDA.
        exact: refuse (``UnsupportedOpError``) nodes without a VJP rule instead of using finite differences.
        fuse: differentiate each *Conv -> BatchNormalization [-> Relu | Clip]* chain as one step
            (:mod:`.chains`): its inner values are not recorded, and where it pays (:attr:`recording_optimized`)
            the recording runs with onnxruntime's optimizations on, which fuses the chains; the gates
            are then those of that fused forward (default True).
        output: which model output to differentiate (default: the first); a list of outputs for
            ``cotangent`` targets given as a mapping output -> cotangent.
        logits: read Softmax/LogSoftmax inputs for logit targets (default True).
        parts: with several threads, let a large call run as one part of its samples per thread
            (:meth:`_parts`; default True). Give False for a model whose samples interact along axis 0 in a
            way a check on the model's own weights cannot see (the stacked models of
            :mod:`onnxslice.sensitivity.stacked`, whose weight groups follow the batch).

    Raises:
        DataError: unknown weights or output, or an output that is not a float tensor.
        UnsupportedOpError: ``exact=True`` and a node on the gradient path has no VJP rule.
    """

    def __init__(
        self,
        model: Model | str | onnx.ModelProto | Any,
        target: str | TargetSpec = "pred",
        *,
        weights: str | Sequence[str] = "all",
        inputs: bool = True,
        swappable: Sequence[str] = (),
        device: Device = "auto",
        exact: bool = False,
        output: str | Sequence[str] | None = None,
        logits: bool = True,
        executor: str = "auto",
        fuse: bool = True,
        parts: bool = True,
    ) -> None:
        if executor not in EXECUTORS:
            raise DataError(f"executor must be one of {', '.join(EXECUTORS)}, not '{executor}'")
        self.executor = executor
        # a file goes through the on-disk cache (.diskcache): on a hit its weights are mapped and held once
        self.model = (model if isinstance(model, Model) else load_cached(model) if isinstance(model, (str, os.PathLike))
                      else load(model))
        self.target = parse_target(target)
        self.exact = exact
        self.fuse = fuse
        m = self.model
        outs = [default_output(m)] if output is None else [output] if isinstance(output, str) else list(output)
        for o in outs:
            if o not in m.output_names:
                raise DataError(f"no output named '{o}'; the model's outputs are {', '.join(m.output_names)}")
            if _is_float(m, o) is False:
                vi = m.value_info.get(o)
                raise DataError(
                    f"output '{o}' is {vi.describe() if vi else 'not a float tensor'}: it is not differentiable; "
                    "choose a float output with output="
                )
        if not outs:
            raise DataError("no output to differentiate was given")
        self.outputs = outs
        self.output = outs[0]
        self.bound = BoundTarget(m, self.target, self.output, logits=logits)
        self.value = self.bound.value
        if self.target.kind == "value" and m.producer(self.value) is None:
            raise DataError(
                f"target value '{self.value}' is not computed by a node of this model (see `onnxslice inspect`)"
            )
        self.weight_names = self._weights(weights)
        self.input_names = [
            i.name for i in m.inputs if inputs and i.dtype is not None and np.issubdtype(i.dtype, np.floating)
        ]
        self.swappable = list(dict.fromkeys(swappable))
        for name in self.swappable:
            if not m.is_initializer(name):
                raise DataError(f"swappable weight '{name}' is not an initializer of the model")
        self._static = self._static_values()
        self._need = self._needed_values()
        #: the fused chains the plan differentiates as one step each (:mod:`.chains`)
        self.chains: list[Chain] = []
        self.steps = self._plan()
        last: dict[str, int] = {}
        for i, st in enumerate(self.steps):
            for v in (*st.node.inputs, *st.node.outputs):
                if v:
                    last[v] = i
        #: per backward step, the recorded values no later step reads (dropped then: lower peak memory)
        self._release: list[list[str]] = [[] for _ in self.steps]
        for v, i in last.items():
            self._release[i].append(v)
        self.record_values = self._values_read(self.steps)
        #: Whether the recording runs with onnxruntime's optimizations on, which fuses the chains but
        #: makes onnxruntime hold its own copy of their convolution weights: where those weights are at
        #: most :data:`FUSED_RECORDING_SHARE` of the bytes the recording of a batch of
        #: :data:`FUSED_RECORDING_BATCH` (or the model's fixed batch) holds. EfficientNet-Lite0: 0.06
        #: (recording 100 instead of 204 ms); the CIFAR ResNet-18: 1.3, where the copy added 64 MiB to
        #: a 140 MiB peak and saved 10 ms.
        self.recording_optimized = self._fused_recording_pays()
        self.device: Device = device
        self._recorder: Recorder | None = None
        self._single_recorder: Recorder | None = None  # single-threaded, for the parts of a call (_parts)
        self._macs: int | None = None  # forward multiply-adds per sample (_parts), counted on first use
        self._split_bytes: tuple[int, int] | None = None  # (weight bytes, recorded bytes per sample), _parts
        self._independent: bool | None = None if parts else False  # samples_independent(), checked once
        self._runner: Any = None  # the emitted gradient graphs, for device="cuda" (built on first use)
        #: executor="auto": per (batch shapes, batch_size), 1 after the first call, then the choice (True: graph)
        self._auto: dict[tuple[Any, ...], int | bool] = {}
        self._cot_axes: dict[str, int] = {}
        self._norms: dict[str, float] | None = None
        self.layers = {
            layer.name: [layer.weight] + ([layer.bias] if layer.bias else [])
            for layer in m.layers
            if layer.weight in self.weight_names
        }

    @property
    def emission_steps(self) -> list[_Step]:
        """The steps an emitted gradient graph is built from: :attr:`steps`, or the unfused steps where the
        recording is not optimized. There the graph would fuse the chains' forward that the eager engine
        records unfused (and so decide kinks differently), and onnxruntime's folded copies of the chains'
        weights cost the CIFAR ResNet-18's graph 100 MiB of peak memory (276 against 177) for 3% of time.
        """
        return self.steps if self.recording_optimized else self._plain_steps

    @property
    def emission_values(self) -> list[str]:
        """The computed values :attr:`emission_steps` read (the emission records them once for their shapes)."""
        steps = self.emission_steps
        return self.record_values if steps is self.steps else self._values_read(steps)

    def _values_read(self, steps: list[_Step]) -> list[str]:
        """The values the nodes compute that ``steps`` read or produce, and the target's and outputs'."""
        record = {v for s in steps for v in (*s.node.inputs, *s.node.outputs) if v}
        record.update([self.value, *self.outputs])
        produced = {o for n in self.model.nodes for o in n.outputs if o}
        return sorted(v for v in record if v in produced)

    def _fused_recording_pays(self) -> bool:
        """Whether the recording runs with onnxruntime's optimizations on (see :attr:`recording_optimized`)."""
        if not self.chains:
            return False
        m = self.model
        weights = sum(m.initializer(c.conv.inputs[1]).nbytes for c in self.chains)
        return weights <= FUSED_RECORDING_SHARE * self._recorded_bytes() * (fixed_batch_of(m) or FUSED_RECORDING_BATCH)

    def _recorded_bytes(self) -> int:
        """Bytes the recording holds per sample (the recorded values whose shapes are known past the batch)."""
        m = self.model
        per_sample = 0
        for v in self.record_values:
            vi = m.value_info.get(v)
            dims = [d for d in vi.shape[1:] if isinstance(d, int)] if vi is not None and vi.shape is not None else []
            if vi is None or vi.dtype is None or vi.shape is None or len(dims) != len(vi.shape) - 1:
                continue
            per_sample += int(np.prod(dims, dtype=np.int64)) * vi.dtype.itemsize
        return per_sample

    @property
    def recorder(self) -> Recorder:
        """The one onnxruntime session that records what the VJP rules read (built on first use).

        The ``swappable`` weights are session inputs; every other large float initializer is handed to
        onnxruntime from the model's own arrays (zero-copy in-memory initializers), so onnxruntime
        holds no second copy of the weights (its memory arena stays on: without it
        EfficientNet-Lite0's recording measured 1.3-2x slower). Where :attr:`recording_optimized`,
        the session runs with onnxruntime's optimizations on, which fuses the chains.
        """
        if self._recorder is None:
            self._recorder = self.make_recorder(self.record_values, optimize=self.recording_optimized)
        return self._recorder

    @property
    def single_recorder(self) -> Recorder:
        """A single-threaded twin of :attr:`recorder`, which the parts of a data-parallel call (:meth:`_parts`)
        run concurrently (built on first use; a call in parts never builds the multi-threaded one)."""
        if self._single_recorder is None:
            self._single_recorder = self.make_recorder(self.record_values, optimize=self.recording_optimized,
                                                       threads=1)
        return self._single_recorder

    def make_recorder(
        self, values: Sequence[str], device: Device | None = None, *, optimize: bool = False, arena: bool = True,
        threads: int | None = None,
    ) -> Recorder:
        """A new recording session of ``values`` with this engine's weights: the ``swappable`` ones as inputs,
        every other float initializer of at least ``_FEED_MIN`` elements handed over from the model's own
        arrays (no copy). ``arena=False`` frees its buffers after each run (a one-off recording). Its
        worker threads do not spin after a run: the backward's kernels run next (see ``make_session``)."""
        m = self.model
        fed = [
            n
            for n in m.initializer_names
            if n not in self.swappable and m.initializer(n).dtype.kind == "f" and m.initializer(n).size >= _FEED_MIN
        ]
        return Recorder(m, values, device or self.device, weight_inputs=self.swappable, in_memory=fed,
                        optimize=optimize, arena=arena, spin=False, threads=threads)

    def release_recorder(self) -> None:
        """Drop the recording sessions and their memory pools (rebuilt on next use): for calls the graph serves."""
        self._recorder = None
        self._single_recorder = None

    def _check_weights(self, weights: Mapping[str, Any] | None) -> dict[str, np.ndarray]:
        w_over = {k: np.asarray(v) for k, v in (weights or {}).items()}
        extra = set(w_over) - set(self.swappable)
        if extra:
            raise DataError(
                f"weights {', '.join(sorted(extra))} are not swappable in this engine; name them in swappable="
            )
        return w_over

    # -- build -------------------------------------------------------------------------------------
    def _weights(self, spec: str | Sequence[str]) -> list[str]:
        m = self.model
        if spec == "all":
            return [n for n in m.initializer_names if np.issubdtype(m.initializer(n).dtype, np.floating)]
        if spec == "layers":
            return [w for layer in m.layers for w in (layer.weight, layer.bias) if w]
        if spec == "params":
            return m.parameter_names
        if isinstance(spec, str):
            raise DataError(
                f"weights must be 'all', 'params', 'layers' or a list of initializer names, not '{spec}'"
            )
        names = list(dict.fromkeys(spec))
        bad = [n for n in names if not m.is_initializer(n)]
        if bad:
            raise DataError(f"no initializer named {', '.join(bad[:5])}; see `onnxslice inspect` for the weights")
        nonfloat = [n for n in names if not np.issubdtype(m.initializer(n).dtype, np.floating)]
        if nonfloat:
            raise DataError(f"initializer(s) {', '.join(nonfloat)} are not float: they carry no gradient")
        return names

    def _static_values(self) -> set[str]:
        m = self.model
        static = set(m.initializer_names)
        for node in m.nodes:
            if all(not i or i in static for i in node.inputs) and node.inputs:
                static.update(o for o in node.outputs if o)
        return static

    def _diff_inputs(self, node: Node) -> list[int]:
        skip = set(self.model.info(node).non_differentiable)
        return [i for i, v in enumerate(node.inputs) if v and i not in skip]

    def _needed_values(self) -> set[str]:
        """Values on a differentiable path from a source to the target value."""
        m = self.model
        reach = set(self.weight_names) | set(self.input_names)
        for node in m.nodes:
            if any(node.inputs[i] in reach for i in self._diff_inputs(node)):
                straight = m.info(node).straight_through  # quantize ops: the STE crosses their integers
                reach.update(o for o in node.outputs if o and (straight or _is_float(m, o) is not False))
        need = {self.value, *self.outputs} & reach
        for node in reversed(m.nodes):
            if any(o in need for o in node.outputs):
                need.update(node.inputs[i] for i in self._diff_inputs(node) if node.inputs[i] in reach)
        return need

    def _plan(self) -> list[_Step]:
        fallbacks: list[str] = []

        def missing(node: Node, err: UnsupportedOpError) -> VjpRule | None:
            if not self._active(node):
                return None
            if self.exact:
                raise err
            fallbacks.append(f"{node.op_type} (node '{node.name}')")
            return finite_difference_rule(self.model, node)

        steps = []
        for step in Walker(self.model).reverse("vjp", start=[self.value, *self.outputs], on_missing=missing):
            node = step.node
            if not self._active(node):
                continue
            diff = set(self._diff_inputs(node))
            needs = tuple(i in diff and v in self._need for i, v in enumerate(node.inputs))
            static_in = tuple(bool(v) and v in self._static for v in node.inputs)
            steps.append(_Step(node, step.rule, needs, static_in))
        self._plain_steps = steps
        if self.fuse:
            steps = self._fused(steps)
        if fallbacks:
            warnings.warn(
                f"no VJP rule for {', '.join(fallbacks)}: using central finite differences through onnxruntime "
                "(two runs of the node per input element, per call); pass exact=True to refuse",
                stacklevel=3,
            )
        return steps

    def _fused(self, steps: list[_Step]) -> list[_Step]:
        """``steps`` with each fusible chain's steps replaced by one chain step, at its last node's place."""
        protected = {self.value, *self.outputs}
        at = {st.node.name: st for st in steps}
        chains = [ch for ch in find_chains(self.model, protected) if all(n.name in at for n in ch.members)]
        if not chains:
            return steps
        last = {ch.members[-1].name: ch for ch in chains}
        inner = {n.name for ch in chains for n in ch.members[:-1]}
        out = []
        for st in steps:
            if st.node.name in inner:
                continue
            ch = last.get(st.node.name)
            if ch is None:
                out.append(st)
                continue
            conv, bn = at[ch.conv.name], at[ch.bn.name]
            act = at[ch.act.name] if ch.act is not None else None
            head, tail = conv.needs[:3], act.needs[1:3] if act is not None else ()
            needs = (*head, *[False] * (3 - len(head)), *bn.needs[1:5], *tail, *[False] * (2 - len(tail)))
            static = tuple(bool(v) and v in self._static for v in ch.node.inputs)
            out.append(_Step(ch.node, CHAIN_RULE, tuple(needs), static))
        self.chains = chains
        return out

    def _active(self, node: Node) -> bool:
        return any(o in self._need for o in node.outputs) and any(
            node.inputs[i] in self._need for i in self._diff_inputs(node)
        )

    # -- call --------------------------------------------------------------------------------------
    def __call__(
        self,
        inputs: Mapping[str, Any] | np.ndarray | Any,
        *,
        labels: np.ndarray | Sequence[int] | None = None,
        weights: Mapping[str, np.ndarray] | None = None,
        per_sample: bool = False,
        cotangent: np.ndarray | Mapping[str, np.ndarray] | None = None,
        batch_size: int | None = None,
    ) -> Gradients:
        """Gradients of the target on ``inputs``.

        Args:
            inputs: arrays keyed by input name, one array for a single-input model, or a ``Dataset``
                (whose labels serve ``loss`` when ``labels`` is not given).
            labels: class per sample for ``target="loss"``.
            weights: values for some ``swappable`` initializers: the forward and the backward are
                evaluated there.
            per_sample: weight gradients ``[N, *w.shape]`` instead of their sum over samples.
            cotangent: an explicit output cotangent (shaped like the output), or a mapping output name ->
                cotangent over the engine's ``output`` list; the target is then ``<cotangent, output>``
                per sample, whatever the engine's target.
            batch_size: process this many samples at a time (results are identical).

        Returns:
            :class:`Gradients`.

        Raises:
            DataError: bad inputs, labels, cotangent or weights.
        """
        if labels is None and isinstance(inputs, Dataset) and inputs.labels is not None:
            labels = inputs.labels
        feed = validate_inputs(self.model, as_feed(self.model, inputs))
        n = len(next(iter(feed.values()))) if feed else 1
        lab = None if labels is None else np.asarray(labels)
        if lab is not None and len(lab) != n:
            raise DataError(f"{len(lab)} labels for {n} samples")
        cots = self._cotangents(cotangent, n)
        w_over = self._check_weights(weights)
        if not per_sample and cots is None and not w_over and self._runner is not False and self.executor != "eager":
            if self.device == "cuda":
                res = self._emitted(feed, lab, batch_size)  # the backward pass as one graph on the GPU
                if res is not None:
                    return res
            elif self.executor == "graph" and self._graph_fits(n, batch_size):
                res = self._emitted(feed, lab, batch_size)
                if res is not None:
                    return res
            elif self.executor == "auto" and self._graph_fits(n, batch_size):
                res = self._auto_call(feed, lab, batch_size)
                if res is not None:
                    return res
        return self._eager(feed, lab, cots, w_over, per_sample, batch_size)

    def _eager(
        self,
        feed: dict[str, np.ndarray],
        lab: np.ndarray | None,
        cots: dict[str, np.ndarray] | None,
        w_over: dict[str, np.ndarray],
        per_sample: bool,
        batch_size: int | None,
    ) -> Gradients:
        """Record the forward pass and run the VJP rules (the eager executor); with several threads and enough
        work, one part of the samples per thread, at once (:meth:`_parts`)."""
        n = len(next(iter(feed.values()))) if feed else 1
        wsum: dict[str, np.ndarray] = {}
        wparts: dict[str, list[np.ndarray]] = {}
        iparts: dict[str, list[np.ndarray]] = {k: [] for k in self.input_names}
        fparts: list[np.ndarray] = []

        def one(rec: Recorder, lo: int, hi: int) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
            chunk = {k: v[lo:hi] for k, v in feed.items()}  # the feed is validated once, above
            vals = rec.run(chunk, validated=True, weights=w_over or None)
            cot = None if cots is None else {
                k: np.take(v, np.arange(lo, hi), axis=self._cot_axes[k]) for k, v in cots.items()
            }
            return self._batch(chunk, vals, w_over, None if lab is None else lab[lo:hi], cot, per_sample)

        owned: set[int] = set()  # ids of summed arrays this call may add into in place

        def add(res: tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]], own: bool = False) -> None:
            f, wg, ig = res
            fparts.append(f)
            if own:  # a part's fresh arrays, each held by one weight only: the parts' sums go into them
                ids = [id(v) for v in wg.values()]
                owned.update(id(v) for v in wg.values()
                             if ids.count(id(v)) == 1 and v.flags.owndata and v.flags.writeable)
            for k, v in wg.items():
                if per_sample:
                    wparts.setdefault(k, []).append(v)
                elif k not in wsum:
                    wsum[k] = v
                elif id(wsum[k]) in owned and wsum[k].shape == v.shape:
                    np.add(wsum[k], v, out=wsum[k])
                else:
                    wsum[k] = wsum[k] + v
            for k, v in ig.items():
                iparts[k].append(v)

        split = None
        if self._parts(n, batch_size, feed):
            single = self.single_recorder
            split = split_samples(n, lambda lo, hi: one(single, lo, hi), 0, min_part=0)  # _parts checked the work
        if split is not None:
            for i, res in enumerate(split):
                add(res, own=i == 0)
        else:
            rec = self.recorder
            bs = rec.fixed_batch or batch_size or n
            for s0 in range(0, n, bs):
                add(one(rec, s0, min(s0 + bs, n)))
        wout = {k: np.concatenate(v) for k, v in wparts.items()} if per_sample else wsum
        if self._norms is None:  # the model's own weights: computed once
            self._norms = {k: float(np.linalg.norm(self.model.initializer(k))) for k in self.weight_names}
        norms = dict(self._norms)
        norms.update({k: float(np.linalg.norm(v)) for k, v in w_over.items() if k in norms})
        return Gradients(
            wout,
            {k: v[0] if len(v) == 1 else np.concatenate(v) for k, v in iparts.items()},
            fparts[0] if len(fparts) == 1 else np.concatenate(fparts),
            "cotangent" if cots is not None else self.target.spec,
            per_sample,
            dict(self.layers),
            norms,
            {"fingerprint": self.model.fingerprint, "weights": self.model.weights_fingerprint, "value": self.value,
             "output": self.output},
        )

    def samples_independent(self, feed: Mapping[str, np.ndarray]) -> bool:
        """Whether the model treats the leading axis of its inputs as independent samples, so that a call may
        run in parts; checked once, on two samples of ``feed``: the outputs of the two together must equal
        those of each alone (a time-major RNN, a model that reshapes or reduces across the batch, or a
        stacked model with weight groups along the batch: no). Any failure counts as no."""
        if self._independent is None:
            ok = False
            try:
                rec = self.make_recorder([], "cpu", arena=False, threads=1)  # outputs only, freed after
                both = rec.run({k: v[:2] for k, v in feed.items()}, validated=True)
                alone = [rec.run({k: v[i : i + 1] for k, v in feed.items()}, validated=True) for i in (0, 1)]
                ok = True
                for name in self.model.output_names:
                    a = np.asarray(both[name])
                    b = np.concatenate([np.asarray(x[name]) for x in alone])
                    scale = float(np.max(np.abs(a))) if a.size and a.dtype.kind == "f" else 1.0
                    if a.shape != b.shape or not np.allclose(a, b, rtol=1e-4, atol=1e-6 * max(scale, 1.0)):
                        ok = False
            except Exception:  # inputs without a sample axis, a batch the model cannot run: whole calls only
                ok = False
            self._independent = ok
        return self._independent

    def _parts(self, n: int, batch_size: int | None, feed: Mapping[str, np.ndarray]) -> bool:
        """Whether an eager call on ``n`` samples may run as one part per thread: several threads, the
        recording on the CPU, no fixed batch, no smaller ``batch_size`` asked, a second set of weight
        cotangents (each part holds one) small beside the recording (:data:`EAGER_SPLIT_MEMORY_SHARE`) and
        enough forward work in each part (:data:`EAGER_SPLIT_MIN_MACS`), on a model whose samples are
        independent (:meth:`samples_independent`)."""
        on_cpu = self.device == "cpu" or (self.device == "auto" and not cuda_usable())
        if not (n > 1 and on_cpu and threads() > 1 and fixed_batch_of(self.model) is None
                and (batch_size is None or batch_size >= n)):
            return False
        parts = min(threads(), n)
        return (self.parts_fit(n, parts) and self.forward_macs() * (n // parts) >= EAGER_SPLIT_MIN_MACS
                and self.samples_independent(feed))

    def parts_fit(self, n: int, parts: int) -> bool:
        """Whether the extra sets of weight cotangents of ``parts`` parts (each part holds one) are at most
        :data:`EAGER_SPLIT_MEMORY_SHARE` of what a call on ``n`` samples records."""
        if self._split_bytes is None:
            m = self.model
            self._split_bytes = (sum(m.initializer(w).nbytes for w in self.weight_names), self._recorded_bytes())
        weights, per_sample = self._split_bytes
        return weights * (parts - 1) <= EAGER_SPLIT_MEMORY_SHARE * per_sample * n

    def forward_macs(self) -> int:
        """Forward multiply-adds per sample (Conv, Gemm, MatMul), counted once."""
        if self._macs is None:
            self._macs = count_macs(self.model, 1).total
        return self._macs

    def _emitted(
        self, feed: dict[str, np.ndarray], labels: np.ndarray | None, batch_size: int | None
    ) -> Gradients | None:
        """Gradients from the emitted gradient graph (:mod:`.emitted`), for ``device="cuda"``.

        None (with a warning, once) when the graph cannot be emitted for this model or target: the
        engine then records on CUDA and runs the backward in numpy, as on any device.
        """
        if self._runner is None:
            self._runner = EmittedRunner(self)
        try:
            return self._runner(feed, labels, batch_size)
        except (EmissionError, UnsupportedOpError) as e:
            self._runner = False
            if self.executor != "auto" or self.device == "cuda":
                cuda = self.device == "cuda"
                who, where = ("device='cuda'", "on CUDA") if cuda else ("executor='graph'", "on the CPU")
                warnings.warn(f"{who}: the gradient graph cannot be emitted ({e}); the forward runs {where} "
                              "and the backward in numpy", stacklevel=3)
            return None

    def _graph_fits(self, n: int, batch_size: int | None) -> bool:
        """Whether every batch of a call has the model's fixed batch size, where it has one."""
        fb = fixed_batch_of(self.model)
        return fb is None or ((batch_size or n) == fb and n % fb == 0)

    def _auto_call(
        self, feed: dict[str, np.ndarray], labels: np.ndarray | None, batch_size: int | None
    ) -> Gradients | None:
        """``executor="auto"`` on the CPU: the graph where it was measured faster on this batch shape, else None.

        The first call of a batch shape runs eagerly (a one-off call pays no emission). The second one
        runs eagerly too, timed, then builds the graph, runs it twice and times the second run: the
        graph is kept for that shape when it is faster and agrees with the eager result within
        :data:`~onnxslice.grad.emitted.GRAPH_TOL`. That call returns the eager result.
        """
        key = (tuple(sorted((k, np.shape(v)) for k, v in feed.items())), batch_size)
        state = self._auto.get(key)
        if state is True:
            return self._emitted(feed, labels, batch_size)
        if state is None:
            self._auto[key] = 1
            return None
        if state is not False:  # the trial
            self._auto[key] = False
            t = time.perf_counter()
            g = self._eager(feed, labels, None, {}, False, batch_size)
            t_eager = time.perf_counter() - t
            if self._emitted(feed, labels, batch_size) is None:  # builds the session; None: not emittable
                return g
            t = time.perf_counter()
            res = self._emitted(feed, labels, batch_size)
            t_graph = time.perf_counter() - t
            self._auto[key] = bool(
                res is not None and t_graph < t_eager and graph_disagreement(res, g) <= GRAPH_TOL
            )
            if self._auto[key] and all(v is True for v in self._auto.values()):
                self.release_recorder()  # every shape seen runs as a graph now
            return g
        return None

    def vjp(
        self,
        inputs: Mapping[str, np.ndarray],
        cotangents: Mapping[str, np.ndarray],
        *,
        weights: Mapping[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        """The plain vector-Jacobian product of the graph: one forward and one backward, no sample axis.

        Unlike :meth:`__call__`, nothing assumes that axis 0 is a batch: inputs may have different
        leading sizes and outputs need not keep a sample axis. Used by the finite-difference checks.

        Args:
            inputs: arrays keyed by input name (cast to the declared dtypes).
            cotangents: output name -> cotangent (shaped like the output); outputs must be among the
                engine's ``output`` list.
            weights: values for ``swappable`` initializers.

        Returns:
            Source name (weight or input) -> its cotangent; sources the outputs do not depend on are absent.
        """
        declared = {vi.name: vi for vi in self.model.inputs}
        feed = {}
        for k, v in inputs.items():
            if k not in declared:
                raise DataError(f"unknown input '{k}'; the model's inputs are {', '.join(declared)}")
            dt = declared[k].dtype
            feed[k] = np.ascontiguousarray(v, dtype=dt) if dt is not None else np.ascontiguousarray(v)
        for k in cotangents:
            if k not in self.outputs:
                raise DataError(f"a cotangent for '{k}', which is not among the engine's outputs {self.outputs}")
        w_over = self._check_weights(weights)
        vals = self.recorder.run(feed, validated=True, weights=w_over or None)
        return self.vjp_from_values(feed, vals, cotangents, weights=w_over)

    def vjp_from_values(
        self,
        inputs: Mapping[str, np.ndarray],
        values: Mapping[str, np.ndarray],
        cotangents: Mapping[str, np.ndarray],
        *,
        weights: Mapping[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        """The backward pass over forward values computed elsewhere (every value in ``record_values``).

        Lets a check evaluate the forward with another runtime (the ONNX reference evaluator in
        float64) and the rules on those values.
        """
        seeds = {k: np.asarray(c, dtype=values[k].dtype) for k, c in cotangents.items()}
        grads = self._backward(dict(inputs), dict(values), dict(weights or {}), seeds, 0, False)
        return {k: v for k, v in grads.items() if k in self.weight_names or k in self.input_names}

    def _cotangents(
        self, cotangent: np.ndarray | Mapping[str, np.ndarray] | None, n: int
    ) -> dict[str, np.ndarray] | None:
        if cotangent is None:
            if self.target.kind == "cotangent":
                raise DataError("target 'cotangent' needs cotangent=<array shaped like the output>")
            return None
        cots = dict(cotangent) if isinstance(cotangent, Mapping) else {self.output: cotangent}
        for k, v in cots.items():
            if k not in self.outputs:
                raise DataError(f"a cotangent for '{k}', which is not among the engine's outputs {self.outputs}")
            if np.asarray(v).ndim == 0 or n not in np.shape(v):
                raise DataError(f"the cotangent of '{k}' must have {n} samples on its output's sample axis")
        self._cot_axes = {
            k: BoundTarget(self.model, "cotangent", k).batch_axis(np.asarray(v), n) for k, v in cots.items()
        }
        return {k: np.asarray(v) for k, v in cots.items()}

    def _seeds(
        self, vals: dict[str, np.ndarray], labels: np.ndarray | None, cots: dict[str, np.ndarray] | None, n: int
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if cots is None:
            if np.asarray(vals[self.value]).dtype.kind in _NO_GRAD_DTYPES:
                raise DataError(f"value '{self.value}' is {vals[self.value].dtype}: it is not differentiable")
            f, seed = self.bound.seed(vals[self.value], labels=labels, n=n)
            return f, {self.value: seed}
        total: np.ndarray | None = None
        seeds = {}
        for k, c in cots.items():
            fk, seeds[k] = BoundTarget(self.model, "cotangent", k).seed(vals[k], cotangent=c, n=n)
            total = fk if total is None else total + fk
        assert total is not None
        return total, seeds

    def _batch(
        self,
        chunk: dict[str, np.ndarray],
        vals: dict[str, np.ndarray],
        w_over: Mapping[str, np.ndarray],
        labels: np.ndarray | None,
        cots: dict[str, np.ndarray] | None,
        per_sample: bool,
    ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Target values, weight gradients and input gradients of one recorded batch."""
        f, seed = self._seeds(vals, labels, cots, len(next(iter(chunk.values()))) if chunk else 1)
        n = len(f)
        if per_sample:
            try:
                grads = self._backward(chunk, vals, w_over, seed, n, True)
            except PerSampleUnsupported:
                grads = self._sample_by_sample(chunk, vals, w_over, seed, n)
        else:
            grads = self._backward(chunk, vals, w_over, seed, n, False)
        wg = {}
        for w in self.weight_names:
            if w in grads:
                wg[w] = grads[w]
            else:  # does not reach the target
                shape = self.model.initializer(w).shape
                wg[w] = np.zeros(((n,) if per_sample else ()) + shape, dtype=self.model.initializer(w).dtype)
        ig = {k: grads[k] if k in grads else np.zeros_like(chunk[k]) for k in self.input_names}
        return f, wg, ig

    def _sample_by_sample(
        self,
        chunk: dict[str, np.ndarray],
        vals: dict[str, np.ndarray],
        w_over: Mapping[str, np.ndarray],
        seed: dict[str, np.ndarray],
        n: int,
    ) -> dict[str, np.ndarray]:
        """Per-sample gradients by one backward pass per sample (when a node cannot batch them)."""
        parts: list[dict[str, np.ndarray]] = []
        axes = {k: BoundTarget(self.model, "cotangent", k).batch_axis(v, n) if k in self.model.output_names
                else batch_axis(self.model, [k, self.output], v.shape, n) for k, v in seed.items()}  # time-first seeds
        for i in range(n):
            ci = {k: v[i : i + 1] for k, v in chunk.items()}
            vi = self.recorder.run(ci, validated=True, weights=dict(w_over) or None)
            si = {k: np.take(v, [i], axis=axes[k]) for k, v in seed.items()}
            parts.append(self._backward(ci, vi, w_over, si, 1, False))
        out: dict[str, np.ndarray] = {}
        for k in parts[0]:
            if k in self.input_names:
                out[k] = np.concatenate([p[k] for p in parts])
            else:
                out[k] = np.stack([p[k] for p in parts])
        return out

    def _backward(
        self,
        chunk: dict[str, np.ndarray],
        vals: dict[str, np.ndarray],
        w_over: Mapping[str, np.ndarray],
        seed: dict[str, np.ndarray],
        n: int,
        per_sample: bool,
    ) -> dict[str, np.ndarray]:
        m = self.model

        def value(name: str) -> np.ndarray | None:
            if not name:
                return None
            if name in vals:
                return vals[name]
            if name in chunk:
                return chunk[name]
            if name in w_over:
                return w_over[name]
            if m.is_initializer(name):
                return m.initializer(name)
            return None

        grads: dict[str, np.ndarray] = dict(seed)
        owned: set[str] = set()
        for index, step in enumerate(self.steps):
            if index:
                for v in self._release[index - 1]:  # recorded values no later rule reads
                    vals.pop(v, None)
            node = step.node
            out_grads = [grads.pop(o, None) if o else None for o in node.outputs]
            if all(g is None for g in out_grads):
                continue
            ins = [value(v) for v in node.inputs]
            outs = [value(o) for o in node.outputs]
            ste = m.info(node).straight_through
            needs = tuple(
                nd and ins[i] is not None and (ste or ins[i].dtype.kind == "f")  # type: ignore[union-attr]
                for i, nd in enumerate(step.needs)
            )
            if per_sample and (any(step.static_in[i] for i, nd in enumerate(needs) if nd)):
                res = self._per_sample_call(step, ins, outs, out_grads, needs, n)
            else:
                res = step.rule(VjpContext(node, ins, outs, out_grads, needs))
            for i, r in enumerate(res):
                if r is None or not needs[i]:
                    continue
                name = node.inputs[i]
                if name in grads:
                    if name in owned:
                        grads[name] += r
                    else:
                        grads[name] = grads[name] + r
                        owned.add(name)
                else:
                    grads[name] = r
        return grads

    def _per_sample_call(
        self,
        step: _Step,
        ins: list[np.ndarray | None],
        outs: list[np.ndarray | None],
        out_grads: list[np.ndarray | None],
        needs: tuple[bool, ...],
        n: int,
    ) -> list[np.ndarray | None]:
        """Run a rule so that batch-independent inputs get per-sample cotangents ``[N, *shape]``."""
        node, rule = step.node, step.rule
        static = step.static_in
        if all(static[i] or not v for i, v in enumerate(node.inputs)):
            # a node on weights only (Transpose of a weight, ...): its cotangents already carry the sample axis
            per = [
                rule(VjpContext(node, ins, outs, [g[k] if g is not None else None for g in out_grads], needs))
                for k in range(n)
            ]
            return [
                np.stack([p[i] for p in per]) if needs[i] and per[0][i] is not None else None for i in range(len(ins))
            ]
        keep = tuple(needs[i] and static[i] for i in range(len(ins)))
        if rule.per_sample:
            return rule(VjpContext(node, ins, outs, out_grads, needs, keep))
        for i, v in enumerate(ins):
            if not static[i] and v is not None and (v.ndim == 0 or v.shape[0] != n):
                raise PerSampleUnsupported(f"{node}: input {i} has no leading sample axis")
        for k, v in enumerate(outs):
            if v is not None and (v.ndim == 0 or v.shape[0] != n):
                raise PerSampleUnsupported(f"{node}: output {k} has no leading sample axis")
        parts = []
        for s in range(n):
            ins_s = [v if static[i] or v is None else v[s : s + 1] for i, v in enumerate(ins)]
            outs_s = [v[s : s + 1] if v is not None else None for v in outs]
            grads_s = [g[s : s + 1] if g is not None else None for g in out_grads]
            parts.append(rule(VjpContext(node, ins_s, outs_s, grads_s, needs)))
        res: list[np.ndarray | None] = []
        for i in range(len(ins)):
            if not needs[i] or parts[0][i] is None:
                res.append(None)
            elif static[i]:
                res.append(np.stack([p[i] for p in parts]))
            else:
                res.append(np.concatenate([p[i] for p in parts]))
        return res

    def __repr__(self) -> str:
        return (
            f"GradientEngine(target={self.target.spec} on '{self.value}', {len(self.weight_names)} weights, "
            f"{len(self.input_names)} inputs, {len(self.steps)} backward steps)"
        )


#: Engines of recent one-shot :func:`gradients` calls on model files, most recently used last.
_ENGINES: dict[tuple[Any, ...], GradientEngine] = {}
_CACHE_SIZE = 4


def _cache_key(
    model: Any, target: str, weights: str | Sequence[str], exact: bool, device: Device, executor: str = "eager"
) -> tuple[Any, ...] | None:
    """The engine cache key of a model file (its resolved path, size and modification time), else None.

    In-memory models are not cached: their weights may change in place between calls.
    """
    if not isinstance(model, (str, os.PathLike)):
        return None
    try:
        st = os.stat(model)
    except OSError:
        return None  # load() reports the missing file
    w = weights if isinstance(weights, str) else tuple(weights)
    return (os.path.realpath(model), st.st_size, st.st_mtime_ns, target, w, exact, device, executor)


def clear_cache() -> None:
    """Forget the engines cached by :func:`gradients` (they hold sessions and weights)."""
    _ENGINES.clear()


def gradients(
    model: Model | str | onnx.ModelProto | Any,
    inputs: Mapping[str, Any] | np.ndarray | Any,
    target: str = "pred",
    *,
    labels: np.ndarray | Sequence[int] | None = None,
    per_sample: bool = False,
    weights: str | Iterable[str] = "all",
    exact: bool = False,
    device: Device = "auto",
    batch_size: int | None = None,
    cotangent: np.ndarray | Mapping[str, np.ndarray] | None = None,
    executor: str = "eager",
) -> Gradients:
    """The derivative of a scalar target with respect to every weight initializer and float model input.

    One-shot form of :class:`GradientEngine`. The engine built for a model *file* is cached (the last
    four, keyed by resolved path, size and modification time, target, weights, ``exact`` and
    ``device``), so calling this again on the same file skips the load, the plan and the sessions;
    :func:`clear_cache` frees them. In a fresh process, a file's loaded model comes from the on-disk
    cache (:mod:`.diskcache`: checker and shape inference skipped; ``ONNXSLICE_CACHE=off`` turns it
    off). Build a :class:`GradientEngine` yourself for in-memory models.

    Args:
        model: a :class:`Model`, a path or a ``ModelProto``.
        inputs: arrays keyed by input name, one array, or a ``Dataset``.
        target: ``pred`` (default), ``class:K``, ``loss``, ``output-norm`` or ``cotangent``.
        labels: class per sample for ``loss``.
        per_sample: weight gradients per sample ``[N, *w.shape]``.
        weights: ``"all"``, ``"params"``, ``"layers"`` or a list of initializer names.
        exact: refuse ops without a VJP rule instead of finite differences.
        device: onnxruntime device for the forward pass.
        batch_size: samples per forward/backward pass.
        cotangent: the output cotangent for ``target="cotangent"``.
        executor: ``"eager"`` (default: a repeated one-shot call costs what a prepared engine's call
            costs, with no timing trial on its second call), ``"auto"`` or ``"graph"`` (see
            :class:`GradientEngine`).

    Returns:
        :class:`Gradients` (save it with ``.save(path)``, print ``.table()``).
    """
    spec: str | Sequence[str] = weights if isinstance(weights, str) else list(weights)
    key = _cache_key(model, target, spec, exact, device, executor)
    engine = _ENGINES.pop(key, None) if key is not None else None
    if engine is None:  # a file is loaded through the on-disk cache (.diskcache), as GradientEngine does
        engine = GradientEngine(model, target, weights=spec, exact=exact, device=device, executor=executor)
    if key is not None:
        _ENGINES[key] = engine  # most recently used last
        while len(_ENGINES) > _CACHE_SIZE:
            _ENGINES.pop(next(iter(_ENGINES)))
    return engine(inputs, labels=labels, per_sample=per_sample, cotangent=cotangent, batch_size=batch_size)
