"""The eager convolution kernels: onnxruntime sessions against the numpy offset loop they replace.

The depthwise input cotangent at stride 1 runs as a depthwise convolution whose flipped kernel is baked
into its own session (so that onnxruntime uses its blocked kernels); those sessions are cached by the
kernel's contents, so a weight changed in place must never meet a stale session.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from onnxslice.opsets.geometry import pad_to
from onnxslice.opsets.vjp import conv_kernels, kernels
from onnxslice.opsets.vjp.prims import ConvGeometry


def _geometry(c: int, k: int, stride: int, pad: int, length: int) -> ConvGeometry:
    return ConvGeometry((k, k), (stride, stride), (1, 1), (pad, pad), (pad, pad), (length, length), c)


@pytest.mark.parametrize(("k", "stride", "pad"), [(3, 1, 1), (5, 1, 2), (3, 1, 0), (3, 2, 1)])
def test_depthwise_input_cotangent_matches_the_numpy_loop(k: int, stride: int, pad: int) -> None:
    rng = np.random.default_rng(0)
    n, c, h = 2, 24, 11
    x_shape = (n, c, h, h)
    out = (h + 2 * pad - k) // stride + 1
    g = rng.standard_normal((n, c, out, out)).astype(np.float32)
    w = rng.standard_normal((c, 1, k, k)).astype(np.float32)
    length = max(pad + h, (out - 1) * stride + k)
    geom = _geometry(c, k, stride, pad, length)
    fast = conv_kernels.conv_input_grad(g, w, x_shape, geom)
    loop = conv_kernels._conv_loop(None, w, g, x_shape, False, geom)[0]
    assert loop is not None
    np.testing.assert_allclose(fast, loop, rtol=1e-5, atol=1e-5)


def test_constant_kernel_sessions_follow_the_weight_contents() -> None:
    rng = np.random.default_rng(1)
    g = rng.standard_normal((2, 8, 6, 6)).astype(np.float32)
    w = rng.standard_normal((8, 1, 3, 3)).astype(np.float32)
    geom = _geometry(8, 3, 1, 1, 8)
    before = len(kernels._CONST_SESSIONS)
    a = conv_kernels.conv_input_grad(g, w, (2, 8, 6, 6), geom)
    assert len(kernels._CONST_SESSIONS) == before + 1
    np.testing.assert_allclose(conv_kernels.conv_input_grad(g, w, (2, 8, 6, 6), geom), a)  # the cached session
    assert len(kernels._CONST_SESSIONS) == before + 1
    w *= 2.0  # changed in place: same array, new contents
    b = conv_kernels.conv_input_grad(g, w, (2, 8, 6, 6), geom)
    np.testing.assert_allclose(b, 2.0 * a, rtol=1e-5, atol=1e-6)


def test_constant_kernel_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "CONST_SESSIONS", 3)
    rng = np.random.default_rng(2)
    g = rng.standard_normal((1, 4, 5, 5)).astype(np.float32)
    for _ in range(6):
        w = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
        kernels.run_const_kernel("Conv", g, w, pads=[1, 1, 1, 1], group=4)
    assert len(kernels._CONST_SESSIONS) <= 3
    big = np.zeros(kernels.CONST_MAX + 1, np.float32)
    assert kernels.run_const_kernel("Conv", g, big.reshape(-1, 1, 1, 1)[: kernels.CONST_MAX + 1]) is None


@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_weight_cotangent_split_over_threads_is_the_same(monkeypatch: pytest.MonkeyPatch,
                                                                  stride: int) -> None:
    """In blocks of channels, one thread or three, the depthwise dW equals the whole one-block result bit
    for bit and the plain sum over samples and positions of the padded input."""
    rng = np.random.default_rng(stride)
    x = rng.standard_normal((2, 7, 11, 11)).astype(np.float32)
    begin, length = [1, 0], [12, 13]  # asymmetric pads: one row above, two columns on the right
    ho, wo = (12 - 3) // stride + 1, (13 - 3) // stride + 1
    g = rng.standard_normal((2, 7, ho, wo)).astype(np.float32)
    whole = conv_kernels._dw_depthwise_2d(x, g, [3, 3], [stride, stride], [1, 1], begin, length)
    monkeypatch.setattr(conv_kernels, "DW_BLOCK_BYTES", 1)  # one channel per block
    monkeypatch.setattr(conv_kernels, "DW_SPLIT_ELEMENTS", 0)
    monkeypatch.setenv("ONNXSLICE_THREADS", "1")
    one = conv_kernels._dw_depthwise_2d(x, g, [3, 3], [stride, stride], [1, 1], begin, length)
    monkeypatch.setenv("ONNXSLICE_THREADS", "3")
    split = conv_kernels._dw_depthwise_2d(x, g, [3, 3], [stride, stride], [1, 1], begin, length)
    np.testing.assert_array_equal(one, whole)
    np.testing.assert_array_equal(split, whole)
    xp = pad_to(x, begin, length)
    ref = np.stack([
        np.stack([np.einsum("ncpq,ncpq->c", g, xp[:, :, i : i + (ho - 1) * stride + 1 : stride,
                                                   j : j + (wo - 1) * stride + 1 : stride])
                  for j in range(3)], axis=-1)
        for i in range(3)
    ], axis=-2)
    np.testing.assert_allclose(split, ref, rtol=1e-4, atol=1e-4)


def test_depthwise_weight_cotangent_pads_as_it_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Over random geometries (kernel, stride, dilation, pads of either sign, one or several blocks), the
    depthwise dW that places the input inside its pads while copying it equals a float64 sum over the
    explicitly padded input."""
    rng = np.random.default_rng(0)
    checked = 0
    while checked < 120:
        n, c = int(rng.integers(1, 4)), int(rng.integers(1, 20))
        h, w = (int(v) for v in rng.integers(1, 16, size=2))
        k, s, d = ([int(v) for v in rng.integers(1, hi, size=2)] for hi in (6, 4, 3))
        begin = [int(v) for v in rng.integers(-2, 4, size=2)]
        length = [h + begin[0] + int(rng.integers(-2, 4)), w + begin[1] + int(rng.integers(-2, 4))]
        out = [(length[i] - (k[i] - 1) * d[i] - 1) // s[i] + 1 for i in range(2)]
        if min(out) < 1:
            continue
        x = rng.standard_normal((n, c, h, w)).astype(np.float32)
        g = rng.standard_normal((n, c, *out)).astype(np.float32)
        xp = pad_to(x, begin, length).astype(np.float64)
        ref = np.zeros((c, *k))
        for i, j in itertools.product(range(k[0]), range(k[1])):
            view = xp[:, :, i * d[0] : i * d[0] + (out[0] - 1) * s[0] + 1 : s[0],
                      j * d[1] : j * d[1] + (out[1] - 1) * s[1] + 1 : s[1]]
            ref[:, i, j] = np.einsum("ncpq,ncpq->c", g.astype(np.float64), view)
        monkeypatch.setattr(conv_kernels, "DW_BLOCK_BYTES", int(rng.choice([1, 4096, 1 << 20])))
        got = conv_kernels._dw_depthwise_2d(x, g, k, s, d, begin, length)
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4, err_msg=f"{k} {s} {d} {begin} {length}")
        checked += 1


