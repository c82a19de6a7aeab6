"""Channel-group discovery: a dependency walk over the graph (as Torch-Pruning's DepGraph).

Starting from each layer's output channels, the walk asks every node the channels reach (as producer
or consumer) for its ``prune`` rule, and follows the values that carry the same channels, in both
directions: a residual Add couples both operands, so the layers feeding it join one group and are
pruned with one shared selection. A group collects every initializer slice and channel count that
goes with its channels. When any node or value cannot lose channels safely (a model output, Softmax
over the channels, a hard-coded Reshape, an op without a rule), the whole group is left alone and
keeps the reason. Nothing here edits the model.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnxslice.console import format_table
from onnxslice.model import Model, Node
from onnxslice.opsets import REGISTRY
from onnxslice.opsets.capabilities.prune import CountEdit, Effect, Port, Ref

__all__ = ["ChannelGroup", "GroupSet", "discover_groups"]


@dataclass
class ChannelGroup:
    """Channels removed together: the output channels of ``layers`` and everything that depends on them.

    Attributes:
        leader: the first source layer (the group's name in plans).
        size: number of channels.
        layers: source layers whose output channels these are (several when coupled by Add/Mul).
        members: every layer whose weight is sliced (sources, depthwise Convs, consumers).
        followers: layers whose output channels follow their input's (depthwise Convs).
        values: value name -> references of the channels in that tensor.
        cuts: (initializer, reference in its axes) slices that go with the channels.
        counts: (node name, edit) channel counts that shrink.
        segments: the selection removes the same number of channels from each of these equal parts.
        reason: why the group is left alone (None when prunable).
    """

    leader: str
    size: int
    layers: list[str] = field(default_factory=list)
    members: list[str] = field(default_factory=list)
    followers: list[str] = field(default_factory=list)
    values: dict[str, list[Ref]] = field(default_factory=dict)
    cuts: list[tuple[str, Ref]] = field(default_factory=list)
    counts: list[tuple[str, CountEdit]] = field(default_factory=list)
    segments: int = 1
    reason: str | None = None

    @property
    def prunable(self) -> bool:
        """Whether the group's channels can be removed."""
        return self.reason is None

    def max_removable(self) -> int:
        """The most channels that may go (at least one channel per segment stays)."""
        return self.size - self.segments


@dataclass
class GroupSet:
    """Every channel group of a model: the prunable ones and the ones left alone with their reasons."""

    groups: list[ChannelGroup]
    model: Model

    @property
    def prunable(self) -> list[ChannelGroup]:
        """Groups whose channels can be removed."""
        return [g for g in self.groups if g.prunable]

    @property
    def skipped(self) -> dict[str, str]:
        """Layer -> reason, for every layer whose output channels are left alone."""
        out: dict[str, str] = {}
        for g in self.groups:
            if g.reason is not None:
                for name in g.layers or [g.leader]:
                    out[name] = g.reason
        return out

    def of_layer(self, name: str) -> ChannelGroup | None:
        """The group whose source layers include ``name`` (None if the layer starts no group)."""
        for g in self.groups:
            if name in g.layers or name == g.leader or name in g.followers:
                return g
        return None

    def param_sizes(self) -> dict[str, tuple[int, ...]]:
        """Initializer -> shape, for every initializer a prunable group slices."""
        return {name: tuple(self.model.initializer(name).shape) for g in self.prunable for name, _ in g.cuts}

    def prunable_params(self) -> int:
        """Scalars in the initializers that prunable groups slice (the denominator of the planned ratio)."""
        return int(sum(math.prod(s) for s in self.param_sizes().values()))

    def removed_params(self, counts: dict[str, int]) -> int:
        """Scalars removed when group ``leader`` loses ``counts[leader]`` channels (exact, cross terms included)."""
        per_axis: dict[str, dict[int, int]] = {}
        for g in self.prunable:
            k = counts.get(g.leader, 0)
            for name, ref in g.cuts:
                ax = per_axis.setdefault(name, {})
                ax[ref.axis] = ax.get(ref.axis, 0) + k * ref.block
        removed = 0
        for name, shape in self.param_sizes().items():
            ax = per_axis.get(name, {})
            removed += math.prod(shape) - math.prod(d - ax.get(a, 0) for a, d in enumerate(shape))
        return removed

    def table(self) -> str:
        """Groups as a text table."""
        rows = [
            {
                "group": g.leader,
                "channels": g.size,
                "layers": ", ".join(g.layers) if len(g.layers) < 4 else f"{g.layers[0]} +{len(g.layers) - 1}",
                "slices": len(g.cuts),
                "status": "prunable" if g.prunable else f"left alone: {g.reason}",
            }
            for g in self.groups
        ]
        return format_table(rows, title=f"channel groups ({len(self.prunable)} prunable of {len(self.groups)})")

    def __repr__(self) -> str:
        return f"GroupSet({len(self.prunable)} prunable, {len(self.groups) - len(self.prunable)} left alone)"


class _ModelContext:
    """The read-only facts rules may ask (see :class:`onnxslice.opsets.capabilities.prune.Context`)."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self._outputs = set(model.output_names)

    def shape(self, value: str) -> tuple[Any, ...] | None:
        if self.model.is_initializer(value):
            return tuple(int(d) for d in self.model.initializer(value).shape)
        vi = self.model.value_info.get(value)
        return None if vi is None or vi.shape is None else vi.shape

    def is_const(self, value: str) -> bool:
        return bool(value) and self.model.is_initializer(value)

    def const(self, value: str) -> np.ndarray:
        return self.model.initializer(value)

    def is_graph_output(self, value: str) -> bool:
        return value in self._outputs


class _Walk:
    """One group's dependency walk."""

    def __init__(self, model: Model, ctx: _ModelContext, group: ChannelGroup) -> None:
        self.model, self.ctx, self.group = model, ctx, group
        self.queue: deque[tuple[str, Ref]] = deque()
        self.seen_values: set[tuple[str, Ref]] = set()
        self.seen_ports: set[tuple[str, Port, Ref]] = set()
        self.visited_nodes: set[str] = set()
        self.inputs = set(model.input_names)
        self.outputs = set(model.output_names)

    def stop(self, reason: str) -> None:
        if self.group.reason is None:
            self.group.reason = reason

    def apply(self, node: Node, port: Port, ref: Ref) -> None:
        key = (node.name, port, ref)
        if key in self.seen_ports or self.group.reason is not None:
            return
        self.seen_ports.add(key)
        self.visited_nodes.add(node.name)
        rule = REGISTRY.find("prune", node.op_type, node.domain, node.opset)
        if rule is None:
            self.stop(f"{node.op_type} '{node.name}' has no prune rule (channels cannot pass it)")
            return
        eff: Effect = rule(node, self.ctx, port, ref)
        if eff.blocked is not None:
            self.stop(f"{node.op_type} '{node.name}': {eff.blocked}")
            return
        g = self.group
        if eff.source and node.name not in g.layers:
            g.layers.append(node.name)
        g.segments = math.lcm(g.segments, eff.segments)
        for name, cut in eff.cuts:
            if (name, cut) not in g.cuts:
                g.cuts.append((name, cut))
        for edit in eff.counts:
            if (node.name, edit) not in g.counts:
                g.counts.append((node.name, edit))
        if eff.cuts and node.name not in g.members and any(
            name == node.input(w) for name, _ in eff.cuts for w in self.model.info(node).layer_weights
        ):
            g.members.append(node.name)
            outs = port[0] == "out" or any(v in node.outputs for v, _ in eff.refs)
            if outs and not eff.source and node.name not in g.followers:
                g.followers.append(node.name)
        for value, r in eff.refs:
            self.push(value, r)

    def push(self, value: str, ref: Ref) -> None:
        if (value, ref) in self.seen_values:
            return
        self.seen_values.add((value, ref))
        self.group.values.setdefault(value, []).append(ref)
        self.queue.append((value, ref))

    def run(self) -> None:
        while self.queue and self.group.reason is None:
            value, ref = self.queue.popleft()
            if value in self.outputs:
                self.stop(f"its channels reach the model output '{value}'")
                return
            if value in self.inputs:
                self.stop(f"its channels are those of the model input '{value}'")
                return
            producer = self.model.producer(value)
            if producer is not None:
                self.apply(producer, ("out", producer.outputs.index(value)), ref)
            for node in self.model.consumers(value):
                for i, v in enumerate(node.inputs):
                    if v == value:
                        self.apply(node, ("in", i), ref)
        if self.group.reason is None:
            self._check_shared()

    def _check_shared(self) -> None:
        for name, _ in self.group.cuts:
            outside = [n.name for n in self.model.consumers(name) if n.name not in self.visited_nodes]
            if outside:
                self.stop(f"its initializer '{name}' is shared with node '{outside[0]}' outside the group")
                return


def _overlaps(groups: list[ChannelGroup]) -> None:
    """Stop groups whose channels overlap another group's in some tensor (ambiguous selections)."""
    spans: dict[tuple[str, int], list[tuple[int, int, ChannelGroup]]] = {}
    for g in groups:
        if g.prunable:
            for value, refs in g.values.items():
                for r in refs:
                    spans.setdefault((value, r.axis), []).append((r.offset, r.end, g))
    for (value, _), items in spans.items():
        items.sort(key=lambda t: t[0])
        for (_s0, e0, g0), (s1, _e1, g1) in itertools.pairwise(items):
            if g0 is not g1 and s1 < e0:
                for g in (g0, g1):
                    g.reason = g.reason or f"its channels overlap another group's in '{value}'"


def discover_groups(model: Model) -> GroupSet:
    """Find every channel group of ``model`` by a dependency walk from each layer's output channels.

    Returns:
        A :class:`GroupSet`; layers whose channels cannot be removed safely are in groups with a reason.
    """
    ctx = _ModelContext(model)
    groups: list[ChannelGroup] = []
    assigned: set[str] = set()
    followers: dict[str, str] = {}  # layers that start no group (depthwise): why, if no group takes them
    for layer in model.layers:
        if layer.name in assigned:
            continue
        node = model.node(layer.name)
        rule = REGISTRY.find("prune", node.op_type, node.domain, node.opset)
        start = rule.source_ref(node, ctx) if rule is not None and hasattr(rule, "source_ref") else None
        if not isinstance(start, Ref):
            if start is None:
                groups.append(ChannelGroup(layer.name, layer.out_channels, [layer.name],
                                           reason=f"{node.op_type} '{node.name}' has no prune rule"))
            elif start.startswith("a depthwise Conv"):
                followers[layer.name] = start
            else:
                groups.append(ChannelGroup(layer.name, layer.out_channels, [layer.name], reason=str(start)))
            continue
        group = ChannelGroup(layer.name, start.size)
        walk = _Walk(model, ctx, group)
        walk.apply(node, ("out", 0), start)
        walk.push(node.outputs[0], start)
        walk.run()
        if group.prunable and group.size - group.segments < 1:
            group.reason = "it has a single channel per segment"
        assigned.update(group.layers or [layer.name])
        groups.append(group)
    _overlaps(groups)
    taken = {m for g in groups if g.prunable for m in g.followers}
    for name, why in followers.items():
        if name not in taken:
            layer = model.layer(name)
            groups.append(ChannelGroup(name, layer.out_channels, [name], reason=f"{why}, which is left alone"))
    return GroupSet(groups, model)
