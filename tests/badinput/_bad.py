"""The bad-input suite's workspace and its one assertion (exit code, one stderr line, nothing changed).

A *workspace* is a folder with a tiny model and one valid file of every kind a verb reads (data,
profile, slice, gradients, scores, prune and quantize plans), built once per session and copied for
each case. A case runs ``onnxslice.cli.main(argv)`` in-process and asserts:

- the exit code;
- exactly one line on stderr, no traceback, matching the case's pattern;
- every file of the workspace byte-for-byte unchanged, and nothing added or removed anywhere in it
  (so: inputs intact, no output, no temporary file left in the output folder).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from _common import ROOT, small_cnn

from onnxslice.cli import main

#: Placeholders an argv template may use: {w} the workspace, {m} the model, {d} data, {p} profile,
#: {s} slice, {g} gradients, {sc} scores, {pp} prune plan, {qp} quantize plan, {o} an empty output
#: folder, {m2} the model with other weights, {lenet} models/lenet5.onnx (another structure).
FILES = {
    "m": "m.onnx",
    "m2": "m2.onnx",
    "lenet": "lenet5.onnx",
    "d": "d.npz",
    "p": "p.npz",
    "s": "s.npz",
    "g": "g.npz",
    "sc": "sc.json",
    "pp": "pp.json",
    "qp": "qp.json",
    "o": "out",
    "dl": "dl.npz",
}

#: The arguments that make each verb run on the workspace (a case adds or replaces some).
VERB_ARGS: dict[str, list[str]] = {
    "inspect": ["inspect", "{m}"],
    "profile": ["profile", "{m}", "-d", "{d}", "-o", "{o}/p.npz"],
    "grad": ["grad", "{m}", "-d", "{d}", "-o", "{o}/g.npz"],
    "slice": ["slice", "{m}", "-p", "{p}", "-d", "{d}", "-o", "{o}/s.npz", "--workers", "1", "--samples", "0:2"],
    "rank": ["rank", "{m}", "-d", "{d}", "-c", "weight", "--samples", "8", "-o", "{o}/sc.json"],
    "prune": ["prune", "{m}", "--ratio", "0.3", "-o", "{o}/pm.onnx", "--repeats", "1"],
    "quantize": [
        "quantize",
        "{m}",
        "--criterion",
        "weight",
        "--avg-bits",
        "6",
        "--block-size",
        "16",
        "-o",
        "{o}/qm.onnx",
    ],
    "report": ["report", "{m}", "-d", "{d}", "-o", "{o}/r.html", "--samples", "8", "--gt-draws", "1",
               "--criteria", "weight", "--skip", "slices", "--skip", "prune", "--skip", "quantize"],
}
#: Verbs that read --data.
DATA_VERBS = ("profile", "grad", "slice", "rank", "report")
#: Verbs that read a model (every one but bench).
MODEL_VERBS = ("inspect", "profile", "grad", "slice", "rank", "prune", "quantize", "report")


def build_base(folder: Path) -> Path:
    """Write the workspace's files into ``folder`` (valid results, produced by the CLI itself)."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save_model(small_cnn(0), str(folder / "m.onnx"))
    onnx.save_model(small_cnn(1), str(folder / "m2.onnx"))
    shutil.copy(ROOT / "models" / "lenet5.onnx", folder / "lenet5.onnx")
    rng = np.random.default_rng(0)
    np.savez(folder / "d.npz", x=rng.normal(size=(8, 1, 8, 8)).astype(np.float32), y=rng.integers(0, 3, 8))
    np.savez(folder / "dl.npz", x=rng.normal(size=(4, 1, 28, 28)).astype(np.float32), y=rng.integers(0, 10, 4))
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        for argv in (
            ["profile", "m.onnx", "-d", "d.npz", "-o", "p.npz"],
            ["slice", "m.onnx", "-p", "p.npz", "-d", "d.npz", "-o", "s.npz", "--workers", "1", "--samples", "0:2"],
            ["grad", "m.onnx", "-d", "d.npz", "-o", "g.npz"],
            ["rank", "m.onnx", "-d", "d.npz", "-c", "weight", "-o", "sc.json", "--samples", "8"],
            ["prune", "m.onnx", "--ratio", "0.3", "-o", "pm.onnx", "--save-plan", "pp.json", "--repeats", "1"],
            [
                "quantize",
                "m.onnx",
                "--criterion",
                "weight",
                "--avg-bits",
                "6",
                "--block-size",
                "16",
                "-o",
                "qm.onnx",
                "--save-plan",
                "qp.json",
            ],
        ):
            assert main(argv) == 0, argv
    finally:
        os.chdir(cwd)
    for f in ("pm.onnx", "qm.onnx"):
        (folder / f).unlink()
    (folder / "out").mkdir()
    return folder


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha256 (``dir``/``link -> target`` for those) of everything below ``root``."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = f"link -> {os.readlink(p)}"
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@dataclass
class Workspace:
    """A copy of the base workspace for one case."""

    root: Path

    @property
    def paths(self) -> dict[str, str]:
        return {k: str(self.root / v) for k, v in FILES.items()} | {"w": str(self.root)}

    def path(self, key: str) -> Path:
        return self.root / FILES.get(key, key)

    def argv(self, template: Sequence[str]) -> list[str]:
        paths = self.paths
        return [a.format(**paths) for a in template]


