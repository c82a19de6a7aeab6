"""Output paths: clashes with inputs (also through ``..``, symlinks and the .npz suffix), clashes between
outputs, folders, files in the way, read-only and full disks; every one is refused before any work
(or, for a full disk, at the write, leaving the old file intact) with one line and nothing left behind.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from _bad import VERB_ARGS, Case, Workspace, case, run_case, snapshot

from onnxslice.cli import main


def _link(name: str, target: str) -> Callable[[Workspace], None]:
    def setup(ws: Workspace) -> None:
        os.symlink(ws.root / target, ws.root / "out" / name)

    return setup


def _out(verb: str, flag: str, value: str) -> list[str]:
    """The verb's argv with ``flag`` set to ``value`` (appended: argparse keeps the last one)."""
    return [*VERB_ARGS[verb], flag, value]


# (verb, output flag): every file-writing flag of every verb.
_FLAGS = [
    ("profile", "-o"),
    ("grad", "-o"),
    ("slice", "-o"),
    ("slice", "--sliced-model"),
    ("rank", "-o"),
    ("prune", "-o"),
    ("prune", "--save-plan"),
    ("quantize", "-o"),
    ("quantize", "--save-plan"),
]
_CLASH = "refusing to overwrite it|is also read as"

#: Writers that append .npz: `-o m.onnx` writes m.onnx.npz (no clash), so they are aimed at the .npz input.
_NPZ = {("profile", "-o"), ("grad", "-o"), ("slice", "-o")}

CASES: list[Case] = []
for verb, flag in _FLAGS:
    tag = f"{verb}{flag}"
    key, name, what = ("d", "d.npz", "--data") if (verb, flag) in _NPZ else ("m", "m.onnx", "MODEL")
    CASES += [
        case(
            f"{tag}-is-{key}",
            _out(verb, flag, f"{{{key}}}"),
            2,
            rf"{flag if flag != '-o' else '--out'} .* is the {what}",
        ),
        case(f"{tag}-is-{key}-via-dotdot", _out(verb, flag, f"{{o}}/../{name}"), 2, f"is the {what}"),
        case(
            f"{tag}-is-{key}-via-symlink",
            _out(verb, flag, f"{{o}}/link-{name}"),
            2,
            f"is the {what}",
            _link(f"link-{name}", name),
        ),
        case(f"{tag}-is-folder", _out(verb, flag, "{o}"), 2, "is a folder; give a file path"),
        case(f"{tag}-trailing-slash", _out(verb, flag, "{o}/new/"), 2, "is a folder; give a file path"),
        case(f"{tag}-under-a-file", _out(verb, flag, "{m}/x.out"), 2, "is a file, not a folder"),
    ]
    if verb in ("profile", "grad", "slice", "rank") and (verb, flag) not in _NPZ:
        CASES.append(case(f"{tag}-is-data", _out(verb, flag, "{d}"), 2, "is the --data"))

CASES += [
    # the .npz suffix that save_npz appends is part of the path compared
    case("profile-out-without-suffix-is-data", _out("profile", "-o", "{w}/d"), 2, r"d\.npz' is the --data"),
    case("grad-out-without-suffix-is-data", _out("grad", "-o", "{w}/d"), 2, r"d\.npz' is the --data"),
    case("slice-out-is-profile", _out("slice", "-o", "{p}"), 2, "is the --profile"),
    case("slice-out-without-suffix-is-profile", _out("slice", "-o", "{w}/p"), 2, r"p\.npz' is the --profile"),
    case("slice-sliced-model-is-profile", _out("slice", "--sliced-model", "{p}"), 2, "is the --profile"),
    case(
        "slice-two-outputs-one-path",
        [*VERB_ARGS["slice"], "-o", "{o}/x", "--sliced-model", "{o}/x.npz"],
        2,
        "is also given as --out",
    ),
    case("prune-out-is-save-plan", [*VERB_ARGS["prune"], "--save-plan", "{o}/pm.onnx"], 2, "is also given as --out"),
    case(
        "prune-save-plan-is-plan",
        ["prune", "{m}", "--plan", "{pp}", "-o", "{o}/p.onnx", "--save-plan", "{pp}"],
        2,
        "is the --plan",
    ),
    case(
        "prune-out-is-scores",
        [*VERB_ARGS["prune"], "--budget", "sensitivity", "--scores", "{sc}", "-o", "{sc}"],
        2,
        "is the --scores",
    ),
    case(
        "prune-out-is-slice",
        [*VERB_ARGS["prune"], "--budget", "slice", "--slice", "{s}", "-o", "{s}"],
        2,
        "is the --slice",
    ),
    case("prune-out-is-data", [*VERB_ARGS["prune"], "-d", "{d}", "-o", "{d}"], 2, "is the --data"),
    case(
        "quantize-save-plan-is-plan",
        ["quantize", "{m}", "--plan", "{qp}", "-o", "{o}/q.onnx", "--save-plan", "{qp}"],
        2,
        "is the --plan",
    ),
    case("quantize-out-is-scores", [*VERB_ARGS["quantize"], "--scores", "{sc}", "-o", "{sc}"], 2, "is the --scores"),
    case("quantize-out-is-save-plan", [*VERB_ARGS["quantize"], "--save-plan", "{o}/qm.onnx"], 2, "also given as --out"),
    case("rank-out-is-gt-data", [*VERB_ARGS["rank"], "--gt-data", "{dl}", "-o", "{dl}"], 2, "is the --gt-data"),
    case("bench-out-is-folder", ["bench", "safer", "-o", "{o}"], 2, "is a folder"),
    case("bench-out-under-a-file", ["bench", "safer", "-o", "{m}/x.json"], 2, "is a file, not a folder"),
]


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_bad_output(ws: Workspace, capsys: pytest.CaptureFixture[str], c: Case) -> None:
    run_case(ws, c, capsys)


