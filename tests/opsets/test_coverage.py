"""``inspect`` tells the truth: a rule that refuses some of a model's nodes is reported partial with the case,
and the rule does refuse them (one-line UnsupportedOpError naming the node)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from onnxslice.commands.inspect import describe
from onnxslice.errors import UnsupportedOpError
from onnxslice.grad import GradientEngine
from onnxslice.model import load
from onnxslice.testing import make_model


def _resize(antialias: int):
    node = helper.make_node("Resize", ["x", "", "s"], ["y"], name="up", mode="linear", antialias=antialias)
    return load(
        make_model(
            [node],
            {"x": (np.float32, ["N", 2, 4, 4])},
            {"y": (np.float32, ["N", 2, 2, 2])},
            {"s": np.array([1, 1, 0.5, 0.5], np.float32)},
            opset=19,
        )
    )


def test_inspect_reports_partial_rule_and_the_rule_refuses() -> None:
    model = _resize(1)
    d = describe(model)
    assert "antialias=1" in d["partial_rules"]["vjp"]["Resize"]
    assert "Resize" not in d["missing_rules"]["vjp"]
    eng = GradientEngine(model, "output-norm", exact=True, device="cpu")
    with pytest.raises(UnsupportedOpError, match=r"at node 'up'.*antialias=1"):
        eng(np.random.default_rng(0).standard_normal((2, 2, 4, 4)).astype(np.float32))


def test_inspect_no_partial_when_the_node_is_supported() -> None:
    d = describe(_resize(0))
    assert "Resize" not in d["partial_rules"].get("vjp", {})


def test_inspect_run_time_refusals_are_marked_may() -> None:
    h = 3
    rng = np.random.default_rng(0)
    node = helper.make_node("GRU", ["x", "W", "R"], ["y", "yh"], hidden_size=h)
    model = load(
        make_model(
            [node],
            {"x": (np.float32, [5, "N", 2])},
            {"y": (np.float32, [5, 1, "N", h]), "yh": (np.float32, [1, "N", h])},
            {
                "W": rng.standard_normal((1, 3 * h, 2)).astype(np.float32),
                "R": rng.standard_normal((1, 3 * h, h)).astype(np.float32),
            },
        )
    )
    d = describe(model)
    assert d["partial_rules"]["contributions"]["GRU"] == ["granularity='channel' (may refuse)"]
    assert "GRU" not in d["partial_rules"].get("vjp", {})


def test_docs_rules_table_is_the_registry() -> None:
    from pathlib import Path

    from onnxslice.opsets.coverage import coverage_markdown

    text = (Path(__file__).resolve().parents[2] / "docs" / "rules.md").read_text()
    start = text.index("<!-- coverage-table")
    start = text.index("\n", start) + 1
    end = text.index("<!-- /coverage-table -->")
    assert text[start:end].strip() == coverage_markdown().strip(), "regenerate the table in docs/rules.md"
