"""onnxslice: slice, rank and rewrite any ONNX model (NNSlicer + SAfER).

The public API is ``__all__``. Analyses that live in optional modules are imported on first use;
a name whose module is not part of this build is absent, never a stub.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from onnxslice.data import Dataset, load_data
from onnxslice.errors import DataError, ModelError, OnnxSliceError, PlanError, UnsupportedOpError
from onnxslice.model import Layer, Model, Node, ValueInfo, load, save_model

# Functions that share their module's name (onnxslice.record.record, ...) are bound eagerly: once the
# submodule is imported, the import system would otherwise shadow a lazy name with the module itself.
from onnxslice.profile import Profile, profile
from onnxslice.record import Recorder, Trace, record
from onnxslice.sensitivity import LayerScores, perturbation_importance, sensitivity
from onnxslice.version import __version__

# name -> module that defines it; imported lazily so `import onnxslice` stays fast.
_LAZY = {
    "Walker": "onnxslice.walk",
    "gradients": "onnxslice.grad",
    "Gradients": "onnxslice.grad",
    "slice": "onnxslice.slicing",
    "Slice": "onnxslice.slicing",
    "plan_pruning": "onnxslice.plans",
    "prune": "onnxslice.rewrite",
    "plan_bits": "onnxslice.rewrite",
    "quantize": "onnxslice.rewrite",
    "Plan": "onnxslice.rewrite",
}
_LAZY = {k: v for k, v in _LAZY.items() if importlib.util.find_spec(v) is not None}

__all__ = [
    "DataError",
    "Dataset",
    "Layer",
    "Model",
    "ModelError",
    "Node",
    "OnnxSliceError",
    "PlanError",
    "UnsupportedOpError",
    "ValueInfo",
    "__version__",
    "LayerScores",
    "Profile",
    "Recorder",
    "Trace",
    "load",
    "load_data",
    "perturbation_importance",
    "profile",
    "record",
    "save_model",
    "sensitivity",
    *sorted(_LAZY),
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'onnxslice' has no attribute '{name}'")
