"""``onnxslice grad``: the per-layer table, JSON, the saved arrays, and one-line user errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from _common import files_in

from onnxslice.cli import main
from onnxslice.grad import Gradients, gradients


@pytest.fixture
def data_npz(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x=rng.standard_normal((5, 1, 8, 8)).astype(np.float32), y=np.array([0, 1, 2, 1, 0]))
    return path


def test_cli_grad_table_and_npz(tmp_path: Path, cnn_path: Path, data_npz: Path, capsys) -> None:
    out = tmp_path / "g.npz"
    assert main(["grad", str(cnn_path), "--data", str(data_npz), "--target", "loss", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "grad_norm" in text and "weight_norm" in text and "conv" in text and "fc" in text
    g = Gradients.load(out)
    x = np.load(data_npz)
    want = gradients(str(cnn_path), x["x"], "loss", labels=x["y"])
    assert g.target == "loss" and g.num_samples == 5
    for k, v in want.weights.items():
        np.testing.assert_allclose(g.weights[k], v, rtol=1e-6)
    np.testing.assert_allclose(g.inputs["x"], want.inputs["x"], rtol=1e-6)


def test_cli_grad_json_samples_and_per_sample(tmp_path: Path, cnn_path: Path, data_npz: Path, capsys) -> None:
    out = tmp_path / "g.npz"
    argv = [
        "grad",
        str(cnn_path),
        "-d",
        str(data_npz),
        "-t",
        "class:2",
        "--samples",
        "1:4",
        "--per-sample",
        "-o",
        str(out),
    ]
    assert main([*argv, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["samples"] == 3 and d["target"] == "class:2"
    assert [r["layer"] for r in d["layers"]][:2] == ["conv", "fc"]
    g = Gradients.load(out)
    assert g.per_sample and g.weights["conv.w"].shape == (3, 4, 1, 3, 3)


@pytest.mark.parametrize(
    ("args", "code", "pattern"),
    [
        (["--target", "class:7"], 2, "out of range"),
        (["--target", "nope"], 2, "unknown target"),
        (["--weights", "w.missing"], 2, "no initializer named w.missing"),
        (["--samples", "9"], 2, "samples"),
    ],
)
def test_cli_grad_user_errors_are_one_line_and_write_nothing(
    tmp_path: Path, cnn_path: Path, data_npz: Path, capsys, args: list[str], code: int, pattern: str
) -> None:
    before = files_in(tmp_path)
    argv = ["grad", str(cnn_path), "--data", str(data_npz), "--out", str(tmp_path / "g.npz"), *args]
    assert main(argv) == code
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert re.search(pattern, err), err
    assert files_in(tmp_path) == before


def test_cli_grad_loss_without_labels(tmp_path: Path, cnn_path: Path, capsys) -> None:
    np.savez(tmp_path / "nolab.npz", x=np.zeros((2, 1, 8, 8), np.float32))
    before = files_in(tmp_path)
    argv = ["grad", str(cnn_path), "-d", str(tmp_path / "nolab.npz"), "-t", "loss", "-o", str(tmp_path / "g.npz")]
    assert main(argv) == 2
    assert "needs labels" in capsys.readouterr().err
    assert files_in(tmp_path) == before


def test_cli_grad_no_fuse_differentiates_node_by_node(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from _common import ROOT

    from onnxslice.commands import grad as grad_command
    from onnxslice.grad import GradientEngine

    built: list[GradientEngine] = []

    class Recording(GradientEngine):
        def __init__(self, *a, **k) -> None:  # type: ignore[no-untyped-def]
            super().__init__(*a, **k)
            built.append(self)

    monkeypatch.setattr(grad_command, "GradientEngine", Recording)
    model_path = ROOT / "models" / "resnet8_mnist.onnx"
    data = tmp_path / "m.npz"
    x = np.random.default_rng(1).random((3, 1, 28, 28), dtype=np.float32)
    np.savez(data, x=x)
    for flag, fuse in (([], True), (["--no-fuse"], False)):
        out = tmp_path / f"g{int(fuse)}.npz"
        assert main(["grad", str(model_path), "--data", str(data), "--out", str(out), *flag]) == 0
        engine = built[-1]
        assert engine.fuse == fuse and bool(engine.chains) == fuse
        assert any(st.node.op_type == "BatchNormalization" for st in engine.steps) == (not fuse)
        want = engine({engine.model.input_names[0]: x})
        got = Gradients.load(out)
        for k, v in want.weights.items():
            np.testing.assert_allclose(got.weights[k], v, rtol=1e-6, atol=1e-9)
    capsys.readouterr()
