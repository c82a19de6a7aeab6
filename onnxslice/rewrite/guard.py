"""``guard`` and ``full_duplication``: the guard passes (:mod:`onnxslice.rewrite.passes.guard`) run
through the pass manager, which checks the guarded model once (full check, provenance, onnxruntime)."""

from __future__ import annotations

from collections.abc import Sequence

from onnxslice.model import Model
from onnxslice.rewrite.passes.guard import FAULT_OUTPUT, FullDuplication, Guard, guard_unit
from onnxslice.rewrite.passes.manager import PassManager

__all__ = ["FAULT_OUTPUT", "full_duplication", "guard", "guard_unit"]


def guard(model: Model, layers: Sequence[str], *, rtol: float = 1e-4, atol: float = 1e-6) -> Model:
    """Guard ``layers`` of ``model`` (see :mod:`onnxslice.rewrite.passes.guard`); returns a new checked model.

    Args:
        model: the model (not modified).
        layers: node names to guard (layers of the model: see ``Model.layers`` and
            :func:`onnxslice.apps.faults.fault_layers`).
        rtol: relative tolerance per element.
        atol: absolute floor of the tolerance (for outputs near zero).

    Raises:
        ModelError: no layer to guard, an unknown layer, or a non-float layer output.
        DataError: a negative or non-finite tolerance.
    """
    return PassManager("guard", [Guard(layers, rtol=rtol, atol=atol)]).run(
        model, added_outputs=(FAULT_OUTPUT,)).model


def full_duplication(model: Model, *, rtol: float = 1e-4, atol: float = 1e-6) -> Model:
    """The baseline: the whole graph computed twice and every output compared (see
    :class:`onnxslice.rewrite.passes.guard.FullDuplication`)."""
    return PassManager("guard-full-duplication", [FullDuplication(rtol=rtol, atol=atol)]).run(
        model, added_outputs=(FAULT_OUTPUT,)).model
