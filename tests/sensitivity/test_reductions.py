"""psi reductions on known arrays, and their bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from onnxslice.sensitivity import REDUCTIONS, UnknownNameError, reduce

ARRAY = np.array([[-3.0, 1.0], [2.0, 0.0]])
CASES = [
    ("mean", 1.5),
    ("l1", 6.0),
    ("l2", np.sqrt(14.0)),
    ("linf", 3.0),
    ("percentile", np.percentile([0.0, 1.0, 2.0, 3.0], 90)),
]


@pytest.mark.parametrize(("name", "expected"), CASES)
def test_reduce_known_array(name, expected):
    assert reduce(ARRAY, name) == pytest.approx(expected)


def test_reduce_covers_all_reductions():
    assert {c[0] for c in CASES} == set(REDUCTIONS)


def test_reduce_percentile_parameter_and_sign_invariance():
    assert reduce(-ARRAY, "percentile", percentile=50) == pytest.approx(1.5)
    assert reduce(ARRAY, "percentile", percentile=100) == 3.0


def test_reduce_unknown_name_lists_valid_ones():
    with pytest.raises(UnknownNameError, match="linf"):
        reduce(ARRAY, "max")


def test_reduce_bad_arrays():
    with pytest.raises(ValueError, match="empty"):
        reduce(np.array([]), "mean")
    with pytest.raises(ValueError, match="percentile"):
        reduce(ARRAY, "percentile", percentile=120)
