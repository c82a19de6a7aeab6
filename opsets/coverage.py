"""What a registered rule refuses at run time, declared next to the rule: how ``inspect`` tells "partial".

A rule that exists may still refuse some configurations of its op (an attribute value, an option of the
analysis, a value known only when it runs). Each such case is declared once with :func:`refuses`:

- ``applies(node, model)`` returns True when this node of this model is refused, False when it is not,
  and None when it depends on values or options known only at run time (``granularity='channel'``, a
  training-mode flag fed as an input, ...): such a case is listed as "may refuse". No ``applies`` at all
  means the case always depends on the run (an analysis option).

``inspect`` reports an op type as *partial* for a capability when one of its nodes has a refusal that
applies or may apply, with the cases. Declarations never change what a rule does; the rule still raises
its one-line :class:`~onnxslice.errors.UnsupportedOpError` (tests check that the two agree).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from onnxslice.opsets.registry import REGISTRY

from .registry import normalize_domain

__all__ = ["Refusal", "computed", "declared", "rank_over", "refusals", "refuses"]

Applies = Callable[[Any, Any], "bool | None"]


@dataclass(frozen=True)
class Refusal:
    """One configuration a rule refuses.

    Attributes:
        capability: ``vjp``, ``contributions``, ...
        case: what is refused, in a few words (e.g. ``"antialias=1"``).
        applies: ``(node, model)`` -> True (refused), False (not), None (decided at run time); None for
            a case that always depends on the run.
    """

    capability: str
    case: str
    applies: Applies | None = None

    def check(self, node: Any, model: Any) -> bool | None:
        """True, False or None (run time) for ``node`` of ``model``."""
        return None if self.applies is None else self.applies(node, model)


_TABLE: dict[tuple[str, str, str], list[Refusal]] = {}


def refuses(
    capability: str, op_types: str | Iterable[str], case: str, applies: Applies | None = None, *, domain: str = ""
) -> None:
    """Declare that the ``capability`` rule of ``op_types`` refuses ``case`` (see the module docstring)."""
    names = op_types.split() if isinstance(op_types, str) else list(op_types)
    for op in names:
        _TABLE.setdefault((capability, normalize_domain(domain), op), []).append(Refusal(capability, case, applies))


def refusals(capability: str, node: Any, model: Any) -> list[tuple[str, bool]]:
    """The declared cases that refuse (``True``) or may refuse at run time (``False``) this node."""
    out: list[tuple[str, bool]] = []
    for r in _TABLE.get((capability, normalize_domain(node.domain), node.op_type), []):
        got = r.check(node, model)
        if got is None:
            out.append((r.case, False))
        elif got:
            out.append((r.case, True))
    return out


def rank_over(model: Any, value: str, rank: int) -> bool | None:
    """Whether ``value`` has rank above ``rank`` (None when its rank is unknown)."""
    vi = model.value_info.get(value) if hasattr(model, "value_info") else None
    shape = getattr(vi, "shape", None)
    if shape is None and model.is_initializer(value):
        shape = model.initializer(value).shape
    return None if shape is None else (len(shape) > rank or None)


def computed(i: int) -> Applies:
    """``applies`` for "input ``i`` is not an initializer" (then it may depend on the input: decided at run time)."""
    return lambda n, m: None if n.input(i) and not m.is_initializer(n.input(i)) else False


def declared(capability: str, op_type: str, domain: str = "") -> list[str]:
    """Every case declared for the ``capability`` rule of ``op_type`` (whatever the node)."""
    return [r.case for r in _TABLE.get((capability, normalize_domain(domain), op_type), [])]


def coverage_markdown(capabilities: tuple[str, ...] = ("vjp", "contributions", "prune")) -> str:
    """The rule coverage table of the default domain as markdown (``docs/rules.md`` embeds it).

    A cell is ``yes`` (a rule), ``partial`` (a rule with declared refusals, listed in the last column) or
    ``-`` (no rule).
    """

    ops = sorted({op for cap in capabilities for d, op in REGISTRY.ops(cap) if d == ""})
    lines = ["| op | " + " | ".join(capabilities) + " | refused cases |", "|---" * (len(capabilities) + 2) + "|"]
    for op in ops:
        cells, notes = [], []
        for cap in capabilities:
            has = any(o == op and d == "" for d, o in REGISTRY.ops(cap))
            cases = declared(cap, op)
            cells.append("-" if not has else "partial" if cases else "yes")
            notes += [f"{cap}: {c}" for c in cases] if has else []
        lines.append(f"| {op} | " + " | ".join(cells) + f" | {'; '.join(notes)} |")
    return "\n".join(lines)
