"""The graph walker: topological order and forward/reverse walks that dispatch nodes to plugins.

The walker owns order; plugins own op semantics; it never edits a graph. A walk yields
``(node, rule)`` pairs, where ``rule`` is the registered plugin for the requested capability.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from onnxslice.errors import UnsupportedOpError
from onnxslice.opsets import REGISTRY
from onnxslice.order import topological_order

if TYPE_CHECKING:
    from onnxslice.model import Model, Node

__all__ = ["Step", "Walker", "ancestors", "descendants", "topological_order"]

OnMissing = Literal["raise", "skip", "yield"]


def ancestors(model: Model, values: Iterable[str]) -> set[str]:
    """Names of the nodes whose outputs (transitively) feed ``values``."""
    seen: set[str] = set()
    stack = list(values)
    while stack:
        node = model.producer(stack.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        stack.extend(v for v in node.inputs if v)
    return seen


def descendants(model: Model, values: Iterable[str]) -> set[str]:
    """Names of the nodes that (transitively) read ``values``."""
    seen: set[str] = set()
    stack = list(values)
    while stack:
        for node in model.consumers(stack.pop()):
            if node.name not in seen:
                seen.add(node.name)
                stack.extend(o for o in node.outputs if o)
    return seen


@dataclass(frozen=True)
class Step:
    """One stop of a walk: the node and its rule for the capability (None if missing and allowed)."""

    node: Node
    rule: Any


class Walker:
    """Forward and reverse topological walks over a model, dispatching to a registry.

    Args:
        model: the model to walk.
        registry: the plugin registry (default: the global one).
    """

    def __init__(self, model: Model, registry: Any = None) -> None:
        self.model = model
        self.registry = registry if registry is not None else REGISTRY

    def _steps(
        self,
        nodes: Iterable[Node],
        capability: str | None,
        on_missing: OnMissing | Callable[[Node, UnsupportedOpError], Any],
    ) -> Iterator[Step]:
        for node in nodes:
            if capability is None:
                yield Step(node, None)
                continue
            try:  # lookup's error names the opsets that do have a rule
                yield Step(node, self.registry.lookup(capability, node.op_type, node.domain, node.opset, node.name))
                continue
            except UnsupportedOpError as e:
                err = e
            if on_missing == "raise":
                raise err
            if on_missing == "yield":
                yield Step(node, None)
            elif callable(on_missing):
                fallback = on_missing(node, err)
                if fallback is not None:
                    yield Step(node, fallback)

    def forward(
        self,
        capability: str | None = None,
        *,
        until: Iterable[str] | None = None,
        on_missing: OnMissing | Callable[[Node, UnsupportedOpError], Any] = "raise",
    ) -> Iterator[Step]:
        """Nodes in topological order (only ancestors of ``until`` values when given)."""
        keep = ancestors(self.model, until) if until is not None else None
        nodes = [n for n in self.model.nodes if keep is None or n.name in keep]
        return self._steps(nodes, capability, on_missing)

    def reverse(
        self,
        capability: str | None = None,
        *,
        start: Iterable[str] | None = None,
        on_missing: OnMissing | Callable[[Node, UnsupportedOpError], Any] = "raise",
    ) -> Iterator[Step]:
        """Nodes in reverse topological order (only ancestors of ``start`` values when given).

        ``on_missing`` decides what a node without a rule does: ``"raise"`` an
        :class:`UnsupportedOpError`, ``"skip"`` it, ``"yield"`` it with ``rule=None``, or a callable
        ``(node, error) -> fallback rule | None``.
        """
        keep = ancestors(self.model, start) if start is not None else None
        nodes = [n for n in reversed(self.model.nodes) if keep is None or n.name in keep]
        return self._steps(nodes, capability, on_missing)

    def missing(self, capability: str) -> list[Node]:
        """Nodes that have no rule for ``capability``."""
        return [s.node for s in self._steps(self.model.nodes, capability, "yield") if s.rule is None]
