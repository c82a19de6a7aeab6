"""The CLI: inspect and profile, JSON output, one-line user errors with exit codes, README/CI agreement."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _common import ROOT, files_in

from onnxslice.cli import main
from onnxslice.profile import Profile


def test_cli_inspect_table_and_json(cnn_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(cnn_path)]) == 0
    out = capsys.readouterr().out
    assert "6 nodes, 2 layers" in out and "conv" in out and "plugin coverage" in out
    assert main(["inspect", str(cnn_path), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["ops"] == {"BatchNormalization": 1, "Conv": 1, "Flatten": 1, "Gemm": 1, "MaxPool": 1, "Relu": 1}
    assert [x["layer"] for x in d["layers"]] == ["conv", "fc"]
    assert set(d["missing_rules"]) >= {"info", "vjp", "contributions", "prune"}
    assert d["missing_rules"]["info"] == []


def test_cli_profile_writes_npz(tmp_path: Path, cnn_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).random((6, 1, 8, 8), np.float32))
    out = tmp_path / "p.npz"
    assert main(["profile", str(cnn_path), "--data", str(tmp_path / "d.npz"), "--out", str(out), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["samples"] == 6 and Profile.load(out).count == 6


@pytest.mark.parametrize(
    ("args", "code", "pattern"),
    [
        (["inspect", "missing.onnx"], 2, "onnxslice inspect: model file 'missing.onnx' does not exist"),
        (["profile", "{model}", "--data", "builtin:nope", "--out", "{tmp}/p.npz"], 2, "unknown built-in data set"),
        (["profile", "{model}", "--data", "{tmp}/bad.npz", "--out", "{tmp}/p.npz"], 2, "has dtype int64"),
    ],
)
def test_cli_user_errors_are_one_line_and_write_nothing(
    tmp_path: Path, cnn_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], code: int, pattern: str
) -> None:
    np.savez(tmp_path / "bad.npz", x=np.zeros((2, 1, 8, 8), np.int64))
    before = files_in(tmp_path)
    argv = [a.format(model=cnn_path, tmp=tmp_path) for a in args]
    assert main(argv) == code
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert re.search(pattern, err), err
    assert files_in(tmp_path) == before


def test_cli_bad_usage_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect"]) == 2
    assert main(["no-such-verb"]) == 2


def test_cli_entry_point_runs_as_module(cnn_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "onnxslice.cli", "inspect", str(cnn_path), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["nodes"] == 6


def test_readme_test_command_is_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
    test_cmd = next(b for b in blocks if "pytest" in b)
    assert test_cmd.strip() in ci, "README's test command and .ci/run drifted apart"
    main_cmd = next(b for b in blocks if "pip install" in b and "pytest" not in b)
    assert "onnxslice report models/lenet5.onnx" in main_cmd and "builtin:mnist" in main_cmd


def test_warnings_wait_until_the_verb_succeeded(capsys: pytest.CaptureFixture[str]) -> None:
    """A warning said during a run is printed after it succeeds, so a later user error stays the only line."""
    from onnxslice.commands import deferred_warnings, warn

    with deferred_warnings() as pending:
        warn("prune", "the pruned model is measured SLOWER than its input")
        assert capsys.readouterr().err == ""
    assert pending == ["onnxslice prune: warning: the pruned model is measured SLOWER than its input\n"]
    warn("prune", "outside a run it is said at once")
    assert capsys.readouterr().err == "onnxslice prune: warning: outside a run it is said at once\n"
