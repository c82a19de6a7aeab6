"""The README's Python API tour and CLI walk-through run as written (so they cannot drift)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from _common import ROOT

from onnxslice.cli import main

README = (ROOT / "README.md").read_text()


def _block(heading: str, lang: str, index: int = 0) -> str:
    section = README.split(heading, 1)[1]
    return re.findall(rf"```{lang}\n(.*?)```", section, flags=re.S)[index]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "models").symlink_to(ROOT / "models")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_python_api_tour_runs(workdir: Path) -> None:
    pytest.importorskip("mlxtend")
    exec(compile(_block("## Python API tour", "python"), "README.md", "exec"), {})
    assert (workdir / "lenet5-pruned.onnx").stat().st_size < (ROOT / "models" / "lenet5.onnx").stat().st_size
    assert (workdir / "lenet5-mixed.onnx").stat().st_size < (ROOT / "models" / "lenet5.onnx").stat().st_size


@pytest.mark.slow
def test_readme_cli_walkthrough_runs(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("mlxtend")
    lines = [ln for ln in _block("A walk-through on the bundled LeNet-5", "bash").splitlines() if ln.strip()]
    assert len(lines) >= 5
    for line in lines:
        argv = shlex.split(line)
        assert argv[0] == "onnxslice"
        assert main(argv[1:]) == 0, (line, capsys.readouterr().err)
    for out in ("lenet5.profile.npz", "s7.npz", "lenet5-p30.onnx", "lenet5-q6.onnx"):
        assert (workdir / out).is_file(), out
