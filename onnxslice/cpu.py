"""What the CPU this runs on can do, as far as onnxruntime's kernels care (read from ``/proc/cpuinfo``)."""

from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path

__all__ = ["cpu_flags", "cpu_name", "int8_saturates"]

#: Instruction sets with which onnxruntime's uint8 x int8 kernels accumulate in 32 bits (no saturation).
_VNNI = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (empty where ``/proc/cpuinfo`` is absent or lists none, as on ARM)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_name() -> str:
    """The CPU's model name (the platform's processor string where ``/proc/cpuinfo`` is absent)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def int8_saturates() -> bool:
    """Whether onnxruntime's default uint8 x int8 matrix kernels saturate on this CPU.

    On x86-64 with SSE4.1, AVX2 or AVX-512 but no VNNI, onnxruntime multiplies uint8 activations by int8
    weights with ``(V)PMADDUBSW``, which adds pairs of products in 16 bits and clips the sum at 32767:
    with both operands spanning their ranges (a dynamic quantization's activations do), results move by
    several percent (5.8% relative error on a two-MatMul test net on an AMD EPYC with AVX2; 1.8% with
    7-bit weights). onnxruntime's remedy is ``reduce_range`` (7-bit weights) when quantizing, or the
    session option ``session.x64quantprecision`` (slower uint8 x uint8 kernels) when running. False
    where the flags are unknown.
    """
    flags = cpu_flags()
    return bool(flags & {"sse4_1", "avx2", "avx512f"}) and not flags & _VNNI