Setup = Callable[[Workspace], Any]


@dataclass(frozen=True)
class Case:
    """One row of a table: what to break, the command, the exit code and the stderr pattern."""

    id: str
    argv: tuple[str, ...]
    code: int
    pattern: str
    setup: Setup | None = None


def case(id: str, argv: Sequence[str], code: int, pattern: str, setup: Setup | None = None) -> Case:
    return Case(id, tuple(argv), code, pattern, setup)


def run_case(ws: Workspace, c: Case, capsys: Any) -> str:
    """Run ``c`` in ``ws`` and make every assertion of the suite; returns stderr."""
    if c.setup is not None:
        c.setup(ws)
    before = snapshot(ws.root)
    capsys.readouterr()
    rc = main(ws.argv(c.argv))
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == c.code, f"exit {rc}, expected {c.code}: {err}"
    assert len(lines) == 1, f"{len(lines)} stderr lines: {err}"
    assert "Traceback" not in err and "\x1b[" not in err, err
    assert re.search(c.pattern, err), f"pattern {c.pattern!r} not in: {err}"
    after = snapshot(ws.root)
    assert after == before, _diff(before, after)
    return err


def _diff(before: dict[str, str], after: dict[str, str]) -> str:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    return f"workspace changed: added {added}, removed {removed}, changed {changed}"


def verb_argv(verb: str, *extra: str, drop: Sequence[str] = ()) -> list[str]:
    """The verb's working argv with options in ``drop`` (and their values) removed, plus ``extra``."""
    base = list(VERB_ARGS[verb])
    out: list[str] = []
    skip = False
    for i, a in enumerate(base):
        if skip:
            skip = False
            continue
        if a in drop:
            skip = i + 1 < len(base) and not base[i + 1].startswith("-")
            continue
        out.append(a)
    return out + list(extra)


def with_model(verb: str, model: str) -> list[str]:
    """The verb's argv with MODEL replaced."""
    argv = list(VERB_ARGS[verb])
    argv[1] = model
    return argv


def with_data(verb: str, data: str) -> list[str]:
    """The verb's argv with --data replaced."""
    argv = list(VERB_ARGS[verb])
    argv[argv.index("-d") + 1] = data
    return argv


def re_npz(path: Path, **changes: Any) -> None:
    """Rewrite an onnxslice .npz with arrays changed (None removes one); ``__meta__`` edits via meta=dict."""
    import json

    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta_change = changes.pop("meta", None)
    if meta_change is not None:
        meta = json.loads(arrays["__meta__"].tobytes().decode())
        for k, v in meta_change.items():
            if v is None:
                meta.pop(k, None)
            else:
                meta[k] = v
        arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    for k, v in changes.items():
        k = k if k == "__meta__" else k.replace("__", "/")
        if v is None:
            arrays.pop(k, None)
        else:
            arrays[k] = v
    path.unlink()
    np.savez(path, **arrays)  # type: ignore[arg-type]
