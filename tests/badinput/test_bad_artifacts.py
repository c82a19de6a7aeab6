"""Bad saved artifacts: profiles, slices, layer scores and prune/quantize plans, and gradients files.

Each is validated at load (header, keys, shapes, dtypes, finite values) and against the model it is
used with (structure and weights fingerprints, names, shapes); the error is one line naming the file.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from _bad import Case, Workspace, case, re_npz, run_case

from onnxslice.errors import DataError

Setup = Callable[[Workspace], None]


def _copy_npz(src: str, dst: str, **changes: Any) -> Setup:
    def setup(ws: Workspace) -> None:
        shutil.copy(ws.path(src), ws.root / dst)
        if changes:
            re_npz(ws.root / dst, **changes)

    return setup


def _raw(dst: str, data: bytes | Callable[[Workspace], bytes]) -> Setup:
    def setup(ws: Workspace) -> None:
        (ws.root / dst).write_bytes(data(ws) if callable(data) else data)

    return setup


def _json(src: str, dst: str, edit: Callable[[Any], Any]) -> Setup:
    def setup(ws: Workspace) -> None:
        d = json.loads(ws.path(src).read_text())
        out = edit(d)
        (ws.root / dst).write_text(json.dumps(d if out is None else out))

    return setup


def _text(dst: str, text: str) -> Setup:
    return _raw(dst, text.encode())


def _set(*path: str, value: Any) -> Callable[[Any], None]:
    def edit(d: Any) -> None:
        for k in path[:-1]:
            d = d[k]
        if value is _DEL:
            del d[path[-1]]
        else:
            d[path[-1]] = value

    return edit


_DEL = object()
_OTHER_WEIGHTS = "0123456789abcdef"

# -- profiles, read by slice -p ------------------------------------------------------------------------------
_SLICE = ["slice", "{m}", "-p", "{w}/bp.npz", "-d", "{d}", "-o", "{o}/s.npz", "--workers", "1", "--samples", "0:2"]
_PROFILES: list[tuple[str, Setup | None, str]] = [
    ("missing", None, "(?i)profile file '.*bp.npz' does not exist"),
    ("empty", _raw("bp.npz", b""), "is not an .npz archive"),
    ("truncated", _raw("bp.npz", lambda ws: ws.path("p").read_bytes()[:1500]), "is not an .npz archive"),
    ("text", _text("bp.npz", "mean,count\n"), "is not an .npz archive"),
    ("data-file", _copy_npz("d", "bp.npz"), "is not an onnxslice Profile file"),
    ("slice-file", _copy_npz("s", "bp.npz"), "holds a Slice, not a Profile"),
    ("no-count", _copy_npz("p", "bp.npz", meta={"count": None}), "has no 'count'"),
    ("count-zero", _copy_npz("p", "bp.npz", meta={"count": 0}), "computed on 0 samples"),
    ("count-text", _copy_npz("p", "bp.npz", meta={"count": "8"}), "'count' is str, expected int"),
    ("no-fingerprint", _copy_npz("p", "bp.npz", meta={"fingerprint": None}), "has no 'fingerprint'"),
    (
        "nan-mean",
        _copy_npz("p", "bp.npz", mean__c=np.full((4, 8, 8), np.nan, np.float32)),
        "array 'mean/c' has 256 NaN",
    ),
    ("inf-mean", _copy_npz("p", "bp.npz", mean__r=np.full((4, 8, 8), np.inf, np.float32)), "NaN or Inf"),
    ("int-mean", _copy_npz("p", "bp.npz", mean__c=np.zeros((4, 8, 8), np.int64)), "dtype int64, expected float"),
    ("stray-array", _copy_npz("p", "bp.npz", extra=np.zeros(3)), "unexpected array 'extra'"),
    (
        "no-values",
        _copy_npz("p", "bp.npz", **{f"mean__{k}": None for k in "xcbrpf"}, mean__logits=None),
        "holds no values",
    ),
    (
        "truncated-array",
        _copy_npz("p", "bp.npz", mean__c=np.zeros((4, 8), np.float32)),
        r"value 'c' has shape \[4, 8\]",
    ),
    ("unknown-value", _copy_npz("p", "bp.npz", mean__zzz=np.zeros(3, np.float32)), "names value 'zzz'"),
    ("other-structure", _copy_npz("p", "bp.npz", meta={"fingerprint": "ffffffffffffffff"}), "belongs to another model"),
    ("other-weights", _copy_npz("p", "bp.npz", meta={"weights": _OTHER_WEIGHTS}), "same graph with other weights"),
    ("header-not-json", _copy_npz("p", "bp.npz", __meta__=np.frombuffer(b"{oops", np.uint8)), "damaged header"),
    ("header-list", _copy_npz("p", "bp.npz", __meta__=np.frombuffer(b"[1, 2]", np.uint8)), "damaged header"),
    ("folder", lambda ws: (ws.root / "bp.npz").mkdir(), "is not a file"),
]
CASES: list[Case] = [case(f"slice-profile-{n}", _SLICE, 2, p, s) for n, s, p in _PROFILES]

# -- slices, read by prune --budget slice --slice ------------------------------------------------------------
_PRUNE_SLICE = [
    "prune",
    "{m}",
    "--ratio",
    "0.3",
    "--budget",
    "slice",
    "--slice",
    "{w}/bs.npz",
    "-o",
    "{o}/p.onnx",
    "--repeats",
    "1",
]
_SLICES: list[tuple[str, Setup | None, str]] = [
    ("missing", None, "Slice file '.*bs.npz' does not exist"),
    ("truncated", _raw("bs.npz", lambda ws: ws.path("s").read_bytes()[:1000]), "is not an .npz archive"),
    ("profile-file", _copy_npz("p", "bs.npz"), "holds a Profile, not a Slice"),
    ("no-targets", _copy_npz("s", "bs.npz", meta={"targets": None}), "has no 'targets'"),
    ("empty-targets", _copy_npz("s", "bs.npz", meta={"targets": []}), "non-empty list of strings"),
    ("theta-2", _copy_npz("s", "bs.npz", meta={"theta": 2.0}), r"theta 2.0 is not in \(0, 1\)"),
    ("theta-nan", _copy_npz("s", "bs.npz", meta={"theta": float("nan")}), "'theta' is nan, not a finite number"),
    ("no-samples", _copy_npz("s", "bs.npz", samples=None), "has no 'samples' array"),
    ("float-samples", _copy_npz("s", "bs.npz", samples=np.zeros(2)), "array 'samples' has dtype float64"),
    ("negative-samples", _copy_npz("s", "bs.npz", samples=np.array([-1, 0])), "negative indices"),
    (
        "float-synapses",
        _copy_npz("s", "bs.npz", **{"synapse__conv.w": np.zeros((4, 1, 3, 3))}),
        "array 'synapse/conv.w' has dtype float64",
    ),
    ("stray-array", _copy_npz("s", "bs.npz", junk=np.zeros(2, np.int64)), "unexpected array 'junk'"),
    ("bad-layer-record", _copy_npz("s", "bs.npz", meta={"layers": [{"layer": "conv"}]}), "layer record is malformed"),
    (
        "other-structure",
        _copy_npz("s", "bs.npz", meta={"fingerprint": "ffffffffffffffff"}),
        "computed on another model",
    ),
    ("other-weights", _copy_npz("s", "bs.npz", meta={"weights": _OTHER_WEIGHTS}), "same graph with other weights"),
    (
        "synapse-shape",
        _copy_npz("s", "bs.npz", **{"synapse__conv.w": np.zeros((4, 1, 2, 2), np.int64)}),
        r"weight 'conv.w' has shape \[4, 1, 2, 2\], the model's is \[4, 1, 3, 3\]",
    ),
    ("unknown-weight", _copy_npz("s", "bs.npz", **{"synapse__nope": np.zeros(3, np.int64)}), "names weight 'nope'"),
]
CASES += [case(f"prune-slice-{n}", _PRUNE_SLICE, 2, p, s) for n, s, p in _SLICES]

# -- layer scores, read by prune/quantize --scores -------------------------------------------------------------
_SCORE_ARGV = {
    "prune": [
        "prune",
        "{m}",
        "--ratio",
        "0.3",
        "--budget",
        "sensitivity",
        "--scores",
        "{w}/bsc.json",
        "-o",
        "{o}/p.onnx",
        "--repeats",
        "1",
    ],
    "quantize": [
        "quantize",
        "{m}",
        "--avg-bits",
        "6",
        "--block-size",
        "16",
        "--scores",
        "{w}/bsc.json",
        "-o",
        "{o}/q.onnx",
    ],
}
_SCORES: list[tuple[str, Setup | None, str]] = [
    ("missing", None, "scores file '.*bsc.json' does not exist"),
    ("not-json", _text("bsc.json", "{conv: 1}"), "is not valid JSON: .* at line 1 column 2"),
    ("binary", _raw("bsc.json", b"\xff\xfe\x00\x01"), "is not text"),
    ("list", _text("bsc.json", "[1, 2]"), "holds a JSON list, not an object"),
    ("nested-deep", _text("bsc.json", "[" * 100_000 + "]" * 100_000), "nested too deeply|holds a JSON list"),
    ("wrong-kind", _json("sc", "bsc.json", _set("kind", value="Profile")), "is not a LayerScores file"),
    ("no-scores", _json("sc", "bsc.json", _set("scores", value=_DEL)), "has no 'scores'"),
    ("empty-scores", _json("sc", "bsc.json", _set("scores", value={})), "hold no layer"),
    (
        "nan-score",
        _text("bsc.json", '{"kind": "LayerScores", "criterion": "w", "scores": {"conv": NaN}}'),
        "holds NaN; JSON numbers must be finite",
    ),
    ("string-score", _json("sc", "bsc.json", _set("scores", "conv", value="high")), "'scores.conv' is 'high'"),
    ("bool-score", _json("sc", "bsc.json", _set("scores", "conv", value=True)), "'scores.conv' is True"),
    ("unknown-layer", _json("sc", "bsc.json", _set("scores", "ghost", value=1.0)), "name layer\\(s\\) ghost"),
    (
        "other-structure",
        _json("sc", "bsc.json", _set("meta", "fingerprint", value="ffffffffffffffff")),
        "computed on another model",
    ),
    ("other-weights", _json("sc", "bsc.json", _set("meta", "weights", value=_OTHER_WEIGHTS)), "other weights"),
    ("meta-list", _json("sc", "bsc.json", _set("meta", value=[1])), "'meta' is not an object"),
]
CASES += [case(f"{verb}-scores-{n}", argv, 2, p, s) for verb, argv in _SCORE_ARGV.items() for n, s, p in _SCORES]

# -- plans, read by prune/quantize --plan ----------------------------------------------------------------------
_PLAN_ARGV = {
    "prune": ["prune", "{m}", "--plan", "{w}/bpl.json", "-o", "{o}/p.onnx", "--repeats", "1"],
    "quantize": ["quantize", "{m}", "--plan", "{w}/bpl.json", "-o", "{o}/q.onnx"],
}
_PLAN_SRC = {"prune": "pp", "quantize": "qp"}


def _plans(verb: str) -> list[tuple[str, Setup | None, str]]:
    src = _PLAN_SRC[verb]
    common: list[tuple[str, Setup | None, str]] = [
        ("missing", None, "plan file '.*bpl.json' does not exist"),
        ("not-json", _text("bpl.json", "layers: {}"), "is not valid JSON"),
        ("list", _text("bpl.json", "[]"), "holds a JSON list"),
        ("empty-file", _text("bpl.json", ""), "is not valid JSON"),
        ("no-layers", _json(src, "bpl.json", _set("layers", value=_DEL)), "with a 'layers' object"),
        ("layers-list", _json(src, "bpl.json", _set("layers", value=["conv"])), "with a 'layers' object"),
        ("meta-string", _json(src, "bpl.json", _set("meta", value="x")), "'meta' must be a JSON object"),
        ("kind-number", _json(src, "bpl.json", _set("kind", value=3)), "'kind' must be a string"),
        ("unknown-layer", _json(src, "bpl.json", _set("layers", "ghost", value=0.5)), "unknown layer\\(s\\) ghost"),
        (
            "other-structure",
            _json(src, "bpl.json", _set("meta", "fingerprint", value="ffffffffffffffff")),
            "computed on another model",
        ),
        ("other-weights", _json(src, "bpl.json", _set("meta", "weights", value=_OTHER_WEIGHTS)), "other weights"),
        ("nan-constant", _text("bpl.json", f'{{"kind": "{verb}", "layers": {{"conv": NaN}}}}'), "holds NaN"),
        (
            "wrong-kind",
            _json(_PLAN_SRC["quantize" if verb == "prune" else "prune"], "bpl.json", lambda d: None),
            "cannot be applied|kind|precision|decision",
        ),
    ]
    if verb == "prune":
        common += [
            ("ratio-2", _json(src, "bpl.json", _set("layers", "conv", value=2.0)), r"ratio of layer 'conv' is 2.0"),
            ("ratio-negative", _json(src, "bpl.json", _set("layers", "conv", value=-0.5)), "must be in \\[0, 1\\)"),
            ("ratio-bool", _json(src, "bpl.json", _set("layers", "conv", value=True)), "is a boolean"),
            (
                "remove-out-of-range",
                _json(src, "bpl.json", _set("layers", "conv", "remove", value=[99])),
                "must hold distinct channels",
            ),
            ("remove-all", _json(src, "bpl.json", _set("layers", "conv", "remove", value=[0, 1, 2, 3])), "leaves no"),
            ("remove-text", _json(src, "bpl.json", _set("layers", "conv", "remove", value="3")), "list of channel"),
            ("decision-empty", _json(src, "bpl.json", _set("layers", "conv", value={})), "needs 'ratio' or 'remove'"),
        ]
    else:
        common += [
            ("precision-int3", _json(src, "bpl.json", _set("layers", "conv", value="int3")), "int3"),
            ("precision-number", _json(src, "bpl.json", _set("layers", "conv", value=8)), "8|precision"),
        ]
    return common


CASES += [case(f"{verb}-plan-{n}", argv, 2, p, s) for verb, argv in _PLAN_ARGV.items() for n, s, p in _plans(verb)]


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_bad_artifact(ws: Workspace, capsys: pytest.CaptureFixture[str], c: Case) -> None:
    run_case(ws, c, capsys)


# -- gradients files (library API: Gradients.load) -------------------------------------------------------------
_GRADS: list[tuple[str, dict[str, Any], str]] = [
    ("no-target-values", {"target_values": None}, "no 'target_values'"),
    ("nan-weight", {"weight__fc.w": np.full((3, 64), np.nan, np.float32)}, "array 'weight/fc.w' has 192 NaN"),
    ("int-weight", {"weight__fc.w": np.zeros((3, 64), np.int64)}, "dtype int64, expected float"),
    ("2d-target-values", {"target_values": np.zeros((8, 2), np.float32)}, "expected 1 dimension"),
    ("input-sample-count", {"input__x": np.zeros((3, 1, 8, 8), np.float32)}, "'input/x' has 3 samples"),
    ("stray", {"junk": np.zeros(1)}, "unexpected array 'junk'"),
    ("no-target", {"meta": {"target": None}}, "has no 'target'"),
    ("per-sample-text", {"meta": {"per_sample": "yes"}}, "'per_sample' is str, expected bool"),
]


@pytest.mark.parametrize(("name", "changes", "pattern"), _GRADS, ids=[g[0] for g in _GRADS])
def test_bad_gradients_file(ws: Workspace, name: str, changes: dict[str, Any], pattern: str) -> None:
    from onnxslice.grad.result import Gradients

    path = ws.root / "bg.npz"
    shutil.copy(ws.path("g"), path)
    re_npz(path, **changes)
    before = path.read_bytes()
    with pytest.raises(DataError, match=pattern) as e:
        Gradients.load(path)
    assert "bg.npz" in str(e.value) and "\n" not in str(e.value)
    assert path.read_bytes() == before


def test_old_files_without_weights_fingerprint_still_load(ws: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    """Files saved before the weights fingerprint existed load and are checked by structure only."""
    from onnxslice.cli import main

    re_npz(ws.path("p"), meta={"weights": None})
    re_npz(ws.path("s"), meta={"weights": None})
    assert (
        main(
            [
                "slice",
                *ws.argv(["{m}", "-p", "{p}", "-d", "{d}", "-o", "{o}/s2.npz", "--workers", "1", "--samples", "0:1"]),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "prune",
                *ws.argv(
                    [
                        "{m}",
                        "--ratio",
                        "0.3",
                        "--budget",
                        "slice",
                        "--slice",
                        "{s}",
                        "-o",
                        "{o}/p.onnx",
                        "--repeats",
                        "1",
                    ]
                ),
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (ws.root / "out").iterdir()) == ["p.onnx", "s2.npz"]
