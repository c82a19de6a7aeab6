"""The package list in pyproject.toml covers every package folder (opsets/ maps to onnxslice.opsets)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _packages_on_disk() -> set[str]:
    found = set()
    for base, prefix in (("onnxslice", "onnxslice"), ("opsets", "onnxslice.opsets")):
        for init in (ROOT / base).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / base)
            found.add(".".join([prefix, *rel.parts]))
    return found


def test_packaging_lists_every_package():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(cfg["tool"]["setuptools"]["packages"])
    missing = _packages_on_disk() - listed
    assert not missing, f"add {sorted(missing)} to [tool.setuptools] packages in pyproject.toml"


def test_packaging_opsets_importable_as_subpackage():
    import onnxslice.opsets as ops

    assert Path(ops.__file__).parent == ROOT / "opsets"


def test_public_names_are_not_shadowed_by_submodules():
    """Importing every submodule must not turn ``onnxslice.record`` (a function) into a module."""
    import importlib
    import pkgutil
    import types

    import onnxslice

    for mod in pkgutil.walk_packages(onnxslice.__path__, prefix="onnxslice."):
        importlib.import_module(mod.name)
    for name in onnxslice.__all__:
        value = getattr(onnxslice, name)
        assert not isinstance(value, types.ModuleType), f"onnxslice.{name} is a module, not the API object"
    assert callable(onnxslice.record) and callable(onnxslice.profile) and callable(onnxslice.sensitivity)
