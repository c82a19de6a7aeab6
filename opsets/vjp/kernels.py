"""onnxruntime's own convolution kernels, run as small cached one-node sessions, for backward convolutions.

The input cotangent of a convolution is a transposed convolution of the output cotangent, and its
weight cotangent a convolution of the input by the output cotangent; onnxruntime's MLAS kernels do
both several times faster than numpy loops. Sessions are memoized per (op, attributes, dtype, rank)
with dynamic shapes, so a model builds each one once; small constant kernels (depthwise weights) get
sessions of their own, keyed by their contents (:func:`run_const_kernel`). The caches hold no graph
state: rules stay pure functions of their inputs. Set ``ONNXSLICE_CONV_KERNELS=numpy`` to use the numpy path only.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
from onnx import helper, numpy_helper

from onnxslice.session import env_threads, make_session

__all__ = ["enabled", "matmul", "pool", "run_const_kernel", "run_kernel", "split_samples", "threads"]

T = TypeVar("T")

#: Set in the pool's workers while they run one part of a split: their kernels are single-threaded (one
#: core each, no intra-op sync between them) and nothing they call splits again.
_LOCAL = threading.local()


def enabled() -> bool:
    """Whether backward convolutions may use onnxruntime kernels."""
    return os.environ.get("ONNXSLICE_CONV_KERNELS", "onnxruntime") != "numpy"


def threads() -> int:
    """Threads the eager kernels may use: ``ONNXSLICE_THREADS`` when set (as the sessions), else the CPUs
    this process may run on; 1 inside a part of :func:`split_samples`."""
    if getattr(_LOCAL, "single", False):
        return 1
    n = env_threads()
    if n > 0:
        return n
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@functools.lru_cache(maxsize=1)
def pool() -> ThreadPoolExecutor:
    """The process's thread pool for numpy work split over :func:`threads` (numpy lets go of the GIL in
    its copies and products); built once, on first use."""
    return ThreadPoolExecutor(max_workers=max(threads(), 2), thread_name_prefix="onnxslice-kernel")


#: Work (multiply-adds) each thread's part of a split must have at least (:func:`split_samples`). The CIFAR
#: ResNet-18 at two threads, eager engine, the two ways alternated in one process: batch 32 (parts of
#: 0.3-0.6 G) 0.90x the time of one call; batch 8 (parts of 0.08-0.15 G) no faster (0.995x) and 18-28 MiB
#: more peak memory (two parts' buffers at once, and a C heap of its own for the pool's thread).
SPLIT_MIN_MACS = 1 << 28


def split_samples(n: int, part: Callable[[int, int], T], macs: int, min_part: int | None = None) -> list[T] | None:
    """``part(lo, hi)`` over contiguous sample ranges, one per thread, each on single-threaded kernels.

    onnxruntime's MLAS kernels and numpy's im2col copies scale poorly over two threads on the small maps of
    a CIFAR ResNet (at batch 32 a weight cotangent 1.22x, an input cotangent 1.34x faster with two threads
    than with one); independent sample ranges on one core each share nothing. The caller runs the first
    range itself. ``macs``: the work of all ``n`` samples. None (nothing run) when there is one thread or
    one sample, a part would have less than ``min_part`` (default :data:`SPLIT_MIN_MACS`) of work, or this
    already is a part.
    """
    parts = min(threads(), n)
    if parts < 2 or macs < (SPLIT_MIN_MACS if min_part is None else min_part) * parts:
        return None
    bounds = [n * i // parts for i in range(parts + 1)]

    def single(lo: int, hi: int) -> T:
        _LOCAL.single = True
        try:
            return part(lo, hi)
        finally:
            _LOCAL.single = False

    ranges = list(itertools.pairwise(bounds))
    rest = [pool().submit(single, lo, hi) for lo, hi in ranges[1:]]
    first = single(*ranges[0])
    return [first, *(f.result() for f in rest)]


_SESSIONS: dict[tuple[Any, ...], Any] = {}


def _session(op: str, attrs: tuple[tuple[str, Any], ...], dtype: str, rank: int) -> Any:
    """The cached session (None, also cached, when onnxruntime has no kernel for it); single-threaded ones
    inside a part of :func:`split_samples`."""
    single = bool(getattr(_LOCAL, "single", False))
    key = (op, attrs, dtype, rank, single)
    if key not in _SESSIONS:
        try:
            _SESSIONS[key] = _build(op, attrs, dtype, rank, single=single)
        except Exception:  # onnxruntime's own exception types: no kernel for this combination
            _SESSIONS[key] = None
    return _SESSIONS[key]


def _build(
    op: str, attrs: tuple[tuple[str, Any], ...], dtype: str, rank: int, const: np.ndarray | None = None,
    single: bool = False,
) -> Any:
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    kwargs: dict[str, Any] = {k: list(v) if isinstance(v, tuple) else v for k, v in attrs}
    node = helper.make_node(op, ["a", "b"], ["c"], **kwargs)
    inputs = [helper.make_tensor_value_info("a", elem, None)]
    inits = []
    if const is None:
        inputs.append(helper.make_tensor_value_info("b", elem, None))
    else:
        inits.append(numpy_helper.from_array(const, "b"))
    graph = helper.make_graph(
        [node], f"onnxslice/{op}", inputs, [helper.make_tensor_value_info("c", elem, None)], inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return make_session(model, "cpu", optimize=True, shared_arena=True, spin=False, threads=1 if single else None)


def _attr_key(attrs: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Node attributes as a hashable cache key (lists become tuples)."""
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in attrs.items()))


