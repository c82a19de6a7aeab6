"""MatMul weights as onnxruntime's ``MatMulNBits`` (com.microsoft), packed by ``onnxruntime.quantization``.

The packing is onnxruntime's own (``MatMulNBitsQuantizer`` for the graph, the same
``DefaultWeightOnlyQuantizer`` block routine for :func:`fake_quantize`), symmetric 4-bit with one
float32 scale per block of ``block_size`` values along K. It needs the ``onnx-ir`` package that
onnxruntime's quantizer imports (a core dependency now: the rewrite passes edit onnx-ir graphs);
:func:`available` stays as a guard: without it int4 MatMul weights would be emitted as block-wise
``DequantizeLinear`` instead.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import onnx

from onnxslice.model import Layer, Model

__all__ = ["apply", "available", "eligible", "fake_quantize"]

#: Block sizes MatMulNBits accepts (a power of two, at least 16).
BLOCK_SIZES = (16, 32, 64, 128, 256)


@lru_cache(maxsize=1)
def available() -> bool:
    """Whether onnxruntime's MatMulNBits quantizer can be imported here."""
    return importlib.util.find_spec("onnx_ir") is not None


def eligible(model: Model, layer: Layer, block_size: int) -> bool:
    """Whether ``layer`` is a MatMul whose right-hand float32 2-D weight MatMulNBits can take."""
    if layer.op_type != "MatMul" or layer.weight_input != 1 or block_size not in BLOCK_SIZES or not available():
        return False
    w = model.initializer(layer.weight)
    return w.dtype == np.float32 and w.ndim == 2 and len(model.consumers(layer.weight)) == 1


def _quantizer(block_size: int) -> Any:
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, DefaultWeightOnlyQuantizer

    cfg = DefaultWeightOnlyQuantConfig(
        block_size=block_size, is_symmetric=True, quant_format=QuantFormat.QOperator, bits=4
    )
    return DefaultWeightOnlyQuantizer(cfg)


def fake_quantize(w: np.ndarray, block_size: int) -> np.ndarray:
    """The [K, N] float32 weight that MatMulNBits computes from onnxruntime's 4-bit packing of ``w``."""
    k, n = w.shape
    packed, scales, _ = _quantizer(block_size).qbits_block_quant(np.ascontiguousarray(w, dtype=np.float32))
    nib = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(n, packed.shape[1], -1)  # low nibble first
    vals = (nib.astype(np.float32) - np.float32(8)) * scales[:, :, None].astype(np.float32)  # symmetric: zp 8
    return np.ascontiguousarray(vals.reshape(n, -1)[:, :k].T.astype(np.float32))


def apply(proto: onnx.ModelProto, weights: Sequence[str], block_size: int) -> onnx.ModelProto:
    """Replace the MatMul nodes that read ``weights`` (as input B) with MatMulNBits; returns a new proto."""
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    want = set(weights)
    names = [n.name for n in proto.graph.node if n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in want]
    if not names:
        return proto
    q = MatMulNBitsQuantizer(
        proto,
        bits=4,
        block_size=block_size,
        is_symmetric=True,
        nodes_to_include=names,
        quant_format=QuantFormat.QOperator,
        op_types_to_quantize=("MatMul",),
    )
    q.process()
    out: onnx.ModelProto = q.model.model
    return out
