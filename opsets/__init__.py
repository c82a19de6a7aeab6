"""Per-op-type plugins for onnxslice, installed as ``onnxslice.opsets``.

Each capability keeps its rules in its own modules (``info`` here; ``vjp``, ``contributions`` and
``prune`` in their folders), registered in :data:`REGISTRY` under ``(domain, op_type, opset range)``.
Every module below this package is imported once, in sorted order, so a new rule file registers itself
by existing.
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
