"""Terminal output: rich tables as plain text, progress on stderr only when asked, long work announced."""

from __future__ import annotations

import pytest

from onnxslice.console import format_table, progress, progress_bar, warn_if_long
from onnxslice.sensitivity.cost import SUFFIX, criterion_passes, groundtruth_passes


def test_format_table_right_aligns_numbers_and_has_no_terminal_codes() -> None:
    text = format_table([{"layer": "conv1", "params": 1234}, {"layer": "fc", "params": 12}], title="t")
    lines = text.splitlines()
    assert lines[0] == "t" and "\x1b" not in text
    assert lines[-2].endswith("1,234") and lines[-1].endswith("12")
    assert lines[-1].index("12") > lines[-1].index("fc") + len("fc")
    assert format_table([], title="t") == "t\n(empty)"


def test_progress_yields_everything_and_draws_only_when_enabled(capsys: pytest.CaptureFixture[str]) -> None:
    assert list(progress(range(5), desc="x", enabled=False)) == list(range(5))
    assert capsys.readouterr().err == ""
    assert list(progress(iter(range(3)), total=3, desc="work", enabled=True)) == [0, 1, 2]
    assert "work" in capsys.readouterr().err
    with progress_bar(2, "steps", enabled=True) as advance:
        advance("one")
        advance("two")
    assert "steps" in capsys.readouterr().err


def test_warn_if_long_announces_minutes_up_front(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ONNXSLICE_PROGRESS", "1")
    assert warn_if_long(600, "rank", "lower --samples")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "about 10 min" in err and "--samples" in err
    assert not warn_if_long(5, "rank")
    monkeypatch.setenv("ONNXSLICE_PROGRESS", "0")
    assert not warn_if_long(600, "rank")


def test_criterion_costs_follow_their_definitions() -> None:
    assert criterion_passes("weight", 10) == 0
    # a per-layer path point runs the graph below its layer only (SUFFIX of a full pass)
    assert criterion_passes("ig", 10, steps=16) == pytest.approx(10 * SUFFIX * criterion_passes("ig", 10, steps=16,
                                                                                                  path="global"))
    assert criterion_passes("idgi", 10, steps=16) > criterion_passes("ig", 10, steps=16)
    assert criterion_passes("smoothgrad", 10, noise_samples=16) == 16 * criterion_passes("grad", 10)
    assert groundtruth_passes(10, 8) > groundtruth_passes(5, 8)
