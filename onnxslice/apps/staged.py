"""Run a model with values replaced at several points: the clean prefix is cached, only dirty nodes rerun.

Faults in several layers at once (weights swapped, activations overwritten) change only the nodes
downstream of them. :class:`StagedRunner` records the clean model once per batch (every value a
stage reads), then for a set of *fault points* runs, in topological order, one stage per overwritten
activation (the dirty nodes that must run before it) and a last stage for the rest, each stage one
onnxruntime session (cached, built once per distinct stage) with the faulted weights fed as inputs.
For a single layer this is exactly "run the prefix, flip the recorded tensor, run the cached suffix".
int4/uint4 initializers (which onnxruntime cannot take from numpy) are fed as int8/uint8 and cast back
inside the stage. Nothing here edits the caller's model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxslice.errors import OnnxSliceError
from onnxslice.model import Model
from onnxslice.record import Device, make_session, runtime_proto
from onnxslice.walk import ancestors, descendants

__all__ = ["FaultPoint", "StagedRunner"]

#: 4-bit initializer types, fed as this numpy type and cast back inside the stage
_NARROW: dict[int, type[np.integer]] = {onnx.TensorProto.INT4: np.int8, onnx.TensorProto.UINT4: np.uint8}
_FEED_PREFIX = "onnxslice/faults/"


@dataclass(frozen=True)
class FaultPoint:
    """Where a fault set touches the model.

    Attributes:
        weight: an initializer whose value is replaced (None: none).
        value: a node output overwritten after it is computed (None: none).
    """

    weight: str | None = None
    value: str | None = None


@dataclass
class _Stage:
    """One stage's session: graph inputs read from the cache, swappable weights fed by original name."""

    session: Any
    inputs: list[str]
    outputs: list[str]
    feeds: dict[str, str]  # weight name -> the session input fed with it
    defaults: dict[str, np.ndarray]

    def run(self, cache: Mapping[str, np.ndarray], weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {i: cache[i] for i in self.inputs}
        for w, f in self.feeds.items():
            v = weights.get(w)
            feed[f] = self.defaults[f] if v is None else np.ascontiguousarray(v, dtype=self.defaults[f].dtype)
        try:
            res = self.session.run(self.outputs, feed)
        except Exception as e:
            raise OnnxSliceError(f"onnxruntime failed on a fault stage: {e}") from e
        return dict(zip(self.outputs, res, strict=True))


class StagedRunner:
    """Clean cache + staged sessions over one model and one calibration feed.

    Args:
        model: the model.
        batches: ``(rows, inputs)`` per batch (validated inputs).
        device: onnxruntime device.
        threads: intra-op threads per session (default 1: campaigns run many sessions, and units run in
            parallel processes rather than threads).
    """

    def __init__(self, model: Model, batches: Sequence[tuple[slice, dict[str, np.ndarray]]], device: Device = "cpu",
                 threads: int | None = 1):
        self.model = model
        self.batches = list(batches)
        self.device = device
        self.threads = threads
        self._clean: list[dict[str, np.ndarray]] = [dict(b) for _, b in self.batches]
        self._sessions: dict[tuple[tuple[str, ...], tuple[str, ...]], _Stage] = {}
        self._order = {n.name: i for i, n in enumerate(model.nodes)}
        self.record_clean([])

    # -- clean values ------------------------------------------------------------------------------
    def record_clean(self, values: Sequence[str]) -> None:
        """Make sure ``values`` (and the model outputs) are in the clean cache of every batch."""
        have = self._clean[0].keys() if self._clean else set()
        missing = sorted({*values, *self.model.output_names} - set(have) - set(self.model.input_names))
        missing = [v for v in missing if not self.model.is_initializer(v)]
        if not missing:
            return
        sess = make_session(runtime_proto(self.model.proto, missing), self.device, threads=self.threads)
        for cache, (_, batch) in zip(self._clean, self.batches, strict=True):
            cache.update(zip(missing, sess.run(missing, batch), strict=True))

    def clean(self, b: int) -> dict[str, np.ndarray]:
        """The clean cache of batch ``b`` (inputs and recorded values; do not mutate)."""
        return self._clean[b]

    # -- planning ----------------------------------------------------------------------------------
    def plan(self, points: Sequence[FaultPoint]) -> list[tuple[list[str], list[str], str | None]]:
        """Stages for ``points``: ``(node names, swapped weights, value overwritten after the stage)``."""
        m = self.model
        dirty: set[str] = set()
        for p in points:
            if p.weight is not None:
                cons = {n.name for n in m.consumers(p.weight)}
                dirty |= cons | descendants(m, [o for c in cons for o in m.node(c).outputs if o])
            if p.value is not None:
                dirty |= descendants(m, [p.value])
        weights = sorted({p.weight for p in points if p.weight is not None})
        acts = sorted({p.value for p in points if p.value is not None},
                      key=lambda v: self._order[m.producer(v).name] if m.producer(v) is not None else -1)  # type: ignore[union-attr]
        stages: list[tuple[list[str], list[str], str | None]] = []
        done: set[str] = set()
        for v in acts:
            upto = ancestors(m, [v])
            nodes = [n for n in dirty - done if n in upto]
            done |= set(nodes)
            stages.append((self._sorted(nodes), self._reads(nodes, weights), v))
        rest = [n for n in dirty - done]
        stages.append((self._sorted(rest), self._reads(rest, weights), None))
        return stages

    def _sorted(self, nodes: list[str]) -> list[str]:
        return sorted(nodes, key=self._order.__getitem__)

    def _reads(self, nodes: list[str], weights: list[str]) -> list[str]:
        read = {i for n in nodes for i in self.model.node(n).inputs}
        return [w for w in weights if w in read]

    def prepare(self, points: Sequence[FaultPoint]) -> None:
        """Record the clean values the stages of ``points`` read, and open their sessions."""
        for nodes, weights, _ in self.plan(points):
            if nodes:
                self.record_clean(self._session(nodes, weights).inputs)
        self.record_clean([p.value for p in points if p.value is not None])

    # -- sessions ------------------------------------------------------------------------------
    def _session(self, nodes: list[str], weights: list[str]) -> _Stage:
        key = (tuple(nodes), tuple(weights))
        if key not in self._sessions:
            self._sessions[key] = self._build(nodes, weights)
        return self._sessions[key]

    def _build(self, nodes: list[str], weights: list[str]) -> _Stage:
        m = self.model
        keep = set(nodes)
        produced = {o for n in nodes for o in m.node(n).outputs if o}
        inputs: list[str] = []
        for n in nodes:
            for v in m.node(n).inputs:
                if v and v not in produced and not m.is_initializer(v) and v not in inputs:
                    inputs.append(v)
        later = {i for n in m.nodes if n.name not in keep for i in n.inputs}
        outputs = [o for n in nodes for o in m.node(n).outputs if o and (o in later or o in m.output_names)]
        g = m.graph
        protos = {n.name: n for n in g.node}
        vis = {vi.name: vi for vi in [*g.value_info, *g.input, *g.output]}
        inits_used = {v for n in nodes for v in m.node(n).inputs if v and m.is_initializer(v)}
        extra_nodes: list[onnx.NodeProto] = []
        inits: list[onnx.TensorProto] = []
        feeds: dict[str, str] = {}
        defaults: dict[str, np.ndarray] = {}
        for t in g.initializer:
            if t.name not in inits_used:
                continue
            if t.name in weights and t.data_type in _NARROW:
                np_dtype = _NARROW[t.data_type]
                feed = f"{_FEED_PREFIX}{t.name}"
                value = np.asarray(m.initializer(t.name)).astype(np_dtype)
                inits.append(numpy_helper.from_array(value, feed))
                extra_nodes.append(helper.make_node("Cast", [feed], [t.name], name=f"{_FEED_PREFIX}cast/{t.name}",
                                                    to=t.data_type))
                feeds[t.name] = feed
                defaults[feed] = value
            else:
                inits.append(m.whole_initializer(t))
                if t.name in weights:
                    feeds[t.name] = t.name
                    defaults[t.name] = np.asarray(m.initializer(t.name))

        def info(name: str) -> onnx.ValueInfoProto:
            vi = vis.get(name)
            elem = vi.type.tensor_type.elem_type if vi is not None and vi.type.HasField("tensor_type") else 0
            return helper.make_tensor_value_info(name, elem or onnx.TensorProto.FLOAT, None)

        graph = helper.make_graph(
            [*extra_nodes, *(protos[n] for n in nodes)], "onnxslice_stage", [info(i) for i in inputs],
            [info(o) if o in vis else helper.make_empty_tensor_value_info(o) for o in outputs], inits,
        )
        proto = helper.make_model(graph, opset_imports=list(m.skeleton.opset_import), ir_version=m.skeleton.ir_version)
        sess = make_session(runtime_proto(proto, (), list(feeds.values())), self.device, threads=self.threads)
        return _Stage(sess, inputs, outputs, feeds, defaults)

    # -- running -------------------------------------------------------------------------------
    def run(
        self,
        b: int,
        points: Sequence[FaultPoint],
        weights: Mapping[str, np.ndarray],
        overwrite: Callable[[str, np.ndarray], np.ndarray],
    ) -> dict[str, np.ndarray]:
        """The model outputs of batch ``b`` with ``weights`` swapped and each fault value passed through
        ``overwrite(value name, clean-or-recomputed array)``."""
        cache = dict(self._clean[b])
        for nodes, ws, value in self.plan_cached(points):
            if nodes:
                cache.update(self._session(nodes, ws).run(cache, weights))
            if value is not None:
                cache[value] = overwrite(value, cache[value])
        return {o: cache[o] for o in self.model.output_names}

    def plan_cached(self, points: Sequence[FaultPoint]) -> list[tuple[list[str], list[str], str | None]]:
        """:meth:`plan`, memoised per point set."""
        key = tuple(points)
        cache = self.__dict__.setdefault("_plans", {})
        if key not in cache:
            cache[key] = self.plan(points)
        return cache[key]
