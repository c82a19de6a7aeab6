"""Interrupts and concurrent writers: Ctrl-C or SIGTERM during a save leaves no temporary file and no
partial output (exit 130, one line); a SIGKILL leftover is cleaned by the next run; two processes
writing the same output both finish with a complete file and nothing else in the folder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from _bad import VERB_ARGS, Workspace, case, run_case

_WRITERS = [
    ("profile", "{o}/p.npz"),
    ("grad", "{o}/g.npz"),
    ("slice", "{o}/s.npz"),
    ("rank", "{o}/sc.json"),
    ("prune", "{o}/pm.onnx"),
    ("quantize", "{o}/qm.onnx"),
]


def _interrupting(monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """Make every writer write half its temporary file, then get interrupted (Ctrl-C, or a real SIGTERM)."""

    def interrupt() -> None:
        if how == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)  # the CLI's handler raises in this (main) thread
            time.sleep(5)
            raise AssertionError("SIGTERM was not turned into an interrupt")
        raise KeyboardInterrupt

    real_savez, real_save, real_write = np.savez_compressed, onnx.save_model, Path.write_bytes

    def savez(file: Any, *a: Any, **k: Any) -> None:
        Path(file).write_bytes(b"PK\x03\x04 half")
        interrupt()

    def save_model(proto: Any, f: Any, *a: Any, **k: Any) -> None:
        if ".onnxslice-" not in str(f):
            return real_save(proto, f, *a, **k)
        real_write(Path(f), proto.SerializeToString()[:50])
        interrupt()

    def write_bytes(self: Path, data: bytes) -> int:
        if not self.name.startswith(".onnxslice-"):
            return real_write(self, data)
        real_write(self, data[:10])
        interrupt()
        return 0

    monkeypatch.setattr(np, "savez_compressed", savez)
    monkeypatch.setattr(onnx, "save_model", save_model)
    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    del real_savez


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
@pytest.mark.parametrize(("verb", "out"), _WRITERS, ids=[v for v, _ in _WRITERS])
def test_interrupt_during_save(
    ws: Workspace, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, verb: str, out: str, how: str
) -> None:
    argv = [*VERB_ARGS[verb], "-o", out]
    before_handler = signal.getsignal(signal.SIGTERM)
    _interrupting(monkeypatch, how)
    run_case(ws, case(verb, argv, 130, rf"^onnxslice {verb}: interrupted; no partial file was left$"), capsys)
    assert signal.getsignal(signal.SIGTERM) is before_handler  # the CLI restores the previous handler


_CHILD = r"""
import os, sys, time
import numpy as np
from pathlib import Path
real = np.savez_compressed
def slow(file, *a, **k):
    Path(file).write_bytes(b"PK\x03\x04 half")
    Path(sys.argv[1]).write_text("saving")
    time.sleep(float(sys.argv[2]))
    real(file, *a, **k)
np.savez_compressed = slow
from onnxslice.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _child(ws: Workspace, marker: Path, sleep: float, argv: list[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "ONNXSLICE_PROGRESS": "0"}
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(marker), str(sleep), *ws.argv(argv)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_for(marker: Path, proc: subprocess.Popen[str], timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < timeout, "the child never reached its save"
        time.sleep(0.05)


def test_sigterm_to_a_process_during_save(ws: Workspace, tmp_path: Path) -> None:
    out = ws.root / "out"
    proc = _child(ws, tmp_path / "marker", 60, ["profile", "{m}", "-d", "{d}", "-o", "{o}/p.npz"])
    _wait_for(tmp_path / "marker", proc)
    assert any(p.name.startswith(".onnxslice-") for p in out.iterdir())  # the temp file exists mid-save
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["onnxslice profile: interrupted; no partial file was left"], err
    assert list(out.iterdir()) == []


def test_sigkill_leftover_is_cleaned_by_the_next_run(
    ws: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from onnxslice.cli import main

    out = ws.root / "out"
    proc = _child(ws, tmp_path / "marker", 60, ["profile", "{m}", "-d", "{d}", "-o", "{o}/p.npz"])
    _wait_for(tmp_path / "marker", proc)
    proc.kill()
    proc.communicate(timeout=60)
    left = [p.name for p in out.iterdir()]
    assert len(left) == 1 and left[0].startswith(f".onnxslice-{proc.pid}-"), left
    assert main(ws.argv(["grad", "{m}", "-d", "{d}", "-o", "{o}/g.npz"])) == 0
    assert [p.name for p in out.iterdir()] == ["g.npz"]
    capsys.readouterr()


def test_concurrent_writers_of_one_output(ws: Workspace, tmp_path: Path) -> None:
    """Two processes save the same --out at once: both succeed, the file is one complete profile."""
    from onnxslice.profile import Profile

    out = ws.root / "out"
    argv = ["profile", "{m}", "-d", "{d}", "-o", "{o}/p.npz"]
    a = _child(ws, tmp_path / "a", 1.0, argv)
    b = _child(ws, tmp_path / "b", 1.0, argv)
    _wait_for(tmp_path / "a", a)
    _wait_for(tmp_path / "b", b)  # both are mid-save, each with its own temporary file
    temps = [p.name for p in out.iterdir() if p.name.startswith(".onnxslice-")]
    assert len(temps) == 2 and len({t.split("-")[1] for t in temps}) == 2, temps
    for proc in (a, b):
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert [p.name for p in out.iterdir()] == ["p.npz"]
    prof = Profile.load(out / "p.npz")
    assert prof.count == 8 and all(np.all(np.isfinite(v)) for v in prof.mean.values())
