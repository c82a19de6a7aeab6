"""The exit-code contract of ``onnxslice.cli.main``: 0, 2, 3, 130, and 1 only for a bug (with a traceback)."""

from __future__ import annotations

import pytest
from _bad import Workspace

import onnxslice.commands.inspect as inspect_cmd
from onnxslice.cli import main
from onnxslice.errors import UnsupportedOpError


def _raise(exc: BaseException):  # type: ignore[no-untyped-def]
    def run(args: object) -> int:
        raise exc

    return run


@pytest.mark.parametrize(
    ("exc", "code", "last_line"),
    [
        (ValueError("an internal invariant broke"), 1, r"this is a bug in onnxslice .*please report it"),
        (UnsupportedOpError("Frob", "com.example", 1, "vjp", node="n1"), 3, r"no 'vjp' rule for op com.example::Frob"),
        (MemoryError(), 2, "out of memory"),
        (KeyboardInterrupt(), 130, "interrupted; no partial file was left"),
        (PermissionError(13, "Permission denied", "/some/file"), 2, "cannot access '/some/file': Permission denied"),
    ],
    ids=["bug", "unsupported-op", "memory", "interrupt", "permission"],
)
def test_exit_codes(
    ws: Workspace,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    exc: BaseException,
    code: int,
    last_line: str,
) -> None:
    import re

    monkeypatch.setattr(inspect_cmd, "run", _raise(exc))
    assert main(ws.argv(["inspect", "{m}"])) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert re.search(last_line, err[-1]), err
    if code == 1:
        assert err[0].startswith("Traceback") and any("an internal invariant broke" in x for x in err)
    else:
        assert len(err) == 1, err


def test_help_is_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["prune", "--help"], ["--version"]):
        assert main(argv) == 0
    assert "--max-size" in capsys.readouterr().out
