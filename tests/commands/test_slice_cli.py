"""``onnxslice slice`` on the command line: table, JSON, files, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from _slice_nets import cnn_data, cnn_model

from onnxslice.cli import main
from onnxslice.profile import profile
from onnxslice.slicing import Slice


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli")
    model = cnn_model()
    onnx.save(model.proto, d / "m.onnx")
    x = cnn_data(12)
    np.savez(d / "data.npz", x=x)
    profile(model, x, 4).save(d / "p.npz")
    return {"model": d / "m.onnx", "data": d / "data.npz", "profile": d / "p.npz", "dir": d}


def test_slice_cli_prints_table_and_saves(files, capsys):
    out = files["dir"] / "s.npz"
    sliced = files["dir"] / "sliced.onnx"
    rc = main(
        [
            "slice",
            str(files["model"]),
            "--profile",
            str(files["profile"]),
            "--data",
            str(files["data"]),
            "--samples",
            "0:4",
            "--target",
            "pred",
            "--theta",
            "0.3",
            "--out",
            str(out),
            "--workers",
            "1",
            "--sliced-model",
            str(sliced),
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0 and "synapses_in" in text and "onnxslice/Conv_0" in text
    s = Slice.load(out)
    assert s.count == 4 and s.targets == ["pred"]
    assert onnx.load(sliced).graph.node


def test_slice_cli_json_channel(files, capsys):
    out = files["dir"] / "c.npz"
    rc = main(
        [
            "slice",
            str(files["model"]),
            "-p",
            str(files["profile"]),
            "-d",
            str(files["data"]),
            "-s",
            "0:2",
            "-t",
            "class:1",
            "-t",
            "class:2",
            "--granularity",
            "channel",
            "-o",
            str(out),
            "--workers",
            "1",
            "--json",
        ]
    )
    data = json.loads(capsys.readouterr().out)
    assert rc == 0 and data["targets"] == ["class:1", "class:2"] and data["options"]["granularity"] == "channel"
    assert len(data["layers"]) == 3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--theta", "1.2"], "--theta: 1.2 is not in (0, 1)"),
        (["--target", "class:7"], "out of range"),
    ],
)
def test_slice_cli_bad_input_one_line_exit_2(files, capsys, extra, message):
    out = files["dir"] / "bad.npz"
    rc = main(
        [
            "slice",
            str(files["model"]),
            "-p",
            str(files["profile"]),
            "-d",
            str(files["data"]),
            "-o",
            str(out),
            "--workers",
            "1",
            *extra,
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_slice_cli_profile_of_other_model(files, tmp_path, capsys):
    other = tmp_path / "other.npz"
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 3), np.float32))
    from _slice_nets import worked_example_model, zero_profile

    zero_profile(worked_example_model()).save(other)
    rc = main(["slice", str(files["model"]), "-p", str(other), "-d", str(files["data"]), "-o", str(tmp_path / "s.npz")])
    assert rc == 2 and "another model" in capsys.readouterr().err
    assert not (tmp_path / "s.npz").exists()
