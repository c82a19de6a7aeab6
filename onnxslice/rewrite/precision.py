"""Precisions a layer's weight can be stored in, and what each costs on disk.

A precision is one of ``fp32`` (unchanged), ``fp16`` (weight stored as float16 and cast back),
``int8`` (symmetric, one scale per output channel) and ``int4`` (symmetric, one scale per block of
``block_size`` weights of one output channel, two values packed per byte). This module only
describes layers and counts bytes; it never edits a graph.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from onnxslice.errors import PlanError
from onnxslice.model import Layer, Model

__all__ = [
    "BITS",
    "PRECISIONS",
    "QUANTIZABLE_OPS",
    "WeightLayout",
    "check_precision",
    "layer_bytes",
    "layout",
    "parse_choices",
    "quantizable_layers",
]

#: Nominal bits per weight, lowest first.
BITS = {"int4": 4, "int8": 8, "fp16": 16, "fp32": 32}
PRECISIONS = tuple(BITS)
#: Layer op types whose weight can be stored in reduced precision.
QUANTIZABLE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "LSTM", "GRU", "RNN")


def check_precision(name: object, where: str = "") -> str:
    """Return ``name`` if it is a known precision, else raise :class:`PlanError`."""
    if not isinstance(name, str) or name not in BITS:
        at = f" for layer '{where}'" if where else ""
        raise PlanError(f"unknown precision {name!r}{at}; use one of {', '.join(PRECISIONS)}")
    return name


def parse_choices(choices: str | Iterable[str]) -> tuple[str, ...]:
    """``"int4,int8"`` or an iterable -> precisions sorted from fewest to most bits (deduplicated).

    Raises:
        PlanError: an unknown precision, or no choice at all.
    """
    items = [c.strip() for c in choices.split(",")] if isinstance(choices, str) else [str(c).strip() for c in choices]
    items = [c for c in items if c]
    if not items:
        raise PlanError(f"no precision choices given; use some of {', '.join(PRECISIONS)}")
    for c in items:
        check_precision(c)
    return tuple(sorted(set(items), key=BITS.__getitem__))


@dataclass(frozen=True)
class WeightLayout:
    """Where a layer's output channels and quantization blocks lie in its weight.

    Attributes:
        out_axis: the weight axis that indexes output channels (per-channel int8 scales run along it).
        view: the 2-D shape the weight is viewed as for block-wise int4 (equal to the weight's shape
            when it is already 2-D).
        block_axis: the axis of ``view`` that blocks run along (the reduction axis; every block
            belongs to one output channel).
    """

    out_axis: int
    view: tuple[int, int]
    block_axis: int


def layout(model: Model, layer: Layer) -> WeightLayout:
    """The :class:`WeightLayout` of a quantizable layer.

    Raises:
        PlanError: the layer's op type cannot be quantized.
    """
    if layer.op_type not in QUANTIZABLE_OPS:
        raise PlanError(
            f"layer '{layer.name}' is a {layer.op_type}; only {', '.join(QUANTIZABLE_OPS)} layers can be quantized "
            "(keep it at fp32)"
        )
    shape = tuple(int(d) for d in model.initializer(layer.weight).shape)
    axis = layer.out_axis
    if len(shape) == 2:
        return WeightLayout(axis, (shape[0], shape[1]), 1 - axis)
    if layer.op_type in ("LSTM", "GRU", "RNN"):  # W [D, G*H, I]: a row per gate neuron, blocks run over I
        return WeightLayout(axis, (shape[0] * shape[1], shape[2]), 1)
    if axis == len(shape) - 1:  # [..., N]: blocks run over the flattened leading axes
        return WeightLayout(axis, (int(np.prod(shape[:-1])), shape[-1]), 0)
    if axis == 0:  # Conv [O, I, k...]: blocks run over I*k...
        return WeightLayout(axis, (shape[0], int(np.prod(shape[1:]))), 1)
    # ConvTranspose [I, O/g, k...] and left-hand MatMul weights: blocks run over the first axis
    return WeightLayout(axis, (shape[0], int(np.prod(shape[1:]))), 0)


def quantizable_layers(model: Model) -> list[Layer]:
    """Layers whose float32 weight can be stored in reduced precision, in model order."""
    return [
        x
        for x in model.layers
        if x.op_type in QUANTIZABLE_OPS and model.initializer(x.weight).dtype == np.float32
    ]


def layer_bytes(model: Model, layer: Layer, precision: str, block_size: int = 32) -> int:
    """Bytes the layer's weight takes on disk at ``precision`` (quantized data plus float32 scales).

    Biases stay float32 and are not counted here.
    """
    w = model.initializer(layer.weight)
    n = int(w.size)
    if precision == "fp32":
        return 4 * n
    if precision == "fp16":
        return 2 * n
    lay = layout(model, layer)
    if precision == "int8":
        return n + 4 * int(w.shape[lay.out_axis])
    if precision == "int4":
        rows = lay.view[lay.block_axis]
        cols = lay.view[1 - lay.block_axis]
        return (n + 1) // 2 + 4 * cols * (-(-rows // block_size))
    raise PlanError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
