"""The package version (its own module, so that any layer can read it without importing the API)."""

from __future__ import annotations

__version__ = "0.1.0"
