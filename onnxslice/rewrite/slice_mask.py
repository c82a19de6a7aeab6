"""The slice pass: zero every synapse outside an NNSlicer slice (``onnxslice slice --model``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from onnxslice.errors import DataError
from onnxslice.model import Model
from onnxslice.rewrite.passes.initializers import ReplaceInitializers
from onnxslice.rewrite.passes.manager import PassManager

if TYPE_CHECKING:
    from onnxslice.slicing.result import Slice

__all__ = ["SliceMask", "slice_to_model"]


def slice_to_model(s: Slice, model: Model, min_contrib: int = 1) -> Model:
    """The model with every synapse outside the slice ``s`` zeroed (``|CONTRIB| < min_contrib``).

    Only weights the analysis reached are masked (weights no CONTRIB reached are all outside: they
    are zeroed too when they belong to a layer the slice covers). Biases and normalisation
    parameters are kept. The :class:`SliceMask` pass runs through the pass manager (checked, opens in
    onnxruntime). A pass: it reads the slice's fields only, so this module does not import the analysis.

    Raises:
        DataError: the slice belongs to another model.
    """
    if s.fingerprint and s.fingerprint != model.fingerprint:
        raise DataError(
            f"this slice was computed on another model (fingerprint {s.fingerprint}, the model's is "
            f"{model.fingerprint})"
        )
    s.check_model(model)
    masks = {name: np.abs(c) >= min_contrib for name, c in s.synapses.items()}
    for r in s.layers:
        masks.setdefault(r["weight"], np.zeros(model.initializer(r["weight"]).shape, bool))
    arrays = {}
    for name, mask in masks.items():
        w = np.array(model.initializer(name), copy=True)
        w[~mask] = 0
        arrays[name] = w
    kept = int(sum(m.sum() for m in masks.values()))
    total = int(sum(m.size for m in masks.values()))
    extra = {"targets": s.targets, "theta": s.theta, "samples": s.count, "kept": kept, "of": total}
    return PassManager("slice", [SliceMask(arrays, extra)]).run(model, extra=extra).model


class SliceMask(ReplaceInitializers):
    """The slice pass: the weights with every synapse outside the slice zeroed (computed by
    :func:`slice_to_model` from the slice's CONTRIB)."""

    name = "slice-mask"
