"""The one unbroadcast every capability uses, against torch's ``sum_to_size``."""

from __future__ import annotations

import numpy as np
import pytest
from onnxslice.opsets.broadcast import unbroadcast

torch = pytest.importorskip("torch")

CASES = [((2, 3, 4), (3, 4)), ((2, 3, 4), (1, 4)), ((2, 3, 4), (2, 1, 1)), ((5,), (1,)), ((2, 3), ()),
         ((4, 1, 3), (4, 1, 3))]


@pytest.mark.parametrize(("big", "small"), CASES)
def test_unbroadcast_matches_torch_sum_to_size(big: tuple[int, ...], small: tuple[int, ...]) -> None:
    arr = np.random.default_rng(0).normal(size=big)
    got = unbroadcast(arr, small)
    ref = torch.from_numpy(arr).sum_to_size(small).numpy() if small else np.asarray(arr.sum())
    assert got.shape == small
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)


def test_unbroadcast_is_shared_by_the_capabilities() -> None:
    from onnxslice.opsets.contrib import base as contrib_base
    from onnxslice.opsets.vjp import base as vjp_base

    assert contrib_base.unbroadcast is unbroadcast and vjp_base.sum_broadcast is unbroadcast
