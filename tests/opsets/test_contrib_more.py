"""``contributions`` rules added for "any model a user brings", against naive per-neuron references.

Each case is a one-node model. The reference enumerates every (output neuron, input neuron) edge with its
weight, obtained independently of the rule (by running the op in onnxruntime on one-hot inputs, which
gives the columns of its linear map), and accumulates ``sign(CONTRIB_n * dy_n * w_ni * dx_i)`` with Python
loops, with theta where the rule is a weighted sum.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from onnx import helper

from onnxslice.model import load
from onnxslice.profile import Profile
from onnxslice.record import Recorder
from onnxslice.slicing import BackwardOptions, backward, deltas
from onnxslice.testing import make_model, run_ort

THETA = 0.3
RNG = np.random.default_rng(11)


def _run(
    node: Any,
    x_shape: tuple[int, ...],
    y_shape: tuple[int, ...],
    inits: dict[str, np.ndarray],
    batch: int = 2,
    granularity: str = "element",
):
    model = load(make_model([node], {"x": (np.float32, ["N", *x_shape])}, {"y": (np.float32, ["N", *y_shape])}, inits))
    x = RNG.standard_normal((batch, *x_shape)).astype(np.float32)
    values = Recorder(model, "all", "cpu").run({"x": x})
    values["x"] = x
    prof = Profile(
        {
            "x": (0.5 * RNG.standard_normal(x_shape)).astype(np.float32),
            "y": (0.5 * RNG.standard_normal(y_shape)).astype(np.float32),
        },
        1,
        model.fingerprint,
    )
    d = deltas(prof, values)
    seeds = {"y": RNG.integers(-2, 3, size=(batch, *y_shape)).astype(np.int32)}
    neurons, synapses = backward(model, values, d, seeds, BackwardOptions(theta=THETA, granularity=granularity))
    return model, x, values, d, seeds, neurons, synapses


def _linear_map(model, x_shape: tuple[int, ...]) -> np.ndarray:
    """``M [out, in]`` of a model linear in x (no bias), from onnxruntime on one-hot inputs."""
    n_in = int(np.prod(x_shape))
    basis = np.eye(n_in, dtype=np.float32).reshape(n_in, *x_shape)
    (y,) = run_ort(model, {"x": basis})
    return y.reshape(n_in, -1).T.astype(np.float64)


def _naive(m: np.ndarray, d, seeds, values, theta: bool) -> np.ndarray:
    bsz = d["x"].shape[0]
    tab = np.zeros(d["x"][0].size, np.int64)
    for b in range(bsz):
        dx, dy, c, y = d["x"][b].ravel(), d["y"][b].ravel(), seeds["y"][b].ravel(), values["y"][b].ravel()
        for n in range(m.shape[0]):
            if c[n] == 0:
                continue
            ins = [i for i in range(m.shape[1]) if m[n, i] != 0]
            terms = [m[n, i] * float(dx[i]) for i in ins]
            keep = [True] * len(ins)
            if theta and abs(float(y[n])) >= 1e-12:
                acc = 0.0
                for q in sorted(range(len(ins)), key=lambda q: abs(terms[q])):
                    acc += terms[q]
                    if abs(acc) < THETA * abs(float(y[n])):
                        keep[q] = False
                    else:
                        break
            for i, t, k in zip(ins, terms, keep, strict=True):
                if k:
                    tab[i] += int(np.sign(c[n]) * np.sign(dy[n]) * np.sign(np.float32(t)))
    return tab.reshape(d["x"].shape[1:])


RESIZE = [
    ({"mode": "linear"}, (1, 1, 1.5, 2.0)),
    ({"mode": "linear", "coordinate_transformation_mode": "align_corners"}, (1, 1, 2.0, 0.6)),
    ({"mode": "cubic"}, (1, 1, 2.0, 1.5)),
    ({"mode": "cubic", "exclude_outside": 1, "cubic_coeff_a": -0.5}, (1, 1, 0.6, 1.5)),
]


@pytest.mark.parametrize(("attrs", "scales"), RESIZE, ids=lambda v: str(v))
def test_contrib_resize_weighted_average_matches_naive(attrs: dict[str, Any], scales: tuple[float, ...]) -> None:
    x_shape = (2, 4, 5)
    y_shape = (2, *(int(np.floor(n * s)) for n, s in zip(x_shape[1:], scales[2:], strict=True)))
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], **attrs)
    model, _, values, d, seeds, neurons, _ = _run(node, x_shape, y_shape, {"scales": np.array(scales, np.float32)})
    ref = _naive(_linear_map(model, x_shape), d, seeds, values, theta=False)
    assert np.abs(ref).sum() > 0
    np.testing.assert_array_equal(neurons["x"], ref)


def test_contrib_resize_nearest_routes_contrib() -> None:
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest")
    _, _, _, _, seeds, neurons, _ = _run(node, (2, 3, 3), (2, 6, 6), {"scales": np.array([1, 1, 2, 2], np.float32)})
    expected = seeds["y"].reshape(2, 2, 3, 2, 3, 2).sum(axis=(5, 3)).sum(axis=0)
    np.testing.assert_array_equal(neurons["x"], expected)
