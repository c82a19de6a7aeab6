"""Layers point one way: the import graph of the package has no cycle and follows ``LAYERS``.

The graph is read with ``ast`` from every module of ``onnxslice/`` and ``opsets/`` (installed as
``onnxslice.opsets``): module-level AND function-level imports count, so a cycle hidden behind a lazy
import fails here too. Imports under ``if TYPE_CHECKING:`` never run and do not count. The drawing of
these layers is in ``docs/design.md`` ("Layers").
"""

from __future__ import annotations

import ast
import itertools
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The allowed-imports table, highest layer first. A unit (a top-level module, or a subpackage with
# everything under it) may import units of its own layer or a lower one, never a higher one; within a layer
# the cycle test keeps the imports one-way.
LAYERS: list[tuple[str, set[str]]] = [
    ("cli", {"cli", "clidoc"}),
    ("commands", {"commands"}),
    ("api", {"onnxslice", "plans", "report", "train"}),
    ("analyses", {"grad", "slicing", "sensitivity", "apps", "latency", "attacks"}),
    ("rewrite passes", {"rewrite"}),
    ("walker/record", {"walk", "record", "profile", "worker", "testing", "data", "targets", "artifacts",
                       "describe", "fault_sites", "flops", "scores"}),
    ("core", {"model"}),
    ("op semantics", {"opsets"}),
    ("base", {"io", "session", "order", "outputs", "dequantize", "parallel", "console", "cpu"}),
    ("leaves", {"errors", "limits", "version"}),
]

# Function-level imports of the project's own modules are allowed only here, with the reason.
LAZY_ALLOWED: dict[str, str] = {
    # `onnxslice --help` imports every command module to build its parser; the analyses a verb runs
    # (torch-free but numpy/onnxruntime-heavy) are imported inside its `run` so that start-up stays fast.
    "commands": "CLI start-up time: a verb's analyses load when it runs, not when --help lists it",
    "cli": "CLI start-up time: the command table is imported after argument parsing starts",
}

# Files whose function-level imports are left for now, with the reason (none left: the gradient
# modules and the VJP primitives import at module level since issue 19's op-family move).
LAZY_PENDING: dict[str, str] = {}


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for base, pkg in (("onnxslice", "onnxslice"), ("opsets", "onnxslice.opsets")):
        for p in sorted((ROOT / base).rglob("*.py")):
            parts = list(p.relative_to(ROOT / base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([pkg, *parts])] = p
    return out


MODULES = _modules()
LAYER_OF = {u: i for i, (_, units) in enumerate(LAYERS) for u in units}


def unit(module: str) -> str | None:
    """The layering unit of a module name (None when it is not the project's own)."""
    parts = module.split(".")
    if parts[0] != "onnxslice":
        return None
    if len(parts) == 1:
        return "onnxslice"
    return parts[1]


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def imports(module: str, path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for every import statement that runs."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other, in_function)
                continue
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = module.split(".") if is_pkg else module.split(".")[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                for a in child.names:
                    full = f"{target}.{a.name}"
                    found.append((full if full in MODULES else target, child.lineno, in_function))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return found


def unit_graph() -> dict[str, dict[str, list[str]]]:
    """unit -> imported unit -> the import sites (``module:line``) behind that edge."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for module, path in MODULES.items():
        src = unit(module)
        for target, line, _ in imports(module, path):
            dst = unit(target)
            if src is not None and dst is not None and dst != src:
                graph[src][dst].append(f"{module}:{line}")
    return graph


def find_cycle(graph: dict[str, dict[str, list[str]]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of units (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(u: str) -> list[str] | None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, {})):
            if state.get(v) == 1:
                return [*stack[stack.index(v):], v]
            if v not in state and (c := dfs(v)):
                return c
        stack.pop()
        state[u] = 2
        return None

    for u in sorted(graph):
        if u not in state and (c := dfs(u)):
            return c
    return None


def test_every_unit_has_a_layer() -> None:
    units = {u for m in MODULES if (u := unit(m)) is not None}
    missing = sorted(u for u in units if u not in LAYER_OF)
    assert not missing, f"add these to LAYERS in tests/test_layering.py (and docs/design.md): {missing}"
    stale = sorted(set(LAYER_OF) - units)
    assert not stale, f"LAYERS names units that no longer exist: {stale}"


def test_no_import_cycle() -> None:
    graph = unit_graph()
    cycle = find_cycle(graph)
    if cycle:
        sites = [f"{a} -> {b} ({', '.join(graph[a][b][:3])})" for a, b in itertools.pairwise(cycle)]
        pytest.fail("import cycle " + " -> ".join(cycle) + ": " + "; ".join(sites))


def test_no_module_cycle() -> None:
    """Module by module too: a cycle inside one folder fails at import time once its imports are hoisted."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for module, path in MODULES.items():
        exempt = unit(module) in LAZY_ALLOWED or path.relative_to(ROOT).as_posix() in LAZY_PENDING
        for target, line, lazy in imports(module, path):
            if target in MODULES and target != module and not (lazy and exempt):
                graph[module][target].append(f"{module}:{line}")
    cycle = find_cycle(graph)
    assert cycle is None, "module import cycle " + " -> ".join(cycle or [])


def test_imports_point_down() -> None:
    graph = unit_graph()
    bad = [f"{a} ({LAYERS[LAYER_OF[a]][0]}) -> {b} ({LAYERS[LAYER_OF[b]][0]}) at {', '.join(sites[:3])}"
           for a, targets in sorted(graph.items()) for b, sites in sorted(targets.items())
           if LAYER_OF[b] < LAYER_OF[a]]
    assert not bad, "imports that point up:\n" + "\n".join(bad)


def test_function_level_imports_only_for_optional_dependencies() -> None:
    bad = [f"{path.relative_to(ROOT)}:{line} imports {target}"
           for module, path in MODULES.items()
           if unit(module) not in LAZY_ALLOWED and path.relative_to(ROOT).as_posix() not in LAZY_PENDING
           for target, line, lazy in imports(module, path) if lazy and unit(target) is not None]
    assert not bad, (f"{len(bad)} function-level imports of the project's own modules (move them to the top):\n"
                     + "\n".join(bad))


def test_pending_exceptions_are_still_needed() -> None:
    for rel in LAZY_PENDING:
        module = next(m for m, p in MODULES.items() if p.relative_to(ROOT).as_posix() == rel)
        assert any(lazy and unit(t) for t, _, lazy in imports(module, ROOT / rel)), f"drop {rel} from LAZY_PENDING"


def test_the_checker_sees_a_lazy_cycle(tmp_path: Path) -> None:
    graph = {"a": {"b": ["x:1"]}, "b": {"a": ["y:2"]}}
    assert find_cycle(graph) == ["a", "b", "a"]
    assert find_cycle({"a": {"b": ["x:1"]}}) is None
    src = tmp_path / "m.py"
    src.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from onnxslice import x\n"
                   "def f():\n    from onnxslice.model import Model\n")
    assert imports("onnxslice.m", src) == [("typing", 1, False), ("onnxslice.model", 5, True)]
