"""The :class:`Gradients` result: d target / d every weight and input, with save/load and a per-layer table."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxslice.artifacts import check_array, check_keys
from onnxslice.console import format_table
from onnxslice.errors import DataError
from onnxslice.io import load_npz, save_npz

__all__ = ["Gradients"]


@dataclass
class Gradients:
    """Gradients of a scalar target (per sample) with respect to weights and inputs.

    Attributes:
        weights: initializer name -> d target / d w, summed over samples, or ``[N, *w.shape]`` when
            ``per_sample``.
        inputs: float model input -> d target / d x for each sample (the input's shape).
        target_values: the scalar target per sample, shape ``[N]``.
        target: the target spec (``pred``, ``class:3``, ``loss``, ``output-norm``, ``cotangent``).
        per_sample: whether ``weights`` keep the sample axis.
        layers: layer (node) name -> its weight initializers (weight first, then bias), for tables.
        weight_norms: initializer name -> L2 norm of the weight values the gradient was taken at.
        meta: free-form provenance (model fingerprint, target value name, ...).
    """

    weights: dict[str, np.ndarray]
    inputs: dict[str, np.ndarray]
    target_values: np.ndarray
    target: str
    per_sample: bool
    layers: dict[str, list[str]] = field(default_factory=dict)
    weight_norms: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        """Number of samples the gradients were computed over."""
        return len(self.target_values)

    def summed(self) -> Gradients:
        """The same gradients with per-sample weight gradients summed over samples."""
        if not self.per_sample:
            return self
        return Gradients(
            {k: v.sum(axis=0) for k, v in self.weights.items()},
            self.inputs,
            self.target_values,
            self.target,
            False,
            self.layers,
            self.weight_norms,
            self.meta,
        )

    def layer_grad(self, layer: str) -> np.ndarray:
        """The gradient of a layer's main weight."""
        return self.weights[self.layers[layer][0]]

    def summary(self) -> list[dict[str, Any]]:
        """One row per layer (then per remaining weight): gradient L2 norm, weight L2 norm, their ratio.

        Per-sample gradients are summed over samples first.
        """
        g = self.summed().weights
        rows: list[dict[str, Any]] = []
        seen: set[str] = set()
        for layer, names in self.layers.items():
            w = names[0]
            if w not in g:
                continue
            seen.update(names)
            gn = float(np.linalg.norm(g[w]))
            wn = float(self.weight_norms.get(w, float("nan")))
            rows.append(
                {
                    "layer": layer,
                    "weight": w,
                    "shape": list(g[w].shape),
                    "grad_norm": gn,
                    "weight_norm": wn,
                    "ratio": gn / wn if wn else float("nan"),
                }
            )
        for w, arr in g.items():
            if w in seen:
                continue
            gn = float(np.linalg.norm(arr))
            wn = float(self.weight_norms.get(w, float("nan")))
            rows.append(
                {
                    "layer": "",
                    "weight": w,
                    "shape": list(arr.shape),
                    "grad_norm": gn,
                    "weight_norm": wn,
                    "ratio": gn / wn if wn else float("nan"),
                }
            )
        return rows

    def table(self, title: str | None = None) -> str:
        """The :meth:`summary` as a text table."""
        t = (
            title
            or f"d {self.target} over {self.num_samples} samples (mean target {float(np.mean(self.target_values)):.4g})"
        )
        return format_table(self.summary(), ["layer", "weight", "shape", "grad_norm", "weight_norm", "ratio"], t)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Save as ``.npz`` (``weight/<name>``, ``input/<name>``, ``target_values``), atomically."""
        arrays = {f"weight/{k}": v for k, v in self.weights.items()}
        arrays.update({f"input/{k}": v for k, v in self.inputs.items()})
        arrays["target_values"] = self.target_values
        meta = {
            "kind": "Gradients",
            "target": self.target,
            "per_sample": self.per_sample,
            "layers": self.layers,
            "weight_norms": self.weight_norms,
            "meta": self.meta,
        }
        return save_npz(path, arrays, meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Gradients:
        """Load gradients written by :meth:`save`, checking header, keys, dtypes and finite values.

        Raises:
            DataError: the file is not a complete gradients file; the message names it and the problem.
        """
        arrays, meta = load_npz(path, kind="Gradients")
        check_keys(path, "gradients", meta, {"target": str, "per_sample": bool, "layers": dict,
                                             "weight_norms": dict, "meta": dict})
        if "target_values" not in arrays:
            raise DataError(f"gradients '{path}' have no 'target_values'; the file is incomplete")
        tv = check_array(path, "gradients", "target_values", arrays["target_values"], dtype="float", ndim=1)
        for k, v in arrays.items():
            if k.startswith(("weight/", "input/")):
                check_array(path, "gradients", k, v, dtype="float")
                if (meta["per_sample"] or k.startswith("input/")) and (v.ndim == 0 or len(v) != len(tv)):
                    raise DataError(f"gradients '{path}': '{k}' has {len(v) if v.ndim else 0} samples, "
                                    f"'target_values' {len(tv)}")
            elif k != "target_values":
                raise DataError(f"gradients '{path}' have an unexpected array '{k}'")
        return cls(
            {k[7:]: v for k, v in arrays.items() if k.startswith("weight/")},
            {k[6:]: v for k, v in arrays.items() if k.startswith("input/")},
            arrays["target_values"],
            str(meta["target"]),
            bool(meta["per_sample"]),
            {k: list(v) for k, v in meta.get("layers", {}).items()},
            {k: float(v) for k, v in meta.get("weight_norms", {}).items()},
            dict(meta.get("meta", {})),
        )

    def __repr__(self) -> str:
        kind = "per-sample" if self.per_sample else "summed"
        return (
            f"Gradients(target={self.target}, {self.num_samples} samples, {len(self.weights)} weights ({kind}), "
            f"{len(self.inputs)} inputs)"
        )