# -- read-only and full folders (simulated: the suite may run as root, which ignores permissions) --------------
_WRITERS = [
    ("profile", "-o", "{o}/p.npz"),
    ("grad", "-o", "{o}/g.npz"),
    ("slice", "-o", "{o}/s.npz"),
    ("slice", "--sliced-model", "{o}/sm.onnx"),
    ("rank", "-o", "{o}/sc.json"),
    ("prune", "-o", "{o}/pm.onnx"),
    ("prune", "--save-plan", "{o}/pp.json"),
    ("quantize", "-o", "{o}/qm.onnx"),
    ("quantize", "--save-plan", "{o}/qp.json"),
]


@pytest.mark.parametrize(("verb", "flag", "path"), _WRITERS, ids=[f"{v}{f}" for v, f, _ in _WRITERS])
def test_read_only_folder(
    ws: Workspace, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, verb: str, flag: str, path: str
) -> None:
    out = ws.root / "out"
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if Path(p) == out else real(p, mode, *a, **k))
    run_case(ws, case("ro", _out(verb, flag, path), 2, r"the folder '.*out' is not writable"), capsys)


@pytest.mark.parametrize(("verb", "flag", "path"), _WRITERS, ids=[f"{v}{f}" for v, f, _ in _WRITERS])
def test_full_disk_keeps_the_old_file(
    ws: Workspace, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, verb: str, flag: str, path: str
) -> None:
    """The rename never happens: the old output stays complete, no temporary file is left."""
    target = Path(ws.argv([path])[0])
    target.write_bytes(b"the previous result")
    real = os.replace

    def full(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if ".onnxslice-" in str(src):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(os, "replace", full)
    run_case(ws, case("full", _out(verb, flag, path), 2, r"cannot write --[a-z-]+ '.*': the disk is full"), capsys)
    assert target.read_bytes() == b"the previous result"


def test_checks_come_before_any_work(
    ws: Workspace, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clash is reported before the model is even loaded."""
    import onnxslice.model as model_mod

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("the model was loaded before the output check")

    monkeypatch.setattr(model_mod, "load", boom)
    for verb in ("profile", "grad", "slice", "rank", "prune", "quantize"):
        monkeypatch.setattr(f"onnxslice.commands.{verb}.load", boom, raising=False)
        clash = "{d}" if verb in ("profile", "grad", "slice") else "{m}"
        run_case(ws, case(verb, _out(verb, "-o", clash), 2, "is the (MODEL|--data)"), capsys)


def test_writes_come_last(ws: Workspace, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """prune's fidelity run fails after the pruned model exists in memory: nothing is written."""
    import onnxslice.rewrite.fidelity as fid
    from onnxslice.errors import OnnxSliceError

    def fail(*a: object, **k: object) -> None:
        raise OnnxSliceError("fidelity run failed (simulated)")

    monkeypatch.setattr(fid, "run_outputs", fail)
    for argv in (
        [
            "prune",
            "{m}",
            "--ratio",
            "0.3",
            "-d",
            "{d}",
            "-o",
            "{o}/p.onnx",
            "--save-plan",
            "{o}/p.json",
            "--repeats",
            "1",
        ],
        [
            "quantize",
            "{m}",
            "--criterion",
            "weight",
            "--avg-bits",
            "6",
            "-d",
            "{d}",
            "-o",
            "{o}/q.onnx",
            "--save-plan",
            "{o}/q.json",
        ],
    ):
        run_case(ws, case(argv[0], argv, 2, "simulated"), capsys)


def test_stale_leftovers_are_cleaned_live_ones_kept(ws: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    """A SIGKILLed writer's temp files are removed by the next run into the folder; a live writer's stay."""
    import subprocess
    import sys

    out = ws.root / "out"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    dead_pid = int(dead.stdout)
    (out / f".onnxslice-{dead_pid}-abc.npz").write_bytes(b"half a file")
    (out / f".onnxslice-{dead_pid}-dir").mkdir()
    (out / f".onnxslice-{dead_pid}-dir" / "m.onnx").write_bytes(b"half a model")
    live = f".onnxslice-{os.getppid()}-xyz.npz"
    (out / live).write_bytes(b"another process is writing this")
    assert main(ws.argv(["profile", "{m}", "-d", "{d}", "-o", "{o}/p.npz"])) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([live, "p.npz"])
    before = snapshot(ws.root)
    assert main(ws.argv(["inspect", "{m}"])) == 0  # reads only: touches no folder
    assert snapshot(ws.root) == before
    capsys.readouterr()


def test_missing_output_folder_is_created_only_on_success(ws: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing folder is created at the write, so a failing command leaves no empty folder behind."""
    np_bad = ws.root / "bad.npz"
    import numpy as np

    np.savez(np_bad, x=np.full((2, 1, 8, 8), np.nan, np.float32))
    run_case(ws, case("fails", ["profile", "{m}", "-d", str(np_bad), "-o", "{o}/new/deeper/p.npz"], 2, "NaN"), capsys)
    assert main(ws.argv(["profile", "{m}", "-d", "{d}", "-o", "{o}/new/deeper/p.npz"])) == 0
    assert (ws.root / "out" / "new" / "deeper" / "p.npz").is_file()
    capsys.readouterr()
