"""CPU facts: which instruction sets make onnxruntime's uint8 x int8 kernels saturate."""

from __future__ import annotations

import pytest

from onnxslice import cpu


@pytest.mark.parametrize(("flags", "saturates"), [
    ({"sse4_1", "avx2", "fma"}, True),  # AVX2 without VNNI: VPMADDUBSW clips 16-bit pair sums
    ({"avx2", "avx512f", "avx512bw"}, True),  # AVX-512 without VNNI: the same instruction
    ({"avx2", "avx512f", "avx512_vnni"}, False),  # VNNI accumulates in 32 bits
    ({"avx2", "avx_vnni"}, False),
    ({"avx2", "amx_int8"}, False),
    (set(), False),  # unknown (no /proc/cpuinfo, ARM's "Features" line): assume not
    ({"sse4_1", "ssse3"}, True),  # onnxruntime: SSE4.1 kernels too
])
def test_int8_saturates_on_x86_without_vnni(monkeypatch, flags, saturates):
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset(flags))
    assert cpu.int8_saturates() is saturates


def test_cpu_flags_and_name_read_this_machine():
    flags = cpu.cpu_flags()
    assert isinstance(flags, frozenset) and all(isinstance(f, str) and " " not in f for f in flags)
    assert cpu.cpu_name()
