"""Bad data files and data options, for every verb that reads --data.

Corrupt, truncated or empty .npz files, scalar or empty arrays, NaN/Inf, wrong dtypes and keys, bad
labels, image folders with a broken file, size limits checked from the .npy headers before anything is
inflated, and typed, ranged data options with unknown keys refused.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from _bad import DATA_VERBS, Case, Workspace, case, run_case, with_data


def _npz(name: str, **arrays: Any) -> Callable[[Workspace], None]:
    def setup(ws: Workspace) -> None:
        np.savez(ws.root / name, **arrays)

    return setup


def _bytes(name: str, data: bytes | Callable[[Workspace], bytes]) -> Callable[[Workspace], None]:
    def setup(ws: Workspace) -> None:
        (ws.root / name).write_bytes(data(ws) if callable(data) else data)

    return setup


def _header_bomb(ws: Workspace) -> None:
    """An .npz whose x.npy header declares 40 GB but stores a few bytes."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": "<f4", "fortran_order": False, "shape": (100_000, 1, 100, 1000)}
    )
    buf.write(b"\0" * 64)
    with zipfile.ZipFile(ws.root / "bomb.npz", "w") as zf:
        zf.writestr("x.npy", buf.getvalue())


def _images(broken: bool = False, sizes: tuple[int, ...] = (8, 8), empty: bool = False) -> Callable[[Workspace], None]:
    def setup(ws: Workspace) -> None:
        from PIL import Image

        folder = ws.root / "imgs"
        folder.mkdir()
        if empty:
            (folder / "readme.txt").write_text("no images here")
            return
        for i, s in enumerate(sizes):
            Image.fromarray((np.arange(s * s).reshape(s, s) % 255).astype(np.uint8)).save(folder / f"{i}.png")
        if broken:
            (folder / "9.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")

    return setup


RNG = np.random.default_rng(3)
X = RNG.normal(size=(8, 1, 8, 8)).astype(np.float32)
_D = "{w}/bad.npz"

# (name, data spec, setup, pattern)
_BAD_DATA: list[tuple[str, str, Callable[[Workspace], None] | None, str]] = [
    ("missing", "{w}/nope.npz", None, "does not exist"),
    ("empty-file", _D, _bytes("bad.npz", b""), "cannot read .* as .npz"),
    ("text-file", _D, _bytes("bad.npz", b"x,y\n1,2\n"), "cannot read .* as .npz"),
    ("truncated", _D, _bytes("bad.npz", lambda ws: ws.path("d").read_bytes()[:900]), "cannot read .* as .npz"),
    ("corrupt-member", _D, _bytes("bad.npz", lambda ws: _corrupt(ws.path("d").read_bytes())), "cannot read .*\\.npz"),
    (
        "npy-not-npz",
        _D,
        lambda ws: np.save(ws.root / "bad.npz", X) or (ws.root / "bad.npz.npy").rename(ws.root / "bad.npz"),
        "cannot read .* as .npz",
    ),
    ("object-array", _D, _npz("bad.npz", x=np.array([object(), 1], dtype=object)), "cannot read .*\\.npz"),
    ("strings", _D, _npz("bad.npz", x=np.array(["a", "b"])), "dtype <U1; it must be numeric"),
    ("scalar", _D, _npz("bad.npz", x=np.float32(1.0)), "is a scalar"),
    ("zero-samples", _D, _npz("bad.npz", x=np.zeros((0, 1, 8, 8), np.float32)), "has 0 samples"),
    ("nan", _D, _npz("bad.npz", x=np.where(X > 1, np.nan, X)), r"NaN or Inf value\(s\)"),
    ("inf", _D, _npz("bad.npz", x=np.where(X > 1, np.inf, X)), r"NaN or Inf value\(s\)"),
    ("neg-inf-one", _D, _npz("bad.npz", x=np.where(X.max() == X, -np.inf, X)), r"has 1 NaN or Inf"),
    ("int64", _D, _npz("bad.npz", x=np.zeros((2, 1, 8, 8), np.int64)), "dtype int64"),
    ("wrong-keys", _D, _npz("bad.npz", a=X, b=X), "no array for model input"),
    ("wrong-shape", _D, _npz("bad.npz", x=RNG.normal(size=(8, 3, 5, 5)).astype(np.float32)), "."),
    ("labels-only", _D, _npz("bad.npz", y=np.arange(3)), "no input arrays"),
    ("labels-fractional", _D, _npz("bad.npz", x=X, y=np.linspace(0, 1, 8)), "are not integers"),
    ("labels-count", _D, _npz("bad.npz", x=X, y=np.arange(3)), "3 labels for 8 samples"),
    ("labels-2d", _D, _npz("bad.npz", x=X, y=np.zeros((8, 2), np.int64)), "must be one per sample"),
    ("labels-negative", _D, _npz("bad.npz", x=X, y=-np.arange(8)), "are negative"),
    (
        "header-bomb",
        "{w}/bomb.npz",
        _header_bomb,
        r"\(shape \[100000, 1, 100, 1000\], float32\) declares 40 GB, above the 8 GB limit; raise it with --max-size",
    ),
    ("n-negative", "{d}?n=-5", None, r"data option n='-5' .* must be an integer >= 1"),
    ("n-zero", "{d}?n=0", None, r"n='0'"),
    ("n-text", "{d}?n=abc", None, r"n='abc'"),
    ("n-float", "{d}?n=1.5", None, r"n='1.5'"),
    ("unknown-option", "{d}?batch=3", None, r"unknown data option 'batch'"),
    ("repeated-option", "{d}?n=2&n=3", None, "given twice"),
    ("not-key-value", "{d}?n", None, "is not key=value"),
    ("folder-option-on-npz", "{d}?size=8", None, "unknown data option 'size'"),
    ("builtin-unknown", "builtin:imagenet-full", None, "unknown built-in data set"),
    ("builtin-split", "builtin:moons?split=valid", None, r"split='valid' .* must be train, test or all"),
    ("builtin-total-text", "builtin:moons?total=many", None, "total='many'"),
    ("builtin-noise-negative", "builtin:moons?noise=-1", None, "noise='-1'"),
    ("builtin-key-not-for-it", "builtin:digits?noise=0.1", None, "unknown data option 'noise'"),
    ("images-broken-file", "{w}/imgs", _images(broken=True), r"image '.*9\.png' cannot be read"),
    ("images-none", "{w}/imgs", _images(empty=True), "no images"),
    ("images-sizes-differ", "{w}/imgs", _images(sizes=(8, 9)), r"differ in size; add \?size=N"),
    ("images-size-zero", "{w}/imgs?size=0", _images(), r"size='0' .* must be an integer in \[1, 4096\]"),
    ("images-size-text", "{w}/imgs?size=big", _images(), "size='big'"),
    ("images-mode", "{w}/imgs?mode=cmyk", _images(), "mode='cmyk'"),
    ("images-std-zero", "{w}/imgs?std=0", _images(), "std='0'"),
    ("images-mean-text", "{w}/imgs?mean=a,b", _images(), "mean='a,b'"),
    ("images-mean-count", "{w}/imgs?mean=0.1,0.2", _images(), "mean has 2 values for 3-channel images"),
]

