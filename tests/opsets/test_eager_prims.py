"""The eager primitives' fast paths give numpy's reference results (gates by multiplication, row dots by BLAS)."""

from __future__ import annotations

import numpy as np
import pytest
from onnxslice.opsets.vjp.eager import EAGER


@pytest.mark.parametrize("shape", [(8, 16, 32, 32), (3, 5)])  # above and below the fast path's size
def test_gate_where_equals_numpy_where(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    g = rng.standard_normal(shape).astype(np.float32)
    cond = rng.random(shape) < 0.5
    for got, ref in ((EAGER.where(cond, g, 0.0), np.where(cond, g, np.float32(0))),
                     (EAGER.where(cond, 0.0, g), np.where(cond, np.float32(0), g))):
        assert got.dtype == np.float32 and got.shape == shape
        np.testing.assert_array_equal(got, ref)  # -0.0 == 0.0: the only difference the product makes


def test_gate_where_keeps_where_semantics_for_non_finite_values() -> None:
    rng = np.random.default_rng(1)
    g = rng.standard_normal((8, 16, 32, 32)).astype(np.float32)
    g.flat[[3, 77, 1000]] = [np.inf, -np.inf, np.nan]
    cond = np.ones(g.shape, dtype=bool)
    cond.flat[[3, 77, 1000]] = False  # the closed gate must give 0, not inf * 0 = NaN
    got = EAGER.where(cond, g, 0.0)
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(got, np.where(cond, g, np.float32(0)))


def test_row_dot_sum_equals_einsum() -> None:
    rng = np.random.default_rng(2)
    a = rng.standard_normal((4, 6, 500)).astype(np.float32)
    b = rng.standard_normal((4, 6, 500)).astype(np.float32)
    got = EAGER.dot_sum(a, b, (2,), np.float32)
    ref = np.einsum("ncp,ncp->nc", a.astype(np.float64), b.astype(np.float64))
    assert got.shape == (4, 6) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    wide = EAGER.dot_sum(a, b, (2,), np.float64)  # float64 accumulation: the einsum path
    np.testing.assert_allclose(wide, ref, rtol=1e-12)
