"""Determinism: the same command with the same seed gives the same results, run after run, and the
slice is the same computed in this process or by the parallel local backend."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _bad import Workspace

from onnxslice.cli import main
from onnxslice.profile import Profile
from onnxslice.slicing import Slice


def _run(ws: Workspace, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(ws.argv(argv)) == 0
    return capsys.readouterr().out


def test_profile_and_grad_are_byte_identical_across_runs(ws: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    for verb, name in (("profile", "p"), ("grad", "g")):
        _run(ws, [verb, "{m}", "-d", "{d}", "-o", f"{{o}}/{name}1.npz"], capsys)
        _run(ws, [verb, "{m}", "-d", "{d}", "-o", f"{{o}}/{name}2.npz"], capsys)
        a, b = (ws.root / "out" / f"{name}1.npz").read_bytes(), (ws.root / "out" / f"{name}2.npz").read_bytes()
        assert a == b
    ref = Profile.load(ws.path("p"))  # the base workspace's profile, made in another process run earlier
    new = Profile.load(ws.root / "out" / "p1.npz")
    assert ref.mean.keys() == new.mean.keys()
    for k in ref.mean:
        np.testing.assert_array_equal(ref.mean[k], new.mean[k])


def test_rank_same_seed_same_scores(ws: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["rank", "{m}", "-d", "{d}", "-c", "smoothgrad", "--noise-samples", "4", "--samples", "8", "--json"]
    a = json.loads(_run(ws, [*argv, "--seed", "3"], capsys))["scores"]["scores"]
    b = json.loads(_run(ws, [*argv, "--seed", "3"], capsys))["scores"]["scores"]
    c = json.loads(_run(ws, [*argv, "--seed", "4"], capsys))["scores"]["scores"]
    assert a == b
    assert a != c  # the seed is used: another seed draws other noise


def test_prune_random_channels_same_seed_same_plan(ws: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "prune",
        "{m}",
        "--ratio",
        "0.3",
        "--channel-score",
        "random",
        "-o",
        "{o}/p.onnx",
        "--repeats",
        "1",
        "--round-to",  # an explicit rounding: the default plan's speed gate (a timing) could refuse to write
        "8",
        "--json",
    ]
    a = json.loads(_run(ws, argv, capsys))["plan"]["layers"]
    b = json.loads(_run(ws, argv, capsys))["plan"]["layers"]
    assert a == b


def test_slice_local_process_equals_parallel_backend(ws: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["slice", "{m}", "-p", "{p}", "-d", "{d}", "--samples", "0:4", "--batch-size", "2", "--backend", "local"]
    _run(ws, [*base, "--workers", "1", "-o", "{o}/one.npz"], capsys)
    _run(ws, [*base, "--workers", "2", "-o", "{o}/two.npz"], capsys)
    a, b = Slice.load(ws.root / "out" / "one.npz"), Slice.load(ws.root / "out" / "two.npz")
    assert a.neurons.keys() == b.neurons.keys() and a.synapses.keys() == b.synapses.keys()
    for k in a.neurons:
        np.testing.assert_array_equal(a.neurons[k], b.neurons[k])
    for k in a.synapses:
        np.testing.assert_array_equal(a.synapses[k], b.synapses[k])
    np.testing.assert_array_equal(a.samples, b.samples)
