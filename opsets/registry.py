"""The version-aware plugin registry.

Plugins register one *capability* of one op type: ``info`` (static metadata), ``vjp``,
``contributions``, ``prune``, ... under ``(domain, op_type, opset range)``. Capabilities of one op
may live in different modules (as JAX keeps ``primitive_jvps`` and ``primitive_transposes``
apart), so each analysis owns its own folder of rules and the registry assembles them.

Overlapping opset ranges for the same (capability, domain, op_type) fail at import time. A lookup
miss raises :class:`UnsupportedOpError` that names op, domain, opset, node and capability.
The registry never touches a graph.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from onnxslice.errors import UnsupportedOpError

__all__ = ["CAPABILITIES", "REGISTRY", "Registry", "RegistryError", "normalize_domain"]

#: Capabilities the analyses ask of plugins. ``info`` is the static metadata every op should have.
CAPABILITIES: tuple[str, ...] = ("info", "vjp", "contributions", "prune")

T = TypeVar("T")


class RegistryError(Exception):
    """A plugin registration conflicts with another (a bug in onnxslice or a user plugin)."""


def normalize_domain(domain: str) -> str:
    """Map the two spellings of the default ONNX domain to ``""``."""
    return "" if domain in ("", "ai.onnx") else domain


@dataclass(frozen=True)
class _Entry:
    since: int
    until: int | None  # inclusive; None = open-ended
    rule: Any
    origin: str

    def covers(self, opset: int) -> bool:
        return self.since <= opset and (self.until is None or opset <= self.until)

    def overlaps(self, other: _Entry) -> bool:
        lo = max(self.since, other.since)
        hi_a = self.until if self.until is not None else 10**9
        hi_b = other.until if other.until is not None else 10**9
        return lo <= min(hi_a, hi_b)


class Registry:
    """Rules keyed by (capability, domain, op_type) with opset ranges."""

    def __init__(self, capabilities: Iterable[str] = CAPABILITIES) -> None:
        self._capabilities = list(capabilities)
        self._table: dict[tuple[str, str, str], list[_Entry]] = {}

    @property
    def capabilities(self) -> tuple[str, ...]:
        """The capability names this registry knows, in declaration order."""
        return tuple(self._capabilities)

    def declare_capability(self, name: str) -> None:
        """Declare a new capability (for extensions); idempotent."""
        if name not in self._capabilities:
            self._capabilities.append(name)

    def add(
        self,
        capability: str,
        op_type: str,
        rule: Any,
        *,
        domain: str = "",
        since: int = 1,
        until: int | None = None,
        origin: str = "",
    ) -> None:
        """Register ``rule`` as the ``capability`` of ``op_type`` for opsets ``since..until``.

        Raises:
            RegistryError: unknown capability, bad range, or overlap with an existing rule.
        """
        if capability not in self._capabilities:
            raise RegistryError(
                f"unknown capability '{capability}' for {op_type}; known: {', '.join(self._capabilities)}"
            )
        if until is not None and until < since:
            raise RegistryError(f"{capability} rule for {op_type}: empty opset range {since}..{until}")
        key = (capability, normalize_domain(domain), op_type)
        entry = _Entry(since, until, rule, origin)
        for other in self._table.get(key, []):
            if other.overlaps(entry):
                raise RegistryError(
                    f"overlapping '{capability}' rules for {domain or 'ai.onnx'}::{op_type}: "
                    f"opsets {since}..{until or 'latest'} ({origin}) and "
                    f"{other.since}..{other.until or 'latest'} ({other.origin})"
                )
        self._table.setdefault(key, []).append(entry)

    def register(
        self,
        capability: str,
        op_types: str | Iterable[str],
        *,
        domain: str = "",
        since: int = 1,
        until: int | None = None,
    ) -> Callable[[T], T]:
        """Decorator form of :meth:`add` for one or several op types sharing a rule."""
        names = [op_types] if isinstance(op_types, str) else list(op_types)

        def deco(rule: T) -> T:
            origin = f"{getattr(rule, '__module__', '?')}.{getattr(rule, '__qualname__', type(rule).__name__)}"
            for name in names:
                self.add(capability, name, rule, domain=domain, since=since, until=until, origin=origin)
            return rule

        return deco

    def find(self, capability: str, op_type: str, domain: str, opset: int) -> Any | None:
        """The rule for this op at this opset, or None."""
        for entry in self._table.get((capability, normalize_domain(domain), op_type), []):
            if entry.covers(opset):
                return entry.rule
        return None

    def lookup(self, capability: str, op_type: str, domain: str, opset: int, node: str = "") -> Any:
        """The rule for this op at this opset.

        Raises:
            UnsupportedOpError: no rule; the message names op, domain, opset, node and capability.
        """
        rule = self.find(capability, op_type, domain, opset)
        if rule is None:
            ranges = [
                f"{e.since}..{e.until or 'latest'}"
                for e in self._table.get((capability, normalize_domain(domain), op_type), [])
            ]
            hint = (
                f"Rules exist for opsets {', '.join(ranges)}; convert the model with "
                f"onnx.version_converter or add a rule for opset {opset}."
                if ranges
                else ""
            )
            raise UnsupportedOpError(op_type, domain, opset, capability, node=node, hint=hint)
        return rule

    def has(self, capability: str, op_type: str, domain: str, opset: int) -> bool:
        """Whether a rule exists."""
        return self.find(capability, op_type, domain, opset) is not None

    def ops(self, capability: str) -> Iterator[tuple[str, str]]:
        """Every (domain, op_type) with at least one rule for ``capability``."""
        for cap, domain, op in sorted(self._table):
            if cap == capability:
                yield domain, op


#: The process-wide registry that ``onnxslice.opsets`` fills at import.
REGISTRY = Registry()
