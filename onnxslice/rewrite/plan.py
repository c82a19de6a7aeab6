"""``Plan``: a per-layer decision (pruning ratio, precision, ...) that a rewrite pass applies.

A plan is a value: it saves to and loads from JSON, prints as a table, and is validated against a
model before any pass runs, so that a bad plan raises :class:`PlanError` and nothing is written.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxslice.artifacts import check_belongs, read_json
from onnxslice.console import format_table
from onnxslice.errors import PlanError
from onnxslice.io import save_json

if TYPE_CHECKING:
    from onnxslice.model import Model

__all__ = ["Plan"]


@dataclass
class Plan:
    """Per-layer decisions for one rewrite.

    Attributes:
        kind: ``"prune"`` or ``"quantize"`` (the pass that applies it).
        layers: layer (node) name -> decision; its form belongs to the pass (a ratio, a precision
            name, or a dict of settings).
        budget: how the plan was computed (``uniform``, ``sensitivity``, ``slice``, ``user``, ...).
        meta: anything else worth recording (criterion, target ratio, seed, ...).
    """

    kind: str
    layers: dict[str, Any]
    budget: str = "user"
    meta: dict[str, Any] = field(default_factory=dict)

    def validate(self, model: Model) -> None:
        """Raise :class:`PlanError` when the plan belongs to another model or names layers the model lacks."""
        check_belongs(None, f"{self.kind or 'rewrite'} plan", self.meta, model, PlanError)
        known = {x.name for x in model.layers}
        unknown = [name for name in self.layers if name not in known]
        if unknown:
            raise PlanError(
                f"the {self.kind} plan names unknown layer(s) {', '.join(unknown[:5])}; "
                f"the model's layers are {', '.join(sorted(known)[:12])}{' ...' if len(known) > 12 else ''}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"kind": self.kind, "budget": self.budget, "layers": self.layers, "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        """Build from :meth:`to_dict` output (or a hand-written JSON plan)."""
        if not isinstance(d, dict) or "layers" not in d or not isinstance(d["layers"], dict):
            raise PlanError("a plan is a JSON object with a 'layers' object (layer name -> decision)")
        meta = d.get("meta", {})
        if not isinstance(meta, dict):
            raise PlanError("a plan's 'meta' must be a JSON object")
        for key in ("kind", "budget"):
            if key in d and not isinstance(d[key], str):
                raise PlanError(f"a plan's '{key}' must be a string, not {type(d[key]).__name__}")
        return cls(str(d.get("kind", "")), dict(d["layers"]), str(d.get("budget", "user")), dict(meta))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write as JSON (atomic)."""
        return save_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Plan:
        """Read a JSON plan.

        Raises:
            PlanError: missing file or not a plan.
        """
        p = Path(path)
        d = read_json(p, "plan", PlanError)
        try:
            return cls.from_dict(d)
        except PlanError as e:
            raise PlanError(f"plan file '{p}': {e}") from None

    def table(self) -> str:
        """The plan as a text table."""
        rows = [
            {"layer": k, "decision": json.dumps(v) if isinstance(v, (dict, list)) else v}
            for k, v in self.layers.items()
        ]
        return format_table(rows, title=f"{self.kind} plan ({self.budget})")

    def __repr__(self) -> str:
        return f"Plan({self.kind}, {len(self.layers)} layers, budget={self.budget})"
