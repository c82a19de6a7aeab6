"""The eager kernels of the window primitives: convolution input and weight gradients, window sums, and
max-pool routing.

Both convolution directions pair an element ``p`` of the *small* side with ``p * stride + k * dilation`` of
the padded *large* side through the kernel offset ``k``. The kernels loop over kernel offsets only (9 for a
3x3 kernel) and do one batched matmul per offset over the groups, so no im2col matrix is ever built (large
products go to onnxruntime's kernels, :mod:`.kernels`); a depthwise convolution becomes elementwise
products and a pointwise one a matmul. Pooling windows are walked offset by offset over a padded copy;
MaxPool's cotangent goes to each window's first maximum (:func:`onnxslice.opsets.geometry.first_max_steps`).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from types import EllipsisType

import numpy as np

from ..geometry import crop, first_max_steps, pad_to, window
from ..vjp.kernels import enabled, matmul, pool, run_const_kernel, run_kernel, split_samples, threads
from ..vjp.prims import ConvGeometry

# -- convolutions -------------------------------------------------------------------------------------


def _chan_first(x: np.ndarray, groups: int) -> np.ndarray:
    """[N, C, *sp] -> [G, C/G, N * prod(sp)] (a copy)."""
    _n, c = x.shape[:2]
    return np.ascontiguousarray(np.moveaxis(x, 1, 0)).reshape(groups, c // groups, -1)


def _per_sample(x: np.ndarray, groups: int) -> np.ndarray:
    """[N, C, *sp] -> [N, G, C/G, prod(sp)]."""
    n, c = x.shape[:2]
    return x.reshape(n, groups, c // groups, -1)


def _w_offset(w: np.ndarray, groups: int, k: tuple[int, ...]) -> np.ndarray:
    """Kernel offset ``k`` of weight [A, B, *K] as [G, A/G, B]."""
    index: tuple[slice | int, ...] = (slice(None), slice(None), *k)
    wk = w[index]
    return wk.reshape(groups, wk.shape[0] // groups, wk.shape[1])


def _pair_grad(a: np.ndarray, b: np.ndarray, per_sample: bool) -> np.ndarray:
    """sum over samples/positions of a[.., i, p] * b[.., j, p] -> [G, I, J] (or [N, G, I, J])."""
    if a.shape[-2] == 1 and b.shape[-2] == 1:  # depthwise: elementwise products
        return np.einsum("...ip,...jp->...ij", a, b)
    return a @ np.swapaxes(b, -1, -2)


def _split_dx(
    g: np.ndarray, w: np.ndarray, x_shape: Sequence[int], groups: int, strides: list[int], dil: list[int],
    begin: list[int], end: list[int],
) -> np.ndarray | None:
    """:func:`_dx_by_kernel`, over sample ranges on one thread each (:func:`.kernels.split_samples`) when
    there are several threads and enough work; each range writes its rows of the result.

    Dense convolutions with a kernel larger than 1x1 only: onnxruntime's threads already serve pointwise and
    depthwise ones well (EfficientNet-Lite0 b8, two threads: split, its 1x1 and depthwise input cotangents
    took 0.5-2.4 ms more each), while the CIFAR ResNet-18's 3x3 ones gain up to 5 ms each at batch 32.
    """
    n = g.shape[0]
    if groups != 1 or all(k == 1 for k in w.shape[2:]):
        return _dx_by_kernel(g, w, x_shape, groups, strides, dil, begin, end)
    out = np.empty(tuple(x_shape), dtype=g.dtype)

    def part(lo: int, hi: int) -> bool:
        dx = _dx_by_kernel(g[lo:hi], w, (hi - lo, *x_shape[1:]), groups, strides, dil, begin, end)
        if dx is None:
            return False
        out[lo:hi] = dx
        return True

    done = split_samples(n, part, g.size * int(np.prod(w.shape[1:])))
    if done is None:
        return _dx_by_kernel(g, w, x_shape, groups, strides, dil, begin, end)
    return out if all(done) else None


def _dx_by_kernel(
    g: np.ndarray,
    w: np.ndarray,
    x_shape: Sequence[int],
    groups: int,
    strides: list[int],
    dil: list[int],
    begin: list[int],
    end: list[int],
) -> np.ndarray | None:
    """dX = ConvTranspose(dY, W) through onnxruntime, sized back to the input (None: not possible)."""
    kernel, in_sp, out_sp = w.shape[2:], x_shape[2:], g.shape[2:]
    extra = [
        i + b + e - ((k - 1) * d + 1) - s * (o - 1)
        for i, b, e, k, d, s, o in zip(in_sp, begin, end, kernel, dil, strides, out_sp, strict=True)
    ]
    if any(v < 0 or v >= max(s, d) for v, s, d in zip(extra, strides, dil, strict=True)) or min(end) < 0:
        return None
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dil, strict=True)]
    # stride 1 (and pads inside the kernel's span): the transposed convolution is a plain convolution of
    # dY with the flipped kernel, padded by what the forward's pads leave of the span
    plain = all(s == 1 for s in strides) and all(
        b < sp and e < sp for b, e, sp in zip(begin, end, span, strict=True)
    )
    flip = (slice(None), slice(None), *(slice(None, None, -1),) * len(kernel))
    pads = [sp - 1 - b for b, sp in zip(begin, span, strict=True)] + [
        sp - 1 - e for e, sp in zip(end, span, strict=True)
    ]
    depthwise = groups > 1 and groups == w.shape[0] and w.shape[1] == 1
    if plain and depthwise:
        # depthwise: the flipped kernel baked into its session so that onnxruntime runs its blocked
        # kernels (5x5 on 28x28 maps: 1.9 ms instead of 8.3)
        dx = run_const_kernel("Conv", g, w[flip], pads=pads, dilations=dil, group=groups)
        if dx is not None and dx.shape == tuple(x_shape):
            return dx
    if plain and groups == 1:
        # the flipped kernel transposed; onnxruntime's Conv runs it up to 2x faster than its ConvTranspose
        # on small maps
        dx = run_kernel("Conv", g, _flip_swap(w), pads=pads, dilations=dil)
        if dx is not None and dx.shape == tuple(x_shape):
            return dx
    if depthwise and len(kernel) == 2 and all(v == 1 for v in dil):
        dx = _dx_depthwise_phases(g, w, x_shape, strides, begin)
        if dx is not None:
            return dx
    dx = run_kernel(
        "ConvTranspose", g, w, strides=strides, dilations=dil, pads=begin + end, group=groups, output_padding=extra
    )
    return dx if dx is not None and dx.shape == tuple(x_shape) else None


#: Output channels per block of :func:`_flip_swap`'s copy.
FLIP_BLOCK = 32


def _flip_swap(w: np.ndarray) -> np.ndarray:
    """``[O, C, *k] -> [C, O, *k]`` with every kernel axis reversed (a transposed convolution's kernel), a new
    contiguous array copied in blocks of :data:`FLIP_BLOCK` output channels.

    Reversing the flattened kernel reverses every kernel axis. One strided copy of a 512x512x3x3 kernel
    walks the source 18 KiB apart per element group and took 7-9 ms; in blocks 3-4 ms (ResNet-18 b8's
    4x4 layers' input cotangents 13.4 -> 10.9 ms each, paired; docs/gradients.md, "Session 11").
    """
    o, c = w.shape[:2]
    flat = w.reshape(o, c, -1)
    out = np.empty((c, o, flat.shape[2]), dtype=w.dtype)
    for lo in range(0, o, FLIP_BLOCK):
        out[:, lo : lo + FLIP_BLOCK] = flat[lo : lo + FLIP_BLOCK, :, ::-1].transpose(1, 0, 2)
    return out.reshape(c, o, *w.shape[2:])


def _dx_depthwise_phases(
    g: np.ndarray, w: np.ndarray, x_shape: Sequence[int], strides: list[int], begin: list[int]
) -> np.ndarray | None:
    """A strided depthwise 2-D input cotangent as one stride-1 depthwise convolution per stride phase.

    The input positions ``i`` with ``(i + begin) % s == r`` receive ``sum_t g[q - t] * w[r + s t]``: a
    full convolution of the cotangent by the sub-kernel ``w[r::s]``, which runs on onnxruntime's blocked
    depthwise kernels with the flipped sub-kernel baked in (:func:`.kernels.run_const_kernel`); each
    phase's result is written to its strided rows and columns. Only where the kernel is at least
    ``2 s + 1`` wide, so that every sub-kernel has two taps or more per axis: 5x5 at stride 2 ran 1.4-1.7x
    faster than onnxruntime's ConvTranspose on EfficientNet-Lite0 b8's two such layers, 3x3 at stride 2
    1.7x slower (four tiny convolutions and strided writes over the widest maps; docs/gradients.md,
    "Session 11"). Weights that change every call (fine-tuning) rebuild the four sessions each time,
    which costs 2-3 ms more than it saves per layer. None: not that case, or a phase needs a negative
    pad (the caller uses ConvTranspose).
    """
    kernel, n_in, n_out = w.shape[2:], x_shape[2:], g.shape[2:]
    if all(s == 1 for s in strides) or any(k < 2 * s + 1 for k, s in zip(kernel, strides, strict=True)):
        return None
    dx = np.empty(tuple(x_shape), dtype=g.dtype)
    for r in itertools.product(*(range(s) for s in strides)):
        sub = w[:, :, r[0] :: strides[0], r[1] :: strides[1]]
        pads: list[list[int]] = [[], []]
        rows = []
        for a in range(2):
            kr, s, b = sub.shape[2 + a], strides[a], begin[a]
            qlo = -(-(b - r[a]) // s)  # the first cotangent row whose phase position lies in the input
            qhi = (b + n_in[a] - 1 - r[a]) // s
            if qhi < qlo:
                return None
            front = kr - 1 - qlo
            pads[0].append(front)
            pads[1].append(qhi - qlo + kr - n_out[a] - front)
            rows.append(slice(qlo * s + r[a] - b, None, s))
        if min(pads[0] + pads[1]) < 0:
            return None
        part = run_const_kernel("Conv", g, sub[:, :, ::-1, ::-1], pads=pads[0] + pads[1], group=w.shape[0])
        if part is None or part.shape != dx[(slice(None), slice(None), *rows)].shape:
            return None
        dx[(slice(None), slice(None), *rows)] = part
    return dx


#: Bound on the im2col buffer of one chunk of samples (bytes); larger batches are chunked. 4 MiB beat 16
#: on the CIFAR ResNet-18 (batch 8: 335 against 350 ms per call and 120 against 136 MiB of peak memory;
#: batch 32: 1276 against 1367 ms): the buffer and its GEMM stay in cache; 1-2 MiB were no faster.
IM2COL_BYTES = 4 * 2**20


def _dw_im2col(
    x: np.ndarray,
    g: np.ndarray,
    w_shape: Sequence[int],
    groups: int,
    strides: list[int],
    dil: list[int],
    begin: list[int],
    length: list[int],
    keep: bool,
) -> np.ndarray:
    """dW as one GEMM per chunk of samples over an im2col buffer (bounded by :data:`IM2COL_BYTES`).

    A single large product per chunk runs 2-5x faster than one product per kernel offset.
    """
    n, c = x.shape[:2]
    o, kernel, out_sp = g.shape[1], list(w_shape[2:]), list(g.shape[2:])
    cg, og, r = c // groups, o // groups, len(kernel)
    p, kk = int(np.prod(out_sp)), int(np.prod(kernel))
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dil, strict=True)]
    chunk = max(1, IM2COL_BYTES // max(1, c * kk * p * x.itemsize))
    dw = np.zeros(((n,) if keep else ()) + (groups, og, cg * kk), dtype=x.dtype)
    for s0 in range(0, n, chunk):
        xs = x[s0 : s0 + chunk]
        m = len(xs)
        xp = pad_to(xs, begin, length)
        v = np.lib.stride_tricks.sliding_window_view(xp, span, axis=tuple(range(2, 2 + r)))
        pick = tuple(slice(0, (q - 1) * st + 1, st) for q, st in zip(out_sp, strides, strict=True))
        v = v[(slice(None), slice(None), *pick, *(slice(None, None, d) for d in dil))]  # [m, C, *out, *K]
        gs = g[s0 : s0 + chunk]
        if keep:  # [m, G, P, Cg*K] and [m, G, Og, P]
            v = v.reshape(m, groups, cg, *v.shape[2:])
            axes = (0, 1, *range(3, 3 + r), 2, *range(3 + r, 3 + 2 * r))
            cols_n = np.ascontiguousarray(v.transpose(axes)).reshape(m, groups, p, cg * kk)
            dw[s0 : s0 + m] += matmul(np.ascontiguousarray(gs).reshape(m, groups, og, p), cols_n)
        else:  # [G, Cg*K, m*P] and [G, Og, m*P]
            axes = (1, *range(2 + r, 2 + 2 * r), 0, *range(2, 2 + r))
            cols = np.ascontiguousarray(v.transpose(axes)).reshape(groups, cg * kk, m * p)
            gt = np.ascontiguousarray(np.moveaxis(gs, 1, 0)).reshape(groups, og, m * p)
            for j in range(groups):
                dw[j] += matmul(gt[j], cols[j], trans_b=True)
    return dw.reshape(((n,) if keep else ()) + tuple(w_shape))


#: A depthwise weight cotangent of at least this many input elements is split over the threads
#: (:func:`.kernels.threads`) by channel: numpy runs each part on one core.
DW_SPLIT_ELEMENTS = 2**20

#: Bytes of padded cotangent and input phases one block of channels of the depthwise weight cotangent
#: works on (:func:`_dw_depthwise_2d`): a block stays in the CPU's cache across its kernel offsets, where
#: a whole layer is re-read from memory once per offset. EfficientNet-Lite0's 16 depthwise layers at
#: batch 8, one thread: 235 ms whole, 125-147 ms in blocks of 1 MiB (256 KiB: 220, 512 KiB: 170,
#: 2 MiB: 173; docs/gradients.md, "Session 11").
DW_BLOCK_BYTES = 1 << 20


def _dw_offsets(kernel: list[int], s: list[int], d: list[int]) -> dict[tuple[int, int], tuple[int, int, int, int]]:
    """Per kernel offset ``(kh, kw)``: its stride phase ``(ph, pw)`` and its shift ``(sh, sw)`` on the phase grid."""
    return {
        (kh, kw): ((kh * d[0]) % s[0], (kw * d[1]) % s[1], (kh * d[0]) // s[0], (kw * d[1]) // s[1])
        for kh, kw in itertools.product(range(kernel[0]), range(kernel[1]))
    }


def _dw_depthwise_2d(
    x: np.ndarray, g: np.ndarray, kernel: list[int], s: list[int], d: list[int], begin: list[int], length: list[int]
) -> np.ndarray:
    """Depthwise 2-D dW as one BLAS dot product per channel and kernel offset (1.5-3x the einsum).

    The input, padded as it is copied (``x`` placed at ``begin`` in zeros of spatial size ``length``),
    is split into its ``s_h * s_w`` stride phases, laid out channel first on a grid of the cotangent's
    rows, so that each kernel offset is a constant shift of one flat array per channel; the cotangent
    sits zero-padded on the same grid, which keeps every shifted product inside its own sample.
    Channels are independent and go in blocks of about :data:`DW_BLOCK_BYTES` (each block's copies stay
    in cache for all its offsets); a large layer's blocks are shared among the threads (numpy's copies
    and products let go of the GIL; EfficientNet-Lite0 b8 at two threads: see docs/gradients.md,
    "Session 9").
    """
    n, c = x.shape[:2]
    offs = _dw_offsets(kernel, s, d)
    mh, mw = max(o[2] for o in offs.values()), max(o[3] for o in offs.values())
    grid = n * (g.shape[2] + mh + 1) * (g.shape[3] + mw)  # one channel's grid (_dw_depthwise_2d_part)
    phases = len({o[:2] for o in offs.values()})
    block = max(1, DW_BLOCK_BYTES // ((1 + phases) * grid * x.itemsize))
    parts = min(threads(), c) if x.size >= DW_SPLIT_ELEMENTS else 1
    block = min(block, -(-c // parts))  # every thread gets at least one block
    bounds = list(itertools.pairwise([*range(0, c, block), c]))
    if len(bounds) == 1:
        return _dw_depthwise_2d_part(x, g, kernel, s, begin, length, offs)
    dw = np.empty((c, *kernel), dtype=x.dtype)

    def run(r: tuple[int, int]) -> None:
        dw[r[0] : r[1]] = _dw_depthwise_2d_part(x[:, r[0] : r[1]], g[:, r[0] : r[1]], kernel, s, begin, length, offs)

    if parts < 2:
        for r in bounds:
            run(r)
    else:
        list(pool().map(run, bounds))
    return dw


def _phase_slices(
    p: int, st: int, b: int, size_in: int, length: int, size_grid: int
) -> tuple[slice, slice] | None:
    """Along one axis, the grid positions ``a`` of stride phase ``p`` that read the input (the padded
    position ``p + a * st`` is inside ``x``, placed at ``b`` in a padded extent of ``length``) and the
    input positions they read; None: none do."""
    lo = max(0, -(-(b - p) // st))  # the first grid position at or past the input's start
    r0 = p + lo * st - b
    count = min(size_grid - lo, -(-(min(size_in, length - b) - r0) // st))
    if count <= 0:
        return None
    return slice(lo, lo + count), slice(r0, r0 + (count - 1) * st + 1, st)


def _dw_depthwise_2d_part(
    x: np.ndarray,
    g: np.ndarray,
    kernel: list[int],
    s: list[int],
    begin: list[int],
    length: list[int],
    offs: dict[tuple[int, int], tuple[int, int, int, int]],
) -> np.ndarray:
    """:func:`_dw_depthwise_2d` on one block of channels (``[C', *kernel]``); ``offs``: :func:`_dw_offsets`,
    computed once for all blocks."""
    n, c = x.shape[:2]
    ho, wo = g.shape[2:]
    mh, mw = max(o[2] for o in offs.values()), max(o[3] for o in offs.values())
    hg, wg = ho + mh + 1, wo + mw
    total = n * hg * wg
    gp = np.zeros((c, n, hg, wg), dtype=g.dtype)
    gp[:, :, :ho, :wo] = np.moveaxis(g, 1, 0)
    gf = gp.reshape(c, 1, total)
    phases: dict[tuple[int, int], np.ndarray] = {}
    dw = np.empty((c, *kernel), dtype=x.dtype)
    for (kh, kw), (ph, pw, sh, sw) in offs.items():
        if (ph, pw) not in phases:
            flat = np.zeros((c, total + (mh + 1) * wg), dtype=x.dtype)
            rows = _phase_slices(ph, s[0], begin[0], x.shape[2], length[0], hg)
            cols = _phase_slices(pw, s[1], begin[1], x.shape[3], length[1], wg)
            if rows is not None and cols is not None:
                src = x[:, :, rows[1], cols[1]]
                flat[:, :total].reshape(c, n, hg, wg)[:, :, rows[0], cols[0]] = np.moveaxis(src, 1, 0)
            phases[(ph, pw)] = flat
        off = sh * wg + sw
        dw[:, kh, kw] = np.matmul(gf, phases[(ph, pw)][:, off : off + total, None])[:, 0, 0]
    return dw


def _dw_depthwise(
    x: np.ndarray,
    g: np.ndarray,
    w_shape: Sequence[int],
    strides: list[int],
    dil: list[int],
    begin: list[int],
    length: list[int],
    keep: bool,
) -> np.ndarray:
    """Depthwise dW[c, 0, k] = sum over samples and positions of g[n, c, p] * Xpad[n, c, p*s + k*d].

    2-D and summed over samples: :func:`_dw_depthwise_2d`. Otherwise one multiply-reduce (einsum)
    per kernel offset over a strided view of the padded input: no im2col buffer, no copies.
    """
    kernel, out_sp = list(w_shape[2:]), list(g.shape[2:])
    if len(kernel) == 2 and not keep:
        return _dw_depthwise_2d(x, g, kernel, strides, dil, begin, length).reshape(tuple(w_shape))
    xp = pad_to(x, begin, length)
    sp = "pqrstuvw"[: len(kernel)]
    spec = f"nc{sp},nc{sp}->{'nc' if keep else 'c'}"
    dw = np.empty(((x.shape[0],) if keep else ()) + (x.shape[1], *kernel), dtype=x.dtype)
    for k in itertools.product(*(range(kk) for kk in kernel)):
        view = xp[(slice(None), slice(None), *window(k, dil, strides, out_sp))]
        index: tuple[EllipsisType | int, ...] = (Ellipsis, *k)
        dw[index] = np.einsum(spec, g, view)
    return dw.reshape(((x.shape[0],) if keep else ()) + tuple(w_shape))


#: A 1x1 weight cotangent over maps of fewer positions than this is one GEMM over all samples (channels
#: first) instead of one per sample: EfficientNet-Lite0 b8's 7x7 layers (49 positions, 8 products of
#: inner size 49 and 7 sums of [O, C]) 1.5-1.7x faster; on 14x14 maps the two are level, on larger ones
#: the transposing copies cost more than the products save (docs/gradients.md, "Session 11").
POINTWISE_BATCH_POSITIONS = 128


def _dw_pointwise(x: np.ndarray, g: np.ndarray, w_shape: Sequence[int], keep: bool) -> np.ndarray:
    """dW of a 1x1, stride-1, unpadded, ungrouped convolution: ``sum_n G[n] @ X[n]^T``, no im2col, no pads.

    One GEMM per sample on onnxruntime's MLAS (:func:`.kernels.matmul`; numpy's BLAS threads
    oversubscribe a loaded machine), or one over all samples on small maps
    (:data:`POINTWISE_BATCH_POSITIONS`).
    """
    n, c = x.shape[:2]
    o = g.shape[1]
    x3, g3 = x.reshape(n, c, -1), g.reshape(n, o, -1)
    if not keep and x3.shape[2] < POINTWISE_BATCH_POSITIONS:
        xt = np.ascontiguousarray(np.moveaxis(x3, 1, 0)).reshape(c, -1)  # [C, N*P]
        gt = np.ascontiguousarray(np.moveaxis(g3, 1, 0)).reshape(o, -1)  # [O, N*P]
        return matmul(gt, xt, trans_b=True).reshape(tuple(w_shape))
    parts = [matmul(g3[i], x3[i], trans_b=True) for i in range(n)]
    dw = np.stack(parts) if keep else functools.reduce(np.add, parts)
    return dw.reshape(((n,) if keep else ()) + tuple(w_shape))


def conv_input_grad(g: np.ndarray, w: np.ndarray, x_shape: Sequence[int], geom: ConvGeometry) -> np.ndarray:
    """Eager kernel of the ``conv_input_grad`` primitive.

    onnxruntime's ConvTranspose kernel (:mod:`.kernels`; grouped and depthwise ones included, 3-5x
    faster than the numpy offset loop); whatever the kernels refuse uses the numpy offset loop.
    """
    strides, dil = list(geom.strides), list(geom.dilations)
    begin, end = list(geom.begin), list(geom.end)
    if enabled():
        dx = _split_dx(g, w, x_shape, geom.groups, strides, dil, begin, end)
        if dx is not None:
            return dx
    return _conv_loop(None, w, g, x_shape, False, geom)[0]  # type: ignore[return-value]


def conv_weight_grad(
    x: np.ndarray, g: np.ndarray, w_shape: Sequence[int], geom: ConvGeometry, keep: bool = False
) -> np.ndarray:
    """Eager kernel of the ``conv_weight_grad`` primitive.

    One GEMM per chunk of samples over a bounded im2col buffer (as a convolution whose kernel is the
    whole output map, onnxruntime runs it as many skinny products, measured 2-3x slower); a 1x1 one is
    one GEMM per sample (:func:`_dw_pointwise`), a depthwise one is one einsum per kernel offset over a
    strided view (:func:`_dw_depthwise`).
    """
    groups = geom.groups
    strides, dil = list(geom.strides), list(geom.dilations)
    begin, length = list(geom.begin), list(geom.length)
    kernel = list(w_shape[2:])
    in_sp, out_sp = list(x.shape[2:]), list(g.shape[2:])
    depthwise = w_shape[1] == 1 and w_shape[0] == groups and groups > 1
    pointwise = groups == 1 and all(k == 1 for k in kernel) and all(v == 1 for v in strides) and in_sp == out_sp
    if pointwise and not any(begin):
        return _dw_pointwise(x, g, w_shape, keep)
    if depthwise:
        return _dw_depthwise(x, g, w_shape, strides, dil, begin, length, keep)
    return _split_dw_im2col(x, g, w_shape, groups, strides, dil, begin, length, keep)


def _split_dw_im2col(
    x: np.ndarray, g: np.ndarray, w_shape: Sequence[int], groups: int, strides: list[int], dil: list[int],
    begin: list[int], length: list[int], keep: bool,
) -> np.ndarray:
    """:func:`_dw_im2col` over sample ranges on one thread each (:func:`.kernels.split_samples`) when there
    are several threads and enough work: each range's im2col copies and products run on their own core
    and the partial sums are added (per-sample results written in place)."""
    n = x.shape[0]
    out = np.empty((n, *w_shape), dtype=x.dtype) if keep else None

    def part(lo: int, hi: int) -> np.ndarray | None:
        dw = _dw_im2col(x[lo:hi], g[lo:hi], w_shape, groups, strides, dil, begin, length, keep)
        if out is None:
            return dw
        out[lo:hi] = dw
        return None

    done = split_samples(n, part, g.size * int(np.prod(w_shape[1:])))
    if done is None:
        return _dw_im2col(x, g, w_shape, groups, strides, dil, begin, length, keep)
    if out is not None:
        return out
    total = done[0]
    assert total is not None
    for d in done[1:]:
        total += d
    return total


def _conv_loop(
    x: np.ndarray | None, w: np.ndarray, g: np.ndarray, x_shape: Sequence[int], keep_w: bool, geom: ConvGeometry
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The numpy path: one batched matmul per kernel offset (elementwise products when depthwise).

    Returns ``(dx, dw)``: ``dw`` when ``x`` is given, ``dx`` otherwise.
    """
    need_w, need_x = x is not None, x is None
    groups, strides, dil = geom.groups, list(geom.strides), list(geom.dilations)
    begin, length = list(geom.begin), list(geom.length)
    kernel, in_sp, out_sp = list(w.shape[2:]), list(x_shape[2:]), list(g.shape[2:])
    n, c = x_shape[0], x_shape[1]
    xp = pad_to(x, begin, length) if x is not None else None
    dxp = np.zeros((c, n, *length), dtype=g.dtype) if need_x else None
    dw = np.zeros(((n,) if keep_w else ()) + w.shape, dtype=w.dtype) if need_w else None
    gt = _chan_first(g, groups)
    gs = _per_sample(g, groups) if keep_w else None
    xt = np.moveaxis(xp, 1, 0) if xp is not None and not keep_w else None
    for k in itertools.product(*(range(kk) for kk in kernel)):
        win = window(k, dil, strides, out_sp)
        if need_w:
            if keep_w:
                assert xp is not None and gs is not None
                xs = _per_sample(np.ascontiguousarray(xp[(slice(None), slice(None), *win)]), groups)
                dwk = _pair_grad(gs, xs, True)  # [N, G, Og, Cg]
                dw[(slice(None), slice(None), slice(None), *k)] = dwk.reshape(n, w.shape[0], w.shape[1])  # type: ignore[index]
            else:
                assert xt is not None
                xs = np.ascontiguousarray(xt[(slice(None), slice(None), *win)]).reshape(groups, c // groups, -1)
                dw[(slice(None), slice(None), *k)] = _pair_grad(gt, xs, False).reshape(w.shape[:2])  # type: ignore[index]
        if need_x:
            wk = _w_offset(w, groups, k)  # [G, Og, Cg]
            depthwise = wk.shape[1] == 1 and wk.shape[2] == 1
            contrib = wk * gt if depthwise else np.swapaxes(wk, -1, -2) @ gt  # [G, Cg, N*P]
            dxp[(slice(None), slice(None), *win)] += contrib.reshape(c, n, *out_sp)  # type: ignore[index]
    if need_x:
        assert dxp is not None
        return crop(np.moveaxis(dxp, 0, 1), begin, in_sp), None
    return None, dw


def conv_forward(x: np.ndarray, w: np.ndarray, out_shape: Sequence[int], geom: ConvGeometry) -> np.ndarray:
    """Eager kernel of the ``conv`` primitive: onnxruntime's Conv, else one matmul per kernel offset."""
    r = len(geom.kernel)
    strides, dil = list(geom.strides), list(geom.dilations)
    y = (
        run_kernel("Conv", x, w, strides=strides, dilations=dil, group=geom.groups, pads=[0] * (2 * r))
        if enabled()
        else None
    )
    if y is None:
        n, groups = x.shape[0], geom.groups
        sizes = zip(x.shape[2:], geom.kernel, dil, strides, strict=True)
        sp = [(L - ((k - 1) * d + 1)) // s + 1 for L, k, d, s in sizes]
        xt = np.moveaxis(x, 1, 0)  # [C_in, N, *sp]
        acc = np.zeros((groups, w.shape[0] // groups, n * int(np.prod(sp))), dtype=x.dtype)
        for k in itertools.product(*(range(kk) for kk in geom.kernel)):
            win = window(k, dil, strides, sp)
            xk = np.ascontiguousarray(xt[(slice(None), slice(None), *win)]).reshape(groups, x.shape[1] // groups, -1)
            acc += _w_offset(w, groups, k) @ xk
        y = np.moveaxis(acc.reshape(w.shape[0], n, *sp), 0, 1)
    return crop(y, [0] * r, list(out_shape[2:]))


# -- pooling windows -----------------------------------------------------------------------------------


def max_pool_grad(x: np.ndarray, y: np.ndarray, g: np.ndarray, geom: ConvGeometry) -> np.ndarray:
    """Eager kernel of the ``max_pool_grad`` primitive: each window's cotangent to its first arg-max.

    The arg-max is :func:`onnxslice.opsets.geometry.first_max_steps`, the tie rule MaxPool's contributions use too.
    """
    kernel, strides, dil = geom.kernel, list(geom.strides), list(geom.dilations)
    begin, length = list(geom.begin), list(geom.length)
    out_sp = list(y.shape[2:])
    xp = pad_to(x, begin, length, fill=-np.inf)
    dxp = np.zeros_like(xp)
    offsets = itertools.product(*map(range, kernel))
    wins = [(slice(None), slice(None), *window(k, dil, strides, out_sp)) for k in offsets]
    for win, first in zip(wins, first_max_steps((xp[w] for w in wins), y), strict=True):  # the shared tie rule
        dxp[win] += np.where(first, g, 0)
    return crop(dxp, begin, list(x.shape[2:]))


def window_sum_grad(g: np.ndarray, x_shape: Sequence[int], geom: ConvGeometry) -> np.ndarray:
    """Eager kernel of the ``window_sum_grad`` primitive: a loop over kernel offsets on a padded buffer."""
    out_sp = list(g.shape[2:])
    offsets = itertools.product(*(range(kk) for kk in geom.kernel))
    wins = [window(k, geom.dilations, geom.strides, out_sp) for k in offsets]
    dxp = np.zeros((*x_shape[:2], *geom.length), dtype=g.dtype)
    for w in wins:
        dxp[(slice(None), slice(None), *w)] += g
    return crop(dxp, list(geom.begin), list(x_shape[2:]))
