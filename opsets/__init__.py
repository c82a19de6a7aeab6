"""Per-op-type plugins for onnxslice, installed as ``onnxslice.opsets``.

One module per op family (:mod:`.ops`) holds the family's facts and registers every capability of its
ops (``info``, ``vjp``, ``contributions``, ``prune``) in :data:`REGISTRY` under ``(domain, op_type, opset
range)``; each capability's protocol is one module of :mod:`.capabilities`, the templates families share are
in :mod:`.templates`, and the gradient primitives in :mod:`.vjp`. Every module below this package is
imported once, in sorted order, so a new rule file registers itself by existing.
"""

from __future__ import annotations

import importlib
import pkgutil

from .capabilities.info import OpInfo, default_info
from .registry import CAPABILITIES, REGISTRY, Registry, RegistryError, normalize_domain

__all__ = [
    "CAPABILITIES",
    "REGISTRY",
    "OpInfo",
    "Registry",
    "RegistryError",
    "default_info",
    "normalize_domain",
]


def _import_all() -> None:
    for mod in sorted(pkgutil.walk_packages(__path__, prefix=f"{__name__}."), key=lambda m: m.name):
        importlib.import_module(mod.name)


_import_all()
