"""Round-robin timing: repeats, order, and the least measured time for fast models."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from onnxslice.session import MAX_REPEATS, median_ratios, round_robin_times


class _Fake:
    """A session whose run takes ``ms`` and logs its name, in place of onnxruntime."""

    def __init__(self, name: str, ms: float, log: list[str]) -> None:
        self.name, self.ms, self.log = name, ms, log

    def run(self, _outputs: Any, _feed: Any) -> None:
        self.log.append(self.name)
        end = time.perf_counter() + self.ms / 1e3
        while time.perf_counter() < end:
            pass


def test_fast_sessions_get_more_repeats_until_the_least_measured_time() -> None:
    log: list[str] = []
    fast = [_Fake("a", 0.05, log), _Fake("b", 0.05, log)]
    times = round_robin_times(fast, [{}, {}], repeats=3, warmup=1, min_total_ms=20.0)
    assert 20.0 / 0.05 * 0.5 <= len(times) <= MAX_REPEATS  # about 400 runs each (timer grain aside)
    assert times.sum(axis=0).min() >= 15.0


def test_slow_sessions_keep_the_repeats_given_and_alternate_who_runs_first() -> None:
    log: list[str] = []
    slow = [_Fake("a", 4.0, log), _Fake("b", 4.0, log)]
    times = round_robin_times(slow, [{}, {}], repeats=3, warmup=1, min_total_ms=10.0)
    assert times.shape == (3, 2) and (times >= 4.0).all()
    assert log[2:] == ["a", "b", "b", "a", "a", "b"]  # after one warm-up run each


def test_no_least_time_means_exactly_the_repeats_given() -> None:
    log: list[str] = []
    fast = [_Fake("a", 0.01, log)]
    assert round_robin_times(fast, [{}], repeats=4, warmup=2, min_total_ms=0).shape == (4, 1)


def test_median_ratios_compares_against_the_first_session() -> None:
    log: list[str] = []
    ms, ratios = median_ratios([_Fake("a", 2.0, log), _Fake("b", 4.0, log)], {}, repeats=5)
    assert ratios[0] == 1.0 and 1.6 <= ratios[1] <= 2.4
    assert np.isclose(ms[1] / ms[0], ratios[1], rtol=0.2)
