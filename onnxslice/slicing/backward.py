"""NNSlicer backward analysis over a batch of samples: the reverse walk that owns the CONTRIB tables.

The walker gives the nodes in reverse topological order (ancestors of the seeded values only); each
node whose outputs carry non-zero CONTRIB is dispatched to its ``contributions`` rule, whose increments
are added to the tables of its input neurons and weights. A value's table is final once its producer
has run, so it is summed over the batch and freed then (memory stays bounded by the live frontier).
Samples stay independent along the batch axis: the result is the sum of the per-sample tables.
Nodes whose outputs carry no CONTRIB (shape subgraphs, dead branches) are never dispatched, so an op
with no rule only fails when CONTRIB actually reaches it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxslice.errors import UnsupportedOpError
from onnxslice.model import Model, Node
from onnxslice.opsets.capabilities.contrib import DEFAULT_CHUNK, ContribContext, ContribResult
from onnxslice.walk import Walker

__all__ = ["BackwardOptions", "backward"]


@dataclass(frozen=True)
class BackwardOptions:
    """Options of the backward analysis (see :func:`onnxslice.slicing.slice`)."""

    theta: float = 0.3
    granularity: str = "element"
    theta_denominator: str = "raw"
    theta_sum: str = "signed"
    chunk: int = DEFAULT_CHUNK
    accumulate: str = "signed"


def _deferred(node: Node, err: UnsupportedOpError) -> Any:
    def rule(ctx: ContribContext) -> ContribResult:
        raise err

    return rule


def _straight_through(model: Model, name: str) -> bool:
    """Whether ``name`` is an integer value of a quantize op that CONTRIB crosses (it holds no neurons)."""
    producer = model.producer(name)
    return producer is not None and bool(getattr(model.info(producer), "straight_through", False))


def _add(table: dict[str, np.ndarray], name: str, inc: np.ndarray) -> None:
    cur = table.get(name)
    if cur is None:
        table[name] = inc.astype(np.int32, copy=True)
    else:
        cur += inc


def backward(
    model: Model,
    values: Mapping[str, np.ndarray],
    deltas: Mapping[str, np.ndarray],
    seeds: Mapping[str, np.ndarray],
    options: BackwardOptions,
    axes: Mapping[str, int] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Run the backward analysis of one batch.

    Args:
        model: the model.
        values: recorded values and model inputs (batch axis first).
        deltas: forward-analysis deltas of the neuron values.
        seeds: initial CONTRIB per seeded value (batch axis first).
        options: theta and granularity options.
        axes: the sample axis of values whose samples are not on axis 0 (``Profile.axes``).

    Returns:
        ``(neurons, synapses)``: CONTRIB per neuron value summed over the batch (one sample's shape, or
        channels), and per weight initializer (the weight's shape), both int64.

    Raises:
        UnsupportedOpError: CONTRIB reaches a node whose op has no ``contributions`` rule.
    """
    live: dict[str, np.ndarray] = {k: v.astype(np.int32, copy=True) for k, v in seeds.items()}
    neurons: dict[str, np.ndarray] = {}
    synapses: dict[str, np.ndarray] = {}
    for step in Walker(model).reverse("contributions", start=list(seeds), on_missing=_deferred):
        node = step.node
        outs = [live.pop(o, None) for o in node.outputs]
        for o, c in zip(node.outputs, outs, strict=True):
            if c is not None and o in deltas:
                neurons[o] = c.sum(axis=(axes or {}).get(o, 0), dtype=np.int64)
        if not any(c is not None and c.any() for c in outs):
            continue
        ctx = _context(model, node, values, deltas, outs, options)
        shifted = [v for v in (*node.inputs, *node.outputs) if v and (axes or {}).get(v, 0)]
        try:
            res = step.rule(ctx)
        except (ValueError, IndexError) as e:
            if not shifted:
                raise
            raise UnsupportedOpError.for_node(
                node, "contributions",
                f"its rule expects samples on axis 0, but '{shifted[0]}' is time-first (samples on axis "
                f"{(axes or {})[shifted[0]]}); slice from a batch-first value (--target value:NAME[idx])",
            ) from e
        for i, inc in res.inputs.items():
            name = node.inputs[i]
            if name in deltas or _straight_through(model, name):
                _add(live, name, inc)
        for i, inc in res.synapses.items():
            name = node.inputs[i]
            if model.is_initializer(name):
                cur = synapses.get(name)
                synapses[name] = inc.astype(np.int64) if cur is None else cur + inc
    for name, c in live.items():  # model inputs, and seeds no node produces
        if name in deltas:
            neurons[name] = c.sum(axis=(axes or {}).get(name, 0), dtype=np.int64)
    return neurons, synapses


def _context(
    model: Model,
    node: Node,
    values: Mapping[str, np.ndarray],
    deltas: Mapping[str, np.ndarray],
    outs: list[np.ndarray | None],
    options: BackwardOptions,
) -> ContribContext:
    xs: list[np.ndarray | None] = []
    for name in node.inputs:
        if not name:
            xs.append(None)
        elif model.is_initializer(name):
            xs.append(model.initializer(name))
        else:
            xs.append(values[name])
    return ContribContext(
        node=node,
        x=tuple(xs),
        dx=tuple(deltas.get(n) if n else None for n in node.inputs),
        y=tuple(values[o] if o else np.zeros(0, np.float32) for o in node.outputs),
        dy=tuple(deltas.get(o) if o else None for o in node.outputs),
        out_contrib=tuple(outs),
        is_weight=tuple(bool(n) and model.is_initializer(n) for n in node.inputs),
        theta=options.theta,
        theta_denominator=options.theta_denominator,
        theta_sum=options.theta_sum,
        granularity=options.granularity,
        chunk=options.chunk,
        accumulate=options.accumulate,  # type: ignore[arg-type,unused-ignore]
    )
