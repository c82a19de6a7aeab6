"""Weight-only quantization: numpy quantizers and the graph edit that stores weights in low precision.

``int8`` is symmetric per output channel, ``int4`` symmetric per block of ``block_size`` weights of
one output channel; both are emitted as ``DequantizeLinear`` on the quantized initializer (int4
block-wise needs opset 21). ``fp16`` stores the weight as float16 followed by ``CastLike`` to float32 (opset 15). Each
``DequantizeLinear`` writes the weight's original name, so the layers that read it are not touched.

:func:`fake_quantize` returns, in numpy, exactly the float weight the emitted graph computes
(float32 ``q * scale``, as ``DequantizeLinear`` does), for the measured oracle. MatMul weights that
onnxruntime's ``MatMulNBits`` can take are handled in :mod:`onnxslice.rewrite.matmul_nbits`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import ml_dtypes
import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxslice.errors import PlanError
from onnxslice.model import Layer, Model
from onnxslice.rewrite import matmul_nbits
from onnxslice.rewrite.precision import WeightLayout, layout

__all__ = [
    "WeightEdit",
    "dequantize_int4_blocks",
    "dequantize_int8",
    "fake_quantize",
    "quantize_int4_blocks",
    "quantize_int8",
    "weight_edits",
]

_PREFIX = "onnxslice/quant/"


def _safe_scale(absmax: np.ndarray, qmax: int) -> np.ndarray:
    scale = (absmax / np.float32(qmax)).astype(np.float32)
    return np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)  # an all-zero channel quantizes to 0


def quantize_int8(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel int8: ``q = round(w / s)`` with ``s = max|w| / 127`` per slice along ``axis``.

    Returns:
        ``(q, scale)``: int8 array of ``w``'s shape and float32 scales of length ``w.shape[axis]``.
    """
    w = np.asarray(w, dtype=np.float32)
    other = tuple(i for i in range(w.ndim) if i != axis)
    scale = _safe_scale(np.abs(w).max(axis=other) if other else np.abs(w), 127)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.rint(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale


def dequantize_int8(q: np.ndarray, scale: np.ndarray, axis: int) -> np.ndarray:
    """``q * scale`` per channel along ``axis``, in float32 (DequantizeLinear semantics)."""
    shape = [1] * q.ndim
    shape[axis] = -1
    return (q.astype(np.float32) * scale.reshape(shape)).astype(np.float32)


def _blocks(w: np.ndarray, block_axis: int, block_size: int) -> tuple[np.ndarray, int]:
    """``w`` (2-D) as ``[channels, blocks, block_size]`` (zero-padded), and the unpadded length."""
    m = w if block_axis == 1 else w.T
    k = m.shape[1]
    nb = -(-k // block_size)
    pad = np.zeros((m.shape[0], nb * block_size), dtype=np.float32)
    pad[:, :k] = m
    return pad.reshape(m.shape[0], nb, block_size), k


def quantize_int4_blocks(w: np.ndarray, block_axis: int, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric block-wise int4 of a 2-D weight: blocks of ``block_size`` run along ``block_axis``.

    Each block gets ``s = max|w_block| / 7`` and ``q = clip(round(w / s), -8, 7)``.

    Returns:
        ``(q, scale)``: int8 values in [-8, 7] of ``w``'s shape, and float32 scales shaped like ``w``
        except that ``block_axis`` has ``ceil(len / block_size)`` entries (the ONNX block layout).
    """
    if w.ndim != 2 or block_axis not in (0, 1):
        raise ValueError("int4 block quantization takes a 2-D weight and block_axis 0 or 1")
    b, k = _blocks(np.asarray(w, dtype=np.float32), block_axis, block_size)
    scale = _safe_scale(np.abs(b).max(axis=2), 7)  # [channels, blocks]
    q = np.clip(np.rint(b / scale[:, :, None]), -8, 7).astype(np.int8).reshape(b.shape[0], -1)[:, :k]
    if block_axis == 0:
        return np.ascontiguousarray(q.T), np.ascontiguousarray(scale.T)
    return q, scale


def dequantize_int4_blocks(q: np.ndarray, scale: np.ndarray, block_axis: int, block_size: int) -> np.ndarray:
    """Block-wise ``q * scale`` in float32, exactly as ``DequantizeLinear(axis, block_size)`` computes it."""
    full = np.repeat(scale, block_size, axis=block_axis)
    full = full[: q.shape[0]] if block_axis == 0 else full[:, : q.shape[1]]
    return (q.astype(np.float32) * full).astype(np.float32)


def fake_quantize(
    model: Model, layer: Layer, precision: str, *, block_size: int = 32, use_matmul_nbits: bool = True
) -> np.ndarray:
    """The float32 weight the emitted graph computes for ``layer`` at ``precision`` (numpy only)."""
    w = np.asarray(model.initializer(layer.weight), dtype=np.float32)
    if precision == "fp32":
        return w
    if precision == "fp16":
        return _to_fp16(w).astype(np.float32)
    if use_matmul_nbits and precision == "int4" and matmul_nbits.eligible(model, layer, block_size):
        return matmul_nbits.fake_quantize(w, block_size)
    lay = layout(model, layer)
    if precision == "int8":
        return dequantize_int8(*quantize_int8(w, lay.out_axis), lay.out_axis)
    if precision == "int4":
        q, s = quantize_int4_blocks(w.reshape(lay.view), lay.block_axis, block_size)
        return dequantize_int4_blocks(q, s, lay.block_axis, block_size).reshape(w.shape)
    raise PlanError(f"unknown precision {precision!r} for layer '{layer.name}'")


def _to_fp16(w: np.ndarray) -> np.ndarray:
    lim = float(np.finfo(np.float16).max)
    return np.clip(w, -lim, lim).astype(np.float16)  # saturate rather than overflow to inf


@dataclass
class WeightEdit:
    """The initializers and nodes that replace one float weight (the nodes output the weight's name)."""

    weight: str
    initializers: list[onnx.TensorProto]
    nodes: list[onnx.NodeProto]


def _int8_edit(name: str, w: np.ndarray, lay: WeightLayout) -> WeightEdit:
    q, s = quantize_int8(w, lay.out_axis)
    qn, sn = f"{_PREFIX}{name}/int8", f"{_PREFIX}{name}/scale"
    node = helper.make_node("DequantizeLinear", [qn, sn], [name], name=f"{_PREFIX}{name}/dq", axis=lay.out_axis)
    return WeightEdit(name, [numpy_helper.from_array(q, qn), numpy_helper.from_array(s, sn)], [node])


def _int4_edit(name: str, w: np.ndarray, lay: WeightLayout, block_size: int) -> WeightEdit:
    q, s = quantize_int4_blocks(w.reshape(lay.view), lay.block_axis, block_size)
    qn, sn = f"{_PREFIX}{name}/int4", f"{_PREFIX}{name}/scale"
    inits = [numpy_helper.from_array(q.astype(ml_dtypes.int4), qn), numpy_helper.from_array(s, sn)]
    reshape = tuple(lay.view) != tuple(w.shape)
    dq_out = f"{_PREFIX}{name}/dq_out" if reshape else name
    nodes = [
        helper.make_node(
            "DequantizeLinear",
            [qn, sn],
            [dq_out],
            name=f"{_PREFIX}{name}/dq",
            axis=lay.block_axis,
            block_size=block_size,
        )
    ]
    if reshape:
        shn = f"{_PREFIX}{name}/shape"
        inits.append(numpy_helper.from_array(np.array(w.shape, dtype=np.int64), shn))
        nodes.append(helper.make_node("Reshape", [dq_out, shn], [name], name=f"{_PREFIX}{name}/reshape"))
    return WeightEdit(name, inits, nodes)


def _fp16_edit(name: str, w: np.ndarray) -> WeightEdit:
    # CastLike (opset 15), not Cast: onnxslice.load folds Cast-of-initializer back into a float32 weight
    hn, like = f"{_PREFIX}{name}/fp16", f"{_PREFIX}{name}/like"
    node = helper.make_node("CastLike", [hn, like], [name], name=f"{_PREFIX}{name}/cast")
    inits = [numpy_helper.from_array(_to_fp16(w), hn), numpy_helper.from_array(np.zeros((), np.float32), like)]
    return WeightEdit(name, inits, [node])


def weight_edits(model: Model, decisions: Mapping[str, str], block_size: int) -> list[WeightEdit]:
    """One :class:`WeightEdit` per weight whose layer's decision is fp16, int8 or int4 (DequantizeLinear).

    Args:
        model: the model.
        decisions: layer name -> precision (layers to leave at fp32 or to give to MatMulNBits are absent).
        block_size: int4 block size.
    """
    edits = []
    for lname, precision in decisions.items():
        layer = model.layer(lname)
        w = np.asarray(model.initializer(layer.weight), dtype=np.float32)
        if precision == "fp16":
            edits.append(_fp16_edit(layer.weight, w))
        elif precision == "int8":
            edits.append(_int8_edit(layer.weight, w, layout(model, layer)))
        elif precision == "int4":
            edits.append(_int4_edit(layer.weight, w, layout(model, layer), block_size))
    return edits
