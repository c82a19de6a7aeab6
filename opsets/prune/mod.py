"""``prune`` rule of Mod: a broadcasting elementwise op, like Add or Sub (:func:`.elementwise.broadcasting`)."""

from __future__ import annotations

from ..registry import REGISTRY
from .elementwise import broadcasting

REGISTRY.register("prune", "Mod", since=10)(broadcasting)
