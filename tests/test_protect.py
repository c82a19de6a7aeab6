"""Model protection: selection, lock/unlock (bit-identical), the key file, and the CLI's bad paths."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from _common import ROOT, files_in
from onnx import numpy_helper

from onnxslice.apps.protect import (
    accuracy,
    choose,
    lock,
    parse_classes,
    protect,
    protected_weights,
    selection_scores,
    slice_scores,
    unlock,
)
from onnxslice.apps.protect_key import KeyFileError, ProtectKey, WrongPassphraseError
from onnxslice.cli import main
from onnxslice.data import Dataset, load_data
from onnxslice.errors import DataError
from onnxslice.model import Model, load
from onnxslice.record import make_session, runtime_proto

LENET = ROOT / "models" / "lenet5.onnx"
TRAIN = "builtin:mnist?split=train"


def _init_hashes(path: Path) -> dict[str, str]:
    """SHA-256 of every initializer of the ONNX file at ``path``, read with plain onnx."""
    proto = onnx.load(str(path))
    out = {}
    for t in proto.graph.initializer:
        a = numpy_helper.to_array(t)
        out[t.name] = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode() + np.ascontiguousarray(a).tobytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def lenet() -> Model:
    return load(LENET)


@pytest.fixture(scope="module")
def mnist() -> Dataset:
    return load_data(TRAIN).subset(slice(0, 600))


def test_choose_per_layer_and_global() -> None:
    scores = {"a": np.arange(10, dtype=float).reshape(2, 5), "b": np.array([100.0, 0.0, 0.0, 0.0])}
    per = choose(scores, 0.3, scope="layer")
    assert per["a"].tolist() == [7, 8, 9] and per["b"].size == 1 and per["b"][0] == 0
    glob = choose(scores, 0.3, scope="global")  # 14 entries -> 4: 100, 9, 8, 7
    assert glob["b"].tolist() == [0] and glob["a"].tolist() == [7, 8, 9]
    ties = choose({"c": np.zeros(100)}, 0.5, seed=1)["c"]
    assert ties.size == 50 and not np.array_equal(ties, np.arange(50))  # ties broken at random, not by position
    with pytest.raises(DataError, match="strictly between 0 and 1"):
        choose(scores, 1.0)


@pytest.mark.parametrize("select", ["weight", "random"])
def test_lock_unlock_bit_identical(lenet: Model, mnist: Dataset, tmp_path: Path, select: str) -> None:
    scores = selection_scores(lenet, select, seed=2)
    positions = choose(scores, 0.5)
    locked, key = lock(lenet, positions, seed=2, meta={"select": select})
    assert key.hidden == sum(round(0.5 * lenet.initializer(n).size) for n in protected_weights(lenet))
    for name in lenet.initializer_names:
        a, b = lenet.initializer(name), locked.initializer(name)
        if name in positions:
            changed = np.flatnonzero(a.reshape(-1) != b.reshape(-1))
            assert set(changed) <= set(positions[name]) and changed.size > 0.99 * positions[name].size
            # replacement values follow the layer's own distribution
            new = b.reshape(-1)[positions[name]]
            assert abs(new.mean() - a.mean()) < 0.2 * a.std() + 1e-3 and 0.7 < new.std() / a.std() < 1.3
        else:
            np.testing.assert_array_equal(a, b)
    if select == "weight":  # the largest magnitudes are the hidden ones
        w = np.abs(lenet.initializer("fc1.weight")).reshape(-1)
        assert w[positions["fc1.weight"]].min() >= np.delete(w, positions["fc1.weight"]).max()
    # same interface, runs in onnxruntime
    sess = make_session(runtime_proto(locked.proto), "cpu")
    assert [i.name for i in sess.get_inputs()] == lenet.input_names
    assert [o.name for o in sess.get_outputs()] == lenet.output_names
    onnx.checker.check_model(locked.proto, full_check=True)
    key.save(tmp_path / "k.key")
    assert (os.stat(tmp_path / "k.key").st_mode & 0o777) == 0o600
    restored = unlock(locked, ProtectKey.load(tmp_path / "k.key"))
    restored.save(tmp_path / "r.onnx")
    assert _init_hashes(tmp_path / "r.onnx") == _init_hashes(LENET)
    acc = accuracy(locked, mnist, [3, 5])
    assert acc["all"] < accuracy(lenet, mnist, [3, 5])["all"] - 0.3  # hiding half of the weights breaks it


def test_slice_selection_and_keep_others(lenet: Model, mnist: Dataset) -> None:
    scores, info = slice_scores(lenet, mnist, [3, 5], samples=24)
    assert info["target_samples"] == 24
    assert set(scores) == set(protected_weights(lenet)) and all(v.min() >= 0 for v in scores.values())
    # fc3 rows of the target classes carry CONTRIB; the others' rows carry none in a slice seeded at 3 and 5
    fc3 = scores["fc3.weight"]
    assert fc3[[3, 5]].sum() > 0 and fc3[[0, 1, 2, 4, 6, 7, 8, 9]].sum() == 0
    res = protect(lenet, mnist, "3,5", 0.3, select="slice", keep_others=True, samples=24)
    assert res.info["scope"] == "global" and res.info["other_samples"] == 48
    acc = res.accuracy
    assert acc["locked"]["target"] < 0.2 and acc["locked"]["others"] > 0.9 * acc["original"]["others"]


def test_key_encryption_tamper_and_wrong_passphrase(lenet: Model, tmp_path: Path) -> None:
    _, key = lock(lenet, choose(selection_scores(lenet, "random"), 0.1))
    blob = key.to_bytes("correct horse")
    assert b"ONNXSLICE-KEY 1\n" in blob[:20] and key.values["fc1.weight"].tobytes()[:64] not in blob
    back = ProtectKey.from_bytes(blob, "k", "correct horse")
    for n in key.positions:
        np.testing.assert_array_equal(back.positions[n], key.positions[n])
        np.testing.assert_array_equal(back.values[n], key.values[n])
    with pytest.raises(WrongPassphraseError, match="wrong passphrase"):
        ProtectKey.from_bytes(blob, "k", "wrong horse")
    with pytest.raises(KeyFileError, match="encrypted"):
        ProtectKey.from_bytes(blob, "k", None)
    plain = key.to_bytes()
    bad = bytearray(plain)
    bad[-100] ^= 1
    with pytest.raises(KeyFileError, match="altered"):
        ProtectKey.from_bytes(bytes(bad), "k")
    with pytest.raises(KeyFileError, match="not an onnxslice protection key"):
        ProtectKey.from_bytes(b"hello", "k")
    # a key for another locked copy of the same graph, and a model changed after locking
    other, _ = lock(lenet, choose(selection_scores(lenet, "random", seed=5), 0.1))
    with pytest.raises(KeyFileError, match="not those this key was made for"):
        unlock(other, key)


def test_parse_classes(lenet: Model) -> None:
    assert parse_classes("5,3", lenet) == [3, 5]
    for text, match in (("10", "out of range"), ("-1", "out of range"), ("a", "integers"), ("3,3", "repeat"),
                        ("", "at least one"), (",".join(map(str, range(10))), "all 10 classes")):  # fmt: skip
        with pytest.raises(DataError, match=match):
            parse_classes(text, lenet)


# -- CLI -----------------------------------------------------------------------------------------------
def _protect(tmp_path: Path, *extra: str, out: str = "locked.onnx", key: str = "owner.key") -> int:
    return main(["protect", str(LENET), "--data", TRAIN, "--eval-data", "builtin:mnist", "--classes", "3,5",
                 "--out", str(tmp_path / out), "--key", str(tmp_path / key), *extra])  # fmt: skip


def test_cli_protect_unlock_roundtrip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _protect(tmp_path, "--select", "slice", "--slice-samples", "16", "--fraction", "0.5", "--json") == 0
    res = json.loads(capsys.readouterr().out)
    assert res["hidden_total"] == sum(res["hidden"].values()) > 0 and not res["encrypted"]
    assert res["accuracy"]["locked"]["target"] < res["accuracy"]["original"]["target"] - 0.3
    assert main(["unlock", str(tmp_path / "locked.onnx"), "--key", str(tmp_path / "owner.key"),
                 "--out", str(tmp_path / "restored.onnx")]) == 0  # fmt: skip
    assert "matches the original" in capsys.readouterr().out
    assert _init_hashes(tmp_path / "restored.onnx") == _init_hashes(LENET)
    assert _init_hashes(tmp_path / "locked.onnx") != _init_hashes(LENET)


def test_cli_encrypted_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("OWNER_PW", "s3cret passphrase")
    assert _protect(tmp_path, "--select", "random", "--fraction", "0.2", "--passphrase-env", "OWNER_PW") == 0
    assert "encrypted" in capsys.readouterr().out
    args = ["unlock", str(tmp_path / "locked.onnx"), "--key", str(tmp_path / "owner.key"), "--out"]
    monkeypatch.setenv("WRONG_PW", "guess")
    before = files_in(tmp_path)
    assert main([*args, str(tmp_path / "r.onnx"), "--passphrase-env", "WRONG_PW"]) == 2
    err = capsys.readouterr().err
    assert "wrong passphrase" in err and len(err.strip().splitlines()) == 1
    assert main([*args, str(tmp_path / "r.onnx"), "--passphrase-env", "UNSET_PW_VAR"]) == 2
    assert "unset" in capsys.readouterr().err
    assert files_in(tmp_path) == before
    assert main([*args, str(tmp_path / "r.onnx"), "--passphrase-env", "OWNER_PW"]) == 0
    assert _init_hashes(tmp_path / "r.onnx") == _init_hashes(LENET)


def test_cli_bad_inputs_write_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _protect(tmp_path, "--select", "weight", "--fraction", "0.2") == 0
    assert _protect(tmp_path, "--select", "random", "--fraction", "0.2", out="b.onnx", key="b.key") == 0
    capsys.readouterr()
    before = files_in(tmp_path)
    cases = [
        (["--select", "weight", "--classes", "3,10"], "out of range"),
        (["--select", "weight", "--fraction", "0"], "strictly between 0 and 1"),
        (["--select", "weight", "--fraction", "1"], "strictly between 0 and 1"),
        (["--select", "weight", "--fraction", "1.5"], "strictly between 0 and 1"),
        (["--select", "weight", "--keep-others"], "needs --select slice"),
    ]
    for extra, match in cases:
        assert _protect(tmp_path, *extra, out="x.onnx", key="x.key") == 2, extra
        err = capsys.readouterr().err
        assert match in err and len(err.strip().splitlines()) == 1, err
    # --out equal to the model it reads
    assert main(["protect", str(tmp_path / "locked.onnx"), "--data", TRAIN, "--classes", "3", "--select", "weight",
                 "--out", str(tmp_path / "locked.onnx"), "--key", str(tmp_path / "y.key")]) == 2  # fmt: skip
    assert "refusing to overwrite" in capsys.readouterr().err
    unlock_args = ["unlock", str(tmp_path / "b.onnx"), "--key", str(tmp_path / "owner.key"), "--out"]
    assert main([*unlock_args, str(tmp_path / "r.onnx")]) == 2  # the key of another locked model
    assert "not those this key was made for" in capsys.readouterr().err
    assert main(["unlock", str(LENET), "--key", str(tmp_path / "owner.key"), "--out", str(tmp_path / "r.onnx")]) == 2
    capsys.readouterr()
    resnet = ROOT / "models" / "resnet8_mnist.onnx"
    assert main(["unlock", str(resnet), "--key", str(tmp_path / "owner.key"), "--out", str(tmp_path / "r.onnx")]) == 2
    assert "belongs to another model" in capsys.readouterr().err
    tampered = tmp_path / "tampered.key"
    data = bytearray((tmp_path / "owner.key").read_bytes())
    data[len(data) // 2] ^= 0x40
    tampered.write_bytes(bytes(data))
    before = files_in(tmp_path)
    assert (
        main(["unlock", str(tmp_path / "locked.onnx"), "--key", str(tampered), "--out", str(tmp_path / "r.onnx")]) == 2
    )
    assert "altered" in capsys.readouterr().err
    assert files_in(tmp_path) == before
