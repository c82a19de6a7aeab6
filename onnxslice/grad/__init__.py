"""Reverse-mode gradients from the ONNX graph: the engine, the result, targets and checks.

``gradients(model, inputs, target)`` and :class:`GradientEngine` differentiate a scalar target with
respect to weights and inputs (targets: :mod:`onnxslice.targets`) using the VJP rules of the op families
(``onnxslice.opsets.ops``, written against the primitives in ``onnxslice.opsets.vjp``); :func:`check_vjp`
compares them with central finite differences through onnxruntime.
"""

from __future__ import annotations

from onnxslice.targets import TARGET_KINDS, parse_target
from onnxslice.targets import TargetSpec as Target

from .check import VjpCheck, check_vjp
from .engine import GradientEngine, clear_cache, gradients
from .result import Gradients

__all__ = [
    "TARGET_KINDS",
    "GradientEngine",
    "Gradients",
    "Target",
    "VjpCheck",
    "check_vjp",
    "clear_cache",
    "gradients",
    "parse_target",
]
