"""onnxruntime sessions: the IR version it reads, CUDA detection and the session every run goes through.

It sits below the model and the plugins (:mod:`onnxslice.opsets` builds eager kernels with it); the
recording of intermediate values on top of it is :mod:`onnxslice.record`, which re-exports these names.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from onnxslice.errors import DataError, OnnxSliceError

__all__ = [
    "Device",
    "copy_replacing_initializers",
    "cuda_usable",
    "env_threads",
    "make_session",
    "max_ort_ir_version",
    "median_ratios",
    "round_robin_times",
    "runtime_proto",
    "timed_sessions",
]

Device = Literal["auto", "cpu", "cuda"]
log = logging.getLogger("onnxslice")


@lru_cache(maxsize=1)
def max_ort_ir_version() -> int:
    """The highest IR version the installed onnxruntime accepts (probed once on a tiny model)."""
    for ir in range(onnx.IR_VERSION, 6, -1):
        try:
            ort.InferenceSession(_probe_model(ir), providers=["CPUExecutionProvider"])
            return ir
        except Exception:  # onnxruntime raises its own exception types for unsupported IR
            continue
    return 7


#: The external-data location of initializers handed to onnxruntime from memory (:func:`memory_stub`).
MEMORY_LOCATION = "onnxslice:fed-from-memory"


def memory_stub(t: onnx.TensorProto) -> onnx.TensorProto:
    """An initializer without its data: onnxruntime gets the array from memory
    (``SessionOptions.add_external_initializers``), so neither the proto nor its bytes copy it."""
    stub = onnx.TensorProto(name=t.name, data_type=t.data_type, dims=list(t.dims))
    stub.data_location = onnx.TensorProto.EXTERNAL
    entry = stub.external_data.add()
    entry.key, entry.value = "location", MEMORY_LOCATION
    return stub


def _copy_fields(src: Any, dst: Any, skip: str) -> None:
    """Copy every set field of the message ``src`` into ``dst`` except the field ``skip``."""
    for field, value in src.ListFields():
        if field.name == skip:
            continue
        if field.is_repeated:
            getattr(dst, field.name).extend(value)
        elif field.message_type is not None:
            getattr(dst, field.name).CopyFrom(value)
        else:
            setattr(dst, field.name, value)


def copy_replacing_initializers(
    proto: onnx.ModelProto, replace: Callable[[onnx.TensorProto], onnx.TensorProto | None]
) -> onnx.ModelProto:
    """A copy of ``proto`` whose initializers are ``replace(t)`` (None: ``t`` copied as it is), made without
    copying the replaced ones' bytes first (``CopyFrom`` of ResNet-18's 45 MB costs 25 ms)."""
    out = onnx.ModelProto()
    _copy_fields(proto, out, skip="graph")
    _copy_fields(proto.graph, out.graph, skip="initializer")
    for t in proto.graph.initializer:
        new = replace(t)
        if new is None:
            out.graph.initializer.add().CopyFrom(t)
        else:
            out.graph.initializer.append(new)
    return out


def _copy_without_weights(proto: onnx.ModelProto, in_memory: set[str]) -> onnx.ModelProto:
    """A copy of ``proto`` whose ``in_memory`` initializers are :func:`memory_stub` s."""
    if not in_memory:
        out = onnx.ModelProto()
        out.CopyFrom(proto)
        return out
    return copy_replacing_initializers(proto, lambda t: memory_stub(t) if t.name in in_memory else None)


def runtime_proto(
    proto: onnx.ModelProto,
    extra_outputs: Sequence[str] = (),
    weight_inputs: Sequence[str] = (),
    in_memory: Sequence[str] = (),
) -> onnx.ModelProto:
    """A copy of ``proto`` that onnxruntime accepts, with ``extra_outputs`` added as graph outputs.

    The IR version is lowered to what onnxruntime supports (onnx 1.23 writes IR 14 by default).
    Initializers named in ``weight_inputs`` become graph inputs, so one session can run with many
    values of those weights (perturbation studies, gradients at shifted weights). Initializers named
    in ``in_memory`` stay initializers (graph optimizations may fold them) but lose their data
    (:func:`memory_stub`): pass their arrays to :func:`make_session` as ``external``.
    """
    out = _copy_without_weights(proto, set(in_memory))
    out.ir_version = min(out.ir_version, max_ort_ir_version())
    if weight_inputs:
        want = set(weight_inputs)
        moved = [t for t in out.graph.initializer if t.name in want]
        missing = want - {t.name for t in moved}
        if missing:
            raise DataError(f"no initializer named {', '.join(sorted(missing))} in the model")
        keep = [t for t in out.graph.initializer if t.name not in want]
        del out.graph.initializer[:]
        out.graph.initializer.extend(keep)
        declared = {i.name for i in out.graph.input}
        for t in moved:
            if t.name not in declared:
                out.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    have = {o.name for o in out.graph.output}
    known = {vi.name: vi for vi in out.graph.value_info}
    for name in extra_outputs:
        if name in have:
            continue
        vi = onnx.ValueInfoProto()
        if name in known:
            vi.CopyFrom(known[name])
        else:
            vi.name = name  # onnxruntime infers the type of an untyped output
        out.graph.output.append(vi)
        have.add(name)
    return out


def trim_heap() -> None:
    """Hand the C heap's free pages back to the system (glibc's ``malloc_trim``; elsewhere nothing).

    After a large one-off allocation is freed (a recording traced once) glibc keeps its pages, and the
    next large user (an onnxruntime arena) grows the resident size around them instead of reusing them:
    on the CIFAR ResNet-18's graph executor at batch 32 the peak was 34 MiB higher without it.
    """
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _cuda_works(providers: Sequence[str]) -> bool:
    return bool(providers) and providers[0] == "CUDAExecutionProvider"


def _probe_model(ir: int) -> bytes:
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=ir).SerializeToString()


@lru_cache(maxsize=1)
def cuda_usable() -> bool:
    """Whether onnxruntime really runs on CUDA here (probed once, quietly, on a tiny model).

    ``get_available_providers()`` lists CUDA whenever onnxruntime-gpu is installed, even with no GPU
    or CUDA libraries, so only a session's ``get_providers()`` is trusted.
    """
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    ort.set_default_logger_severity(4)
    try:
        sess = ort.InferenceSession(_probe_model(7), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        return _cuda_works(sess.get_providers())
    except Exception:
        return False
    finally:
        ort.set_default_logger_severity(2)


def env_threads() -> int:
    """The thread count ``ONNXSLICE_THREADS`` sets for onnxruntime sessions and the eager kernels (0: unset)."""
    return int(os.environ.get("ONNXSLICE_THREADS", "0") or 0)


def make_session(
    proto: onnx.ModelProto,
    device: Device = "auto",
    *,
    optimize: bool | Literal["extended"] = False,
    threads: int | None = None,
    arena: bool = True,
    external: Mapping[str, np.ndarray] | None = None,
    shared_arena: bool = False,
    mem_pattern: bool = True,
    spin: bool = True,
    prepack: bool = True,
) -> ort.InferenceSession:
    """An onnxruntime session on ``device``, checked with ``session.get_providers()``.

    Args:
        proto: the model (IR version must already be acceptable: see :func:`runtime_proto`).
        device: ``"auto"`` uses CUDA when it really works, else CPU; ``"cuda"`` fails if it does not.
        optimize: keep onnxruntime's graph optimizations (off for recording, on for latency);
            ``"extended"`` stops before the NCHWc layout transformations of the *all* level.
        threads: intra-op threads (default: ``ONNXSLICE_THREADS`` when set, else onnxruntime's choice).
        arena: keep onnxruntime's CPU memory arena (off: buffers are freed after each run, which keeps
            the resident size down for sessions whose outputs are copied out anyway).
        external: arrays of the initializers ``proto`` holds as :func:`memory_stub` (``runtime_proto(
            in_memory=)``). The session runs on these very buffers and keeps references to them (do not change
            them in place while it lives: prepacked copies would not follow); only its build copies them.
        shared_arena: use the process's one shared CPU arena (:func:`_shared_arena`) instead of an
            arena of its own: for the many small one-node kernel sessions, whose own arenas each keep
            their largest output.
        mem_pattern: let onnxruntime plan the buffers of a run ahead (off: less peak memory for large
            graphs such as the emitted gradient graphs).
        spin: let the session's worker threads spin-wait for work after a run (onnxruntime's default). Off
            for sessions run between other work, such as the gradient engine's recording and its
            one-node kernels: every session has its own pool, and their spinning workers took the cores
            from each other (ResNet-18's eager gradient at 2 threads: 516 against 214 ms without).
        prepack: let onnxruntime keep kernel-ready copies of constant weights (its default). Off, a
            kernel reads the weight itself: no second copy of the weights it would pack (ConvTranspose's
            transposed filters), for some speed.

    Raises:
        OnnxSliceError: CUDA was required but the session fell back to CPU.
    """
    so = ort.SessionOptions()
    levels = ort.GraphOptimizationLevel
    so.graph_optimization_level = (
        levels.ORT_ENABLE_EXTENDED if optimize == "extended" else levels.ORT_ENABLE_ALL if optimize
        else levels.ORT_DISABLE_ALL
    )
    so.enable_mem_pattern = mem_pattern
    so.log_severity_level = 3
    so.enable_cpu_mem_arena = arena and os.environ.get("ONNXSLICE_ARENA", "1") != "0"
    threads = threads or env_threads()
    if threads:
        so.intra_op_num_threads = threads
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not prepack:
        so.add_session_config_entry("session.disable_prepacking", "1")
    if shared_arena and so.enable_cpu_mem_arena and _shared_arena():
        so.add_session_config_entry("session.use_env_allocators", "1")
    arrays = {k: np.ascontiguousarray(v) for k, v in (external or {}).items()}
    held = [ort.OrtValue.ortvalue_from_numpy(v) for v in arrays.values()]
    if arrays:
        # the graph's optimizers read them as external initializers (onnxruntime copies those into the graph
        # while it builds the session); add_initializer then makes the session's own tensors these very
        # buffers, so that the copies go when the build ends (ResNet-18's gradient graph: 43 MiB held once)
        so.add_external_initializers(list(arrays), held)
        for k, v in zip(arrays, held, strict=True):
            so.add_initializer(k, v)
    sess = _open(proto.SerializeToString(), so, device)
    sess._onnxslice_external = (arrays, held)  # the arrays must outlive the session
    return sess


@lru_cache(maxsize=1)
def _shared_arena() -> bool:
    """Register one CPU arena allocator with onnxruntime's environment (once per process).

    It grows by what is asked (``arena_extend_strategy`` 1) rather than to the next power of two: on
    EfficientNet-Lite0's backward the one-node kernel sessions then peak at 600 MiB instead of 980 with
    an arena each, for about 2% more time per call.
    """
    try:
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, 1, -1, -1))
        return True
    except Exception:  # an onnxruntime build without it: sessions keep their own arenas
        return False


def _open(data: bytes, so: ort.SessionOptions, device: Device) -> ort.InferenceSession:
    if device in ("auto", "cuda") and cuda_usable():
        try:
            sess = ort.InferenceSession(data, so, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
            if _cuda_works(sess.get_providers()):
                return sess
        except Exception as e:  # a broken CUDA install raises at session creation
            if device == "cuda":
                raise OnnxSliceError(f"CUDA was requested but onnxruntime could not use it: {e}") from e
    if device == "cuda":
        raise OnnxSliceError(
            "CUDA was requested but onnxruntime runs on CPU here (no usable GPU or CUDA libraries); "
            "use device='cpu' or 'auto'"
        )
    try:
        return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise OnnxSliceError(f"onnxruntime cannot run this model: {e}") from e


def _session_device(sess: ort.InferenceSession) -> str:
    return "cuda" if _cuda_works(sess.get_providers()) else "cpu"


def timed_sessions(protos: Sequence[Any], device: str = "cpu", threads: int = 1) -> list[Any]:
    """Optimized onnxruntime sessions (graph optimizations on, as deployed) with pinned intra-op threads."""
    if device not in ("cpu", "cuda"):
        raise OnnxSliceError(f"unknown device '{device}'; use cpu or cuda")
    dev: Any = device
    return [make_session(runtime_proto(p), dev, optimize=True, threads=threads) for p in protos]


#: Least time, in ms, each side of a round-robin measurement is run for: a model of microseconds gets
#: more repeats than asked (single runs still, round-robin), since a handful of its runs is decided by
#: timer grain and scheduler noise. A model slower than this keeps the repeats it was given.
MIN_TOTAL_MS = 50.0
MAX_REPEATS = 2000


def round_robin_times(sessions: Sequence[Any], feeds: Sequence[Mapping[str, np.ndarray]], repeats: int = 15,
                      warmup: int = 2, min_total_ms: float = MIN_TOTAL_MS) -> np.ndarray:
    """Times in ms, ``[n, sessions]``: each of ``n`` repeats runs every session once (session ``i`` on
    ``feeds[i]``), starting one later than the repeat before, after ``warmup`` runs of each. ``n`` is
    ``repeats``, raised (up to 2000) until the fastest session's runs add up to ``min_total_ms``, as
    timed by its warm-up."""
    feeds = [dict(f) for f in feeds]
    fastest = float("inf")
    for s, f in zip(sessions, feeds, strict=True):
        for _ in range(max(warmup, 1)):
            t0 = time.perf_counter()
            s.run(None, f)
            fastest = min(fastest, (time.perf_counter() - t0) * 1e3)
    if min_total_ms > 0 and fastest * repeats < min_total_ms:
        repeats = int(min(MAX_REPEATS, max(repeats, np.ceil(min_total_ms / max(fastest, 1e-3)))))
    times = np.zeros((repeats, len(sessions)))
    for r in range(repeats):
        for j in range(len(sessions)):
            i = (r + j) % len(sessions)
            t0 = time.perf_counter()
            sessions[i].run(None, feeds[i])
            times[r, i] = (time.perf_counter() - t0) * 1e3
    return times


def median_ratios(sessions: Sequence[Any], feed: Mapping[str, np.ndarray], repeats: int = 15,
                  warmup: int = 2) -> tuple[list[float], list[float]]:
    """Round-robin timing (:func:`round_robin_times`); returns (median ms of each session, median
    per-repeat ratio to session 0)."""
    times = round_robin_times(sessions, [feed] * len(sessions), repeats, warmup)
    ms = np.median(times, axis=0)
    ratios = np.median(times / times[:, :1], axis=0)
    return [float(v) for v in ms], [float(v) for v in ratios]
