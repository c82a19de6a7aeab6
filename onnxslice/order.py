"""Graph order: the stable topological sort every model is normalised with (the walker's own order).

It sits below :mod:`onnxslice.model` so that loading a model does not import the walker.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Iterable, Sequence
from typing import TYPE_CHECKING

from onnxslice.errors import ModelError

if TYPE_CHECKING:
    from onnxslice.model import Node

__all__ = ["topological_order"]


def topological_order(nodes: Sequence[Node], graph_inputs: Iterable[str], initializers: Collection[str]) -> list[Node]:
    """Nodes sorted so that every node comes after the producers of its inputs.

    Stable: nodes already in order keep their order (Kahn's algorithm over the original index).

    Raises:
        ModelError: the graph has a cycle or reads a value nobody produces.
    """
    available = set(graph_inputs) | set(initializers) | {""}
    producer = {o: i for i, n in enumerate(nodes) for o in n.outputs if o}
    deps: list[set[int]] = []
    users: dict[int, list[int]] = {}
    for i, n in enumerate(nodes):
        d: set[int] = set()
        for v in n.inputs:
            if v in available:
                continue
            if v not in producer:
                raise ModelError(
                    f"node '{n.name}' ({n.op_type}) reads '{v}', which no node, input or initializer "
                    "provides; the graph is incomplete"
                )
            d.add(producer[v])
        deps.append(d)
        for j in d:
            users.setdefault(j, []).append(i)
    pending = [len(d) for d in deps]
    ready = [i for i, c in enumerate(pending) if c == 0]
    heapq.heapify(ready)
    order: list[Node] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(nodes[i])
        for j in users.get(i, []):
            pending[j] -= 1
            if pending[j] == 0:
                heapq.heappush(ready, j)
    if len(order) != len(nodes):
        stuck = [nodes[i].name for i, c in enumerate(pending) if c > 0][:5]
        raise ModelError(f"the graph has a cycle through node(s) {', '.join(stuck)}")
    return order
