"""CLI verbs, one module each (discovered by ``onnxslice.cli``), plus their shared helpers."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from onnxslice.io import _default

__all__ = ["add_common", "emit_json"]


def add_common(p: argparse.ArgumentParser, *, model: bool = True, data: bool = False) -> None:
    """Arguments most verbs share: MODEL, --data, --json, --device."""
    if model:
        p.add_argument("model", metavar="MODEL", help="path to an .onnx file")
    if data:
        p.add_argument(
            "--data",
            "-d",
            required=True,
            help="data: file.npz, an image folder, or builtin:NAME (mnist, moons, digits, samples-*)",
        )
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of tables")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="onnxruntime device")


def emit_json(obj: Any) -> None:
    """Print ``obj`` as JSON on stdout."""
    json.dump(obj, sys.stdout, indent=2, default=_default)
    sys.stdout.write("\n")
