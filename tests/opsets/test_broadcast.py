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
    from onnxslice.opsets.capabilities import vjp
    from onnxslice.opsets.ops import binary
    from onnxslice.opsets.templates import binary as binary_templates

    assert vjp.unbroadcast is unbroadcast
    assert binary.unbroadcast is unbroadcast and binary_templates.unbroadcast is unbroadcast


@pytest.mark.parametrize(("big", "small"), [((2, 3, 4), (3, 4)), ((2, 3, 4), (1, 4)), ((2, 1, 4), (1, 1, 4))])
@pytest.mark.parametrize("keep", [False, True])
def test_primitive_unbroadcast_takes_the_same_axes(big: tuple[int, ...], small: tuple[int, ...], keep: bool) -> None:
    from onnxslice.opsets.vjp.eager import EAGER

    arr = np.random.default_rng(1).normal(size=big)
    got = EAGER.unbroadcast(arr, small, keep)
    ref = unbroadcast(arr, small, keep)
    np.testing.assert_array_equal(got, ref)
    if keep:  # the per-sample form keeps axis 0: each sample's own sum
        np.testing.assert_allclose(ref[1], unbroadcast(arr[1:2], small), rtol=1e-12)


def test_per_sample_unbroadcast_refuses_an_operand_that_spans_the_samples() -> None:
    from onnxslice.opsets.broadcast import PerSampleUnsupported

    with pytest.raises(PerSampleUnsupported):
        unbroadcast(np.ones((2, 3)), (2, 3), keep_batch=True)
