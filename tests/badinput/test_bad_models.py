"""Bad model files and bad external data, for every verb that reads a model.

External data: a location that is absolute, has ``..``, or leads out through a symlink is refused by
onnxslice itself (whatever the installed onnx does), before any existence check; the error names the
tensor and the rule. Declared sizes above ``--max-size`` are refused before anything is read.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from _bad import MODEL_VERBS, Case, Workspace, case, run_case, with_model
from _common import small_cnn
from onnx import TensorProto, helper

from onnxslice.testing import make_model

# -- bad model files ------------------------------------------------------------------------------------


def _write(name: str, data: bytes | Callable[[Workspace], bytes]) -> Callable[[Workspace], None]:
    def setup(ws: Workspace) -> None:
        (ws.root / name).write_bytes(data(ws) if callable(data) else data)

    return setup


def _proto(name: str, build: Callable[[], onnx.ModelProto]) -> Callable[[Workspace], None]:
    def setup(ws: Workspace) -> None:
        (ws.root / name).write_bytes(build().SerializeToString())

    return setup


def _no_graph() -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.ir_version = 8
    return m


def _dangling() -> onnx.ModelProto:
    m = small_cnn()
    m.graph.node[2].input[0] = "nowhere"
    return m


def _unknown_default_op() -> onnx.ModelProto:
    m = small_cnn()
    m.graph.node[2].op_type = "Frobnicate"
    return m


def _custom_domain_op() -> onnx.ModelProto:
    m = small_cnn()
    m.graph.node[2].domain = "com.example"
    m.graph.node[2].op_type = "Frob"
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    return m


def _no_inputs() -> onnx.ModelProto:
    w = np.ones((2, 2), np.float32)
    nodes = [helper.make_node("Relu", ["w"], ["y"], name="r")]
    return make_model(nodes, {}, {"y": (np.float32, [2, 2])}, {"w": w})


def _huge_initializer() -> onnx.ModelProto:
    m = small_cnn()
    t = m.graph.initializer[0]
    del t.dims[:]
    t.dims.extend([100_000, 100_000])  # 40 GB declared, a few bytes stored
    return m


def _future_ir() -> onnx.ModelProto:
    m = small_cnn()
    m.ir_version = 99
    return m


def _cycle() -> onnx.ModelProto:
    m = small_cnn()
    m.graph.node[0].input[0] = "p"  # conv reads pool's output: a cycle
    return m


def _bad_attr() -> onnx.ModelProto:
    m = small_cnn()
    m.graph.node[3].ClearField("attribute")  # MaxPool without kernel_shape
    return m


_BAD_MODELS: list[tuple[str, str, Callable[[Workspace], None] | None, str]] = [
    ("missing", "{w}/nope.onnx", None, "does not exist"),
    ("empty", "{w}/empty.onnx", _write("empty.onnx", b""), "is empty"),
    ("folder", "{o}", None, "is a directory"),
    ("truncated", "{w}/cut.onnx", _write("cut.onnx", lambda ws: ws.path("m").read_bytes()[:700]), "ONNX"),
    ("text", "{w}/t.onnx", _write("t.onnx", b"hello, I am not a model\n" * 20), "ONNX"),
    ("npz-as-model", "{d}", None, "ONNX"),
    ("json-as-model", "{sc}", None, "ONNX"),
    ("no-graph", "{w}/ng.onnx", _proto("ng.onnx", _no_graph), "no ONNX graph"),
    ("dangling-input", "{w}/dg.onnx", _proto("dg.onnx", _dangling), "not a valid ONNX model"),
    ("unknown-op", "{w}/uo.onnx", _proto("uo.onnx", _unknown_default_op), "not a valid ONNX model"),
    (
        "huge-initializer",
        "{w}/hi.onnx",
        _proto("hi.onnx", _huge_initializer),
        r"above the .* limit; raise it with --max-size",
    ),
    ("future-ir", "{w}/fi.onnx", _proto("fi.onnx", _future_ir), "not a valid ONNX model"),
    ("cycle", "{w}/cy.onnx", _proto("cy.onnx", _cycle), "."),
    ("bad-attribute", "{w}/ba.onnx", _proto("ba.onnx", _bad_attr), "."),
]

CASES: list[Case] = [
    case(f"{verb}-{name}", with_model(verb, model), 2, pattern, setup)
    for name, model, setup, pattern in _BAD_MODELS
    for verb in MODEL_VERBS
]
# An op no one implements: the checker cannot know a custom domain, onnxruntime has no kernel -> exit 3.
CASES += [
    case(
        f"{verb}-custom-op",
        with_model(verb, "{w}/co.onnx"),
        3,
        "onnxruntime|no '",
        _proto("co.onnx", _custom_domain_op),
    )
    for verb in ("profile", "grad")
]
# A model without inputs cannot take data.
CASES += [
    case(f"{verb}-no-inputs", with_model(verb, "{w}/ni.onnx"), 2, "no inputs", _proto("ni.onnx", _no_inputs))
    for verb in ("profile", "grad")
]
# slice checks the profile against the model first: a profile of another model is refused.
CASES += [
    case(
        f"slice-{name}",
        with_model("slice", f"{{w}}/{name}.onnx"),
        2,
        "belongs to another model",
        _proto(f"{name}.onnx", build),
    )
    for name, build in (("co", _custom_domain_op), ("ni", _no_inputs))
]

# -- external data ----------------------------------------------------------------------------------------


def _ext(
    mutate: Callable[[Workspace, onnx.ModelProto], None] | None = None, after: Callable[[Workspace], None] | None = None
) -> Callable[[Workspace], None]:
    """Write ext.onnx + ext.bin (every initializer external), then apply ``mutate`` to the proto."""

    def setup(ws: Workspace) -> None:
        m = small_cnn()
        onnx.save_model(
            m,
            str(ws.root / "ext.onnx"),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location="ext.bin",
            size_threshold=0,
        )
        proto = onnx.load(str(ws.root / "ext.onnx"), load_external_data=False)
        if mutate is not None:
            mutate(ws, proto)
        (ws.root / "ext.onnx").write_bytes(proto.SerializeToString())
        (ws.root.parent / "outside.bin").write_bytes(b"\0" * 4096)  # a file outside the model's folder
        if after is not None:
            after(ws)

    return setup


def _set(key: str, value: str, tensor: str = "fc.w") -> Callable[[Workspace, onnx.ModelProto], None]:
    def mutate(ws: Workspace, proto: onnx.ModelProto) -> None:
        t = next(t for t in proto.graph.initializer if t.name == tensor)
        entries = {e.key: e.value for e in t.external_data}
        entries[key] = value
        del t.external_data[:]
        for k, v in entries.items():
            e = t.external_data.add()
            e.key, e.value = k, v

    return mutate


def _symlink_file(ws: Workspace) -> None:
    os.symlink(ws.root.parent / "outside.bin", ws.root / "link.bin")


def _symlink_dir(ws: Workspace) -> None:
    (ws.root.parent / "outdir").mkdir(exist_ok=True)
    (ws.root.parent / "outdir" / "ext.bin").write_bytes((ws.root / "ext.bin").read_bytes())
    os.symlink(ws.root.parent / "outdir", ws.root / "linkdir")


def _truncate_bin(ws: Workspace) -> None:
    p = ws.root / "ext.bin"
    p.write_bytes(p.read_bytes()[:100])


_EXT: list[tuple[str, Callable[[Workspace], None], str]] = [
    ("absolute", _ext(_set("location", "/etc/passwd")), r"initializer 'fc.w' has an absolute location"),
    (
        "absolute-outside",
        _ext(lambda ws, p: _set("location", str(ws.root.parent / "outside.bin"))(ws, p)),
        "initializer 'fc.w' has an absolute location",
    ),
    ("drive-letter", _ext(_set("location", "C:\\weights.bin")), "absolute location"),
    (
        "dotdot-existing",
        _ext(_set("location", "../outside.bin")),
        r"initializer 'fc.w' has a location '\.\./outside\.bin' with '\.\.'",
    ),
    ("dotdot-missing", _ext(_set("location", "../nope.bin")), r"with '\.\.'; locations must stay inside"),
    ("dotdot-inner", _ext(_set("location", "sub/../../outside.bin")), r"with '\.\.'"),
    ("backslash-dotdot", _ext(_set("location", "..\\outside.bin")), r"with '\.\.'"),
    ("symlink-file-out", _ext(_set("location", "link.bin"), _symlink_file), "leads out of the model's folder"),
    ("symlink-dir-out", _ext(_set("location", "linkdir/ext.bin"), _symlink_dir), "leads out of the model's folder"),
    (
        "missing",
        _ext(_set("location", "nope.bin")),
        r"initializer 'fc.w' keeps its data in 'nope.bin', which is missing",
    ),
    ("empty-location", _ext(_set("location", "")), "initializer 'fc.w' has no location"),
    ("truncated-file", _ext(after=_truncate_bin), "truncated"),
    ("length-mismatch", _ext(_set("length", "16")), r"initializer 'fc.w' has 16 bytes of external data"),
    ("offset-past-end", _ext(_set("offset", "999999")), "truncated or not this model's"),
    ("negative-offset", _ext(_set("offset", "-8")), "negative external-data offset"),
    ("non-integer-length", _ext(_set("length", "ten")), "non-integer external-data offset or length"),
]
_EXT_VERBS = ("inspect", "profile", "prune", "quantize")

CASES += [
    case(f"{verb}-ext-{name}", with_model(verb, "{w}/ext.onnx"), 2, pattern, setup)
    for name, setup, pattern in _EXT
    for verb in _EXT_VERBS
]
CASES += [
    case(
        f"{verb}-ext-over-limit",
        [*with_model(verb, "{w}/ext.onnx"), "--max-size", "0.0000005"],
        2,
        r"initializer 'fc.w' .* declares 7.68e-07 GB, above the 5e-07 GB limit; raise it with --max-size",
        _ext(),
    )
    for verb in _EXT_VERBS
]
# Writing over a model's external-data file is refused like writing over the model.
CASES += [
    case(
        f"{verb}-out-is-external-data",
        [*with_model(verb, "{w}/ext.onnx"), "-o", "{w}/ext.bin"],
        2,
        "is the external data of MODEL this command reads",
        _ext(),
    )
    for verb in ("prune", "quantize")
]


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_bad_model(ws: Workspace, capsys: pytest.CaptureFixture[str], c: Case) -> None:
    run_case(ws, c, capsys)


def test_external_data_inside_the_folder_still_loads(ws: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    """The containment rules refuse nothing legitimate: a subfolder location loads and matches the inline model."""
    from onnxslice.model import load

    _ext(_set("location", "ext.bin"))(ws)
    (ws.root / "sub").mkdir()
    os.replace(ws.root / "ext.bin", ws.root / "sub" / "ext.bin")
    proto = onnx.load(str(ws.root / "ext.onnx"), load_external_data=False)
    for t in proto.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "sub/ext.bin"
    (ws.root / "ext.onnx").write_bytes(proto.SerializeToString())
    a, b = load(ws.root / "ext.onnx"), load(ws.path("m"))
    assert a.weights_fingerprint == b.weights_fingerprint
    for n in b.initializer_names:
        np.testing.assert_array_equal(a.initializer(n), b.initializer(n))
    assert not any(t.data_location == TensorProto.EXTERNAL for t in a.proto.graph.initializer)


def test_prune_zipmap_model_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from _common import ROOT

    from onnxslice.cli import main

    rc = main(
        [
            "prune",
            str(ROOT / "models" / "mlp_digits_zipmap.onnx"),
            "--ratio",
            "0.3",
            "-o",
            str(tmp_path / "p.onnx"),
            "--repeats",
            "1",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 3 and len(err.strip().splitlines()) == 1, err
    assert "ZipMap" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())
