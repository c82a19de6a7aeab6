"""``LayerScores``: one importance number per layer, from a criterion or a ground truth."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxslice.artifacts import check_belongs, check_finite_number, check_keys, read_json
from onnxslice.console import format_table
from onnxslice.errors import DataError
from onnxslice.io import save_json

__all__ = ["LayerScores"]


@dataclass
class LayerScores:
    """Importance of each layer: higher means more important.

    Attributes:
        scores: layer (node) name -> score, in the model's topological order.
        criterion: what produced it (``wgrad``, ``weight``, ``groundtruth:N:weights``, ...).
        reduction: the psi reduction (``linf``, ...), empty for ground truths.
        meta: anything else worth recording (data, target, samples, timings, ...).
    """

    scores: dict[str, float]
    criterion: str
    reduction: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def ranking(self) -> list[str]:
        """Layer names, most important first (ties keep model order)."""
        names = list(self.scores)
        return sorted(names, key=lambda n: (-self.scores[n], names.index(n)))

    def ranks(self) -> dict[str, int]:
        """Layer name -> rank (0 = most important)."""
        return {n: i for i, n in enumerate(self.ranking())}

    def array(self, order: list[str] | None = None) -> np.ndarray:
        """Scores as an array in ``order`` (default: model order)."""
        return np.array([self.scores[n] for n in (order or list(self.scores))], dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "kind": "LayerScores",
            "criterion": self.criterion,
            "reduction": self.reduction,
            "scores": self.scores,
            "meta": self.meta,
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write as JSON (atomic)."""
        return save_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LayerScores:
        """Read scores written by :meth:`save`, checking keys and finite scores.

        Raises:
            DataError: missing, malformed or incomplete file; the message names it and the problem.
        """
        p = Path(path)
        d = read_json(p, "scores")
        if d.get("kind") != "LayerScores":
            raise DataError(f"'{p}' is not a LayerScores file (its 'kind' is {d.get('kind')!r})")
        check_keys(p, "scores", d, {"scores": dict, "criterion": str})
        if not d["scores"]:
            raise DataError(f"scores '{p}' hold no layer")
        scores = {str(k): check_finite_number(p, "scores", f"scores.{k}", v) for k, v in d["scores"].items()}
        meta = d.get("meta", {})
        if not isinstance(meta, dict):
            raise DataError(f"scores '{p}': 'meta' is not an object")
        return cls(scores, d["criterion"], str(d.get("reduction", "") or ""), meta)

    def check_model(self, model: Any, path: str | os.PathLike[str] | None = None) -> None:
        """Raise DataError when these scores were computed on another model or name layers it lacks."""
        check_belongs(path, "scores", self.meta, model)
        known = {x.name for x in model.layers}
        unknown = [k for k in self.scores if k not in known]
        if unknown:
            raise DataError(f"scores{f' {str(path)!r}' if path else ''} name layer(s) {', '.join(unknown[:5])} "
                            "that this model does not have; were they computed on another model?")

    def table(self) -> str:
        """Rank, layer, score as a text table."""
        ranks = self.ranks()
        rows: list[dict[str, Any]] = [
            {"rank": ranks[n] + 1, "layer": n, "score": float(self.scores[n])} for n in self.ranking()
        ]
        name = f"{self.criterion}" + (f" / {self.reduction}" if self.reduction else "")
        return format_table(rows, title=f"layer scores: {name}")

    def __repr__(self) -> str:
        top = ", ".join(self.ranking()[:3])
        red = "/" + self.reduction if self.reduction else ""
        return f"LayerScores({self.criterion}{red}, {len(self.scores)} layers, top: {top})"