@pytest.mark.parametrize(("groups", "stride", "keep"), [(1, 1, False), (1, 2, False), (2, 1, False), (1, 1, True)])
def test_convolution_cotangents_split_over_samples_are_the_same(monkeypatch: pytest.MonkeyPatch, groups: int,
                                                                 stride: int, keep: bool) -> None:
    """Split over sample ranges (three threads, each part on single-threaded kernels), a convolution's input
    and weight cotangents equal the one-thread results (the weight's partial sums added in another order)
    and the numpy offset loop; inside a part nothing splits again."""
    rng = np.random.default_rng(stride)
    n, c, o, size = 5, 4, 6, 10
    x = rng.standard_normal((n, c, size, size)).astype(np.float32)
    w = rng.standard_normal((o, c // groups, 3, 3)).astype(np.float32)
    out = (size + 2 - 3) // stride + 1
    g = rng.standard_normal((n, o, out, out)).astype(np.float32)
    geom = ConvGeometry((3, 3), (stride, stride), (1, 1), (1, 1), (1, 1), (size + 2, size + 2), groups)
    monkeypatch.setenv("ONNXSLICE_THREADS", "1")
    dx1 = conv_kernels.conv_input_grad(g, w, x.shape, geom)
    dw1 = conv_kernels.conv_weight_grad(x, g, w.shape, geom, keep)
    monkeypatch.setattr(kernels, "SPLIT_MIN_MACS", 0)
    monkeypatch.setenv("ONNXSLICE_THREADS", "3")
    seen: list[tuple[int, int, int]] = []
    im2col = conv_kernels._dw_im2col

    def spy(x: np.ndarray, *a: object) -> np.ndarray:
        seen.append((len(x), kernels.threads(), len(seen)))
        return im2col(x, *a)  # type: ignore[arg-type]

    monkeypatch.setattr(conv_kernels, "_dw_im2col", spy)
    dx3 = conv_kernels.conv_input_grad(g, w, x.shape, geom)
    dw3 = conv_kernels.conv_weight_grad(x, g, w.shape, geom, keep)
    assert sorted(s[0] for s in seen) == [1, 2, 2] and all(s[1] == 1 for s in seen)
    np.testing.assert_array_equal(dx3, dx1)
    np.testing.assert_allclose(dw3, dw1, rtol=1e-5, atol=1e-5)
    ref_dx = conv_kernels._conv_loop(None, w, g, x.shape, False, geom)[0]
    ref_dw = conv_kernels._conv_loop(x, w, g, x.shape, keep, geom)[1]
    np.testing.assert_allclose(dx3, ref_dx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dw3, ref_dw, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size", [3, 7, 16])  # below and above POINTWISE_BATCH_POSITIONS
@pytest.mark.parametrize("keep", [False, True])
def test_pointwise_weight_cotangent_equals_the_sum_over_samples_and_positions(size: int, keep: bool) -> None:
    """A 1x1 dW (one GEMM over all samples on small maps, one per sample otherwise, per-sample results kept
    apart) equals the float64 sum of ``g[n, o, p] * x[n, c, p]``."""
    rng = np.random.default_rng(size)
    x = rng.standard_normal((3, 5, size, size)).astype(np.float32)
    g = rng.standard_normal((3, 4, size, size)).astype(np.float32)
    geom = ConvGeometry((1, 1), (1, 1), (1, 1), (0, 0), (0, 0), (size, size), 1)
    got = conv_kernels.conv_weight_grad(x, g, (4, 5, 1, 1), geom, keep)
    ref = np.einsum("nopq,ncpq->" + ("noc" if keep else "oc"), g.astype(np.float64), x.astype(np.float64))
    assert (size * size < conv_kernels.POINTWISE_BATCH_POSITIONS) == (size < 16)
    np.testing.assert_allclose(got, ref.reshape(got.shape), rtol=1e-5, atol=1e-5)


def test_strided_depthwise_input_cotangent_by_phases_equals_the_offset_loop() -> None:
    """Over random strided depthwise geometries (kernels up to 7, strides up to 3, pads of 0-3 on each side),
    the input cotangent as one convolution per stride phase equals the numpy offset loop, and
    ``conv_input_grad`` does whichever path it takes; the phase path is taken for wide kernels only."""
    rng = np.random.default_rng(0)
    checked, phased = 0, 0
    while checked < 150:
        n, c = int(rng.integers(1, 3)), int(rng.integers(1, 6))
        h, w = (int(v) for v in rng.integers(3, 16, size=2))
        s, k = ([int(v) for v in rng.integers(1, hi, size=2)] for hi in (4, 8))
        begin = [int(v) for v in rng.integers(0, 4, size=2)]
        length = [h + begin[0] + int(rng.integers(0, 4)), w + begin[1] + int(rng.integers(0, 4))]
        out = [(length[i] - k[i]) // s[i] + 1 for i in range(2)]
        if min(out) < 1:
            continue
        end = [(out[0] - 1) * s[0] + k[0] - begin[0] - h, (out[1] - 1) * s[1] + k[1] - begin[1] - w]
        geom = ConvGeometry(tuple(k), tuple(s), (1, 1), tuple(begin), tuple(end), tuple(length), c)
        g = rng.standard_normal((n, c, *out)).astype(np.float32)
        wt = rng.standard_normal((c, 1, *k)).astype(np.float32)
        ref = conv_kernels._conv_loop(None, wt, g, (n, c, h, w), False, geom)[0]
        by_phase = conv_kernels._dx_depthwise_phases(g, wt, (n, c, h, w), s, begin)
        wide = all(kk >= 2 * ss + 1 for kk, ss in zip(k, s, strict=True)) and max(s) > 1
        assert (by_phase is not None) <= wide
        if by_phase is not None:
            phased += 1
            np.testing.assert_allclose(by_phase, ref, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(conv_kernels.conv_input_grad(g, wt, (n, c, h, w), geom), ref, rtol=1e-4, atol=1e-4)
        checked += 1
    assert phased >= 10


@pytest.mark.parametrize("shape", [(70, 3, 3, 3), (5, 64, 1, 1), (33, 2, 5, 4), (4, 3, 3)])
def test_flip_swap_is_the_transposed_flipped_kernel(shape: tuple[int, ...]) -> None:
    """The blocked copy equals swapping the channel axes and reversing every kernel axis, for 1-D, 2-D, 1x1
    and non-square kernels and output channel counts that do not divide into blocks."""
    w = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    flip = (slice(None), slice(None), *(slice(None, None, -1),) * (len(shape) - 2))
    got = conv_kernels._flip_swap(w)
    assert got.flags.c_contiguous
    np.testing.assert_array_equal(got, np.swapaxes(w, 0, 1)[flip])
