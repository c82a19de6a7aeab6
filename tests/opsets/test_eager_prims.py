"""The eager primitives' fast paths give numpy's reference results (gates by a bitwise mask, row dots by BLAS)."""

from __future__ import annotations

import numpy as np
import pytest
from onnxslice.opsets.vjp.eager import EAGER


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("shape", [(8, 16, 32, 32), (3, 5)])  # above and below the fast path's size
def test_gate_where_equals_numpy_where_bit_for_bit(shape: tuple[int, ...], dtype: type) -> None:
    rng = np.random.default_rng(0)
    g = rng.standard_normal(shape).astype(dtype)
    g.flat[::7] = -0.0  # a negative zero passes a gate as it is
    cond = rng.random(shape) < 0.5
    ints = np.dtype(f"i{np.dtype(dtype).itemsize}")
    for got, ref in ((EAGER.where(cond, g, 0.0), np.where(cond, g, dtype(0))),
                     (EAGER.where(cond, 0.0, g), np.where(cond, dtype(0), g))):
        assert got.dtype == dtype and got.shape == shape
        np.testing.assert_array_equal(got.view(ints), ref.view(ints))


def test_gate_where_keeps_where_semantics_for_non_finite_values() -> None:
    rng = np.random.default_rng(1)
    g = rng.standard_normal((8, 16, 32, 32)).astype(np.float32)
    g.flat[[3, 77, 1000, 1001, 1002]] = [np.inf, -np.inf, np.nan, np.inf, np.nan]
    cond = np.ones(g.shape, dtype=bool)
    cond.flat[[3, 77, 1000]] = False  # the closed gate must give 0, not inf * 0 = NaN; the open one passes inf
    got = EAGER.where(cond, g, 0.0)
    assert np.isfinite(got.flat[:1001]).all() and np.isinf(got.flat[1001]) and np.isnan(got.flat[1002])
    np.testing.assert_array_equal(got, np.where(cond, g, np.float32(0)))
    strided = g[:, ::2]  # a strided cotangent: the mask follows its layout
    np.testing.assert_array_equal(EAGER.where(cond[:, ::2], strided, 0.0), np.where(cond[:, ::2], strided, 0))


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
