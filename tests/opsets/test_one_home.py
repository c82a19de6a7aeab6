"""One home per op: every rule of an op (info, vjp, contributions, prune, declared refusals) is registered by
one family module under ``opsets/ops/``, and every registered rule is registered by one of them.

Each family module is re-executed in a fresh interpreter with the registry's ``add`` and ``refuses``
replaced by recorders, so the test sees which module registers what (the rules' own ``__module__`` may be a
shared template's).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict

from onnxslice.opsets import REGISTRY

SCRIPT = r"""
import importlib, json, pkgutil
import onnxslice.opsets.ops as ops
from onnxslice.opsets import REGISTRY, coverage

seen, current = [], None

def add(capability, op_type, rule, *, domain="", since=1, until=None, origin=""):
    seen.append([capability, domain, op_type, current])

def refuses(capability, op_types, case, applies=None, *, domain=""):
    names = op_types.split() if isinstance(op_types, str) else list(op_types)
    seen.extend(["refuses:" + capability, domain, op, current] for op in names)

REGISTRY.add = add
coverage.refuses = refuses
for m in pkgutil.iter_modules(ops.__path__):
    current = m.name
    importlib.reload(importlib.import_module("onnxslice.opsets.ops." + m.name))
print(json.dumps(seen))
"""


def _registrations() -> list[tuple[str, str, str, str]]:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True).stdout
    return [tuple(r) for r in json.loads(out.strip().splitlines()[-1])]  # type: ignore[misc]


def test_every_op_has_one_family_module() -> None:
    rows = _registrations()
    homes: dict[tuple[str, str], set[str]] = defaultdict(set)
    for _, domain, op, module in rows:
        homes[(domain, op)].add(module)
    several = {f"{d or 'ai.onnx'}::{op}": sorted(m) for (d, op), m in homes.items() if len(m) > 1}
    assert not several, f"ops registered by several family modules: {several}"
    registered = {(cap, "" if d == "ai.onnx" else d, op) for cap, d, op, _ in rows if not cap.startswith("refuses:")}
    missing = sorted(k for k in REGISTRY._table if k not in registered)
    assert not missing, f"rules registered outside opsets/ops/: {missing[:10]}"