CASES: list[Case] = [
    case(f"{verb}-{name}", with_data(verb, spec), 2, pattern, setup)
    for name, spec, setup, pattern in _BAD_DATA
    for verb in DATA_VERBS
]
# A small file that inflates past --max-size is refused from its header, before it is inflated.
CASES += [
    case(
        f"{verb}-inflates-past-limit",
        [*with_data(verb, "{w}/z.npz"), "--max-size", "0.0001"],
        2,
        r"array 'x' of .*z\.npz' \(shape \[2000, 1, 8, 8\], float32\) declares 0.000512 GB, above the 0.0001 GB",
        _npz("z.npz", x=np.zeros((2000, 1, 8, 8), np.float32)),
    )
    for verb in DATA_VERBS
]
# Data so large that the model's activations overflow float32: the result would not be finite.
CASES += [
    case(
        "profile-overflow",
        with_data("profile", _D),
        2,
        r"mean activation of '.*' is not finite",
        _npz("bad.npz", x=np.full((4, 1, 8, 8), 3e38, np.float32)),
    ),
    case(
        "grad-overflow",
        with_data("grad", _D),
        2,
        "is not finite",
        _npz("bad.npz", x=np.full((4, 1, 8, 8), 3e38, np.float32)),
    ),
]
# prune and quantize read --data for fidelity and calibration.
CASES += [
    case(f"{verb}-data-{name}", [*_args, "-d", spec], 2, pattern, setup)
    for verb, _args in (
        ("prune", ["prune", "{m}", "--ratio", "0.3", "-o", "{o}/x.onnx", "--repeats", "1"]),
        ("quantize", ["quantize", "{m}", "--criterion", "weight", "--avg-bits", "6", "-o", "{o}/x.onnx"]),
    )
    for name, spec, setup, pattern in _BAD_DATA[:12]
]


def _corrupt(data: bytes) -> bytes:
    """Flip bytes in the middle of the first member's payload (the zip directory stays valid)."""
    b = bytearray(data)
    for i in range(200, 400):
        b[i] ^= 0xFF
    return bytes(b)


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_bad_data(ws: Workspace, capsys: pytest.CaptureFixture[str], c: Case) -> None:
    run_case(ws, c, capsys)