def run_kernel(op: str, a: np.ndarray, b: np.ndarray, **attrs: Any) -> np.ndarray | None:
    """``op(a, b, **attrs)`` through a cached onnxruntime session; None when onnxruntime refuses it."""
    sess = _session(op, _attr_key(attrs), a.dtype.name, a.ndim)
    if sess is None:
        return None
    try:
        return np.asarray(sess.run(None, {"a": np.ascontiguousarray(a), "b": np.ascontiguousarray(b)})[0])
    except Exception:  # a shape the kernel rejects at run time: the caller uses numpy
        return None


#: Sessions with a constant operand (:func:`run_const_kernel`), most recently used last.
_CONST_SESSIONS: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
#: How many such sessions are kept (each holds its constant and onnxruntime's reordered copy of it).
CONST_SESSIONS = 256
#: Constants larger than this many elements are not baked into a session (hashing them costs per call).
CONST_MAX = 1 << 16


def run_const_kernel(op: str, a: np.ndarray, const: np.ndarray, **attrs: Any) -> np.ndarray | None:
    """``op(a, const, **attrs)`` through a session that holds ``const`` as an initializer.

    onnxruntime lays a constant convolution kernel out for its blocked (NCHWc) kernels, which a kernel
    fed as an input never gets: a depthwise 5x5 convolution on EfficientNet-Lite0's 28x28 maps takes
    1.9 ms instead of 8.3. Sessions are cached by the constant's *contents* (a hash of its bytes, so a
    weight changed in place never meets a stale session), for small constants only (:data:`CONST_MAX`),
    the least recently used dropped past :data:`CONST_SESSIONS`. None when onnxruntime refuses it.
    """
    if const.size > CONST_MAX or not enabled():
        return None
    const = np.ascontiguousarray(const)
    digest = hashlib.blake2b(const.tobytes(), digest_size=16).digest()
    attr_key = _attr_key(attrs)
    single = bool(getattr(_LOCAL, "single", False))
    key = (op, attr_key, a.dtype.name, a.ndim, const.dtype.name, const.shape, digest, single)
    sess = _CONST_SESSIONS.pop(key, False)
    if sess is False:
        try:
            sess = _build(op, attr_key, a.dtype.name, a.ndim, const, single=single)
        except Exception:  # onnxruntime's own exception types: no kernel for this combination
            sess = None
    _CONST_SESSIONS[key] = sess
    while len(_CONST_SESSIONS) > CONST_SESSIONS:
        _CONST_SESSIONS.popitem(last=False)
    if sess is None:
        return None
    try:
        return np.asarray(sess.run(None, {"a": np.ascontiguousarray(a)})[0])
    except Exception:  # a shape the kernel rejects at run time: the caller uses another path
        return None


#: Products smaller than this many multiply-adds stay in numpy (a session call costs ~20 us).
MIN_KERNEL_MACS = 1 << 18


def matmul(a: np.ndarray, b: np.ndarray, *, trans_a: bool = False, trans_b: bool = False) -> np.ndarray:
    """``a @ b`` with optional transposes (2-D; stacked operands with matching batch dims without them).

    Large float32 products run on onnxruntime's MLAS GEMM (measured 3-10x faster than numpy's
    OpenBLAS on the shared CPUs here), small ones and other dtypes in numpy.
    """
    at = np.swapaxes(a, -1, -2) if trans_a else a
    bt = np.swapaxes(b, -1, -2) if trans_b else b
    macs = at.shape[-2] * at.shape[-1] * bt.shape[-1] * int(np.prod(at.shape[:-2]))
    if enabled() and a.dtype == np.float32 and b.dtype == np.float32 and macs >= MIN_KERNEL_MACS:
        if a.ndim == 2 and b.ndim == 2:
            res = run_kernel("Gemm", a, b, transA=int(trans_a), transB=int(trans_b))
        elif not trans_a and not trans_b:
            res = run_kernel("MatMul", a, b)
        else:
            res = None
        if res is not None:
            return res
    return at @ bt
