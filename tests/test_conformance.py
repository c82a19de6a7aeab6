"""The conformance set in CI: every verb on models nobody on the team designed; no cell may FAIL.

The small models run here (the two tiniest unmarked, the rest ``slow``); the large ``light_*`` ImageNet
models are skipped (they take minutes per verb on a CI machine): run ``python benchmarks/conformance.py
--full`` for them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

pytest.importorskip("torch")

from benchmarks.conformance import VERBS, run_cell
from models import conformance

QUICK = ("heatmap", "seq_tagger")


def _params() -> list:
    out = []
    for e in conformance.ENTRIES:
        if not e.small:
            out.append(pytest.param(e.name, marks=pytest.mark.skip(reason="large ImageNet model: minutes per verb; "
                                                                    "run benchmarks/conformance.py --full")))
        elif e.name in QUICK:
            out.append(e.name)
        else:
            out.append(pytest.param(e.name, marks=pytest.mark.slow))
    return out


@pytest.mark.parametrize("name", _params())
def test_every_verb_ok_or_refused_with_a_reason(name, tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ONNXSLICE_PROGRESS", "0")
    e = conformance.entry(name)
    path, data = conformance.build(name, cache=tmp_path_factory.getbasetemp() / "conformance")
    with tempfile.TemporaryDirectory() as tmp:
        cells = [run_cell(name, v, path, data, Path(tmp), e.target, e.output, e.rewrite_args) for v in VERBS]
    fails = [f"{c.verb}: {c.reason}" for c in cells if c.status == "FAIL"]
    assert not fails, fails
    for c in cells:
        if c.status == "refused":
            assert c.reason and "\n" not in c.reason
