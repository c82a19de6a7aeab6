"""``ReplaceInitializers``: give named initializers new values (unstructured pruning masks, the slice
mask, protect's lock and unlock)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxslice.rewrite.passes.base import Pass, PassResult, replace_values

__all__ = ["ReplaceInitializers"]


class ReplaceInitializers(Pass):
    """Swap the values of initializers (same names; shape and dtype as given).

    Args:
        arrays: initializer name -> new value.
        report: what to record for the pass (e.g. how many weights were zeroed).
    """

    name = "replace-initializers"

    def __init__(self, arrays: Mapping[str, np.ndarray], report: Mapping[str, Any] | None = None) -> None:
        self.arrays = dict(arrays)
        self.report = dict(report or {})

    def call(self, model: ir.Model) -> PassResult:
        if not self.arrays:
            return PassResult(model, False, self.report)
        replace_values(model.graph, self.arrays)
        return PassResult(model, True, self.report)
