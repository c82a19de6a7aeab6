"""Fault sites: the layers whose weights or activations a fault can hit, and the constant subgraphs
a guard may recompute.

Plain functions of the model graph, shared by the fault campaign (:mod:`onnxslice.apps.faults`, which
re-exports them) and the guard pass (:mod:`onnxslice.rewrite.guard`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from onnxslice.errors import ModelError
from onnxslice.model import Model, Node
from onnxslice.walk import ancestors

__all__ = ["FaultLayer", "constant_subgraph", "fault_layers"]

_QUANT = {onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.INT4: "int4",
          onnx.TensorProto.UINT4: "uint4"}



@dataclass(frozen=True)
class FaultLayer:
    """A layer faults can hit.

    Attributes:
        name: the node name.
        index: its position in :func:`fault_layers` (the key of its random streams).
        weight: the initializer whose bits flip (the float weight, or the stored quantized one).
        weight_encoding: ``float32``, ``float16``, ``int8``, ``uint8``, ``int4`` or ``uint4``.
        output: the node's output value (its activation).
    """

    name: str
    index: int
    weight: str
    weight_encoding: str
    output: str


def fault_layers(model: Model) -> list[FaultLayer]:
    """The SAfER layers of ``model`` (float weights), layers reading a dequantized integer initializer, and
    ``MatMulNBits`` layers (their packed ``uint8`` weight bytes).

    Raises:
        ModelError: the model has no such layer.
    """
    out: list[FaultLayer] = []
    floats = {x.name: x for x in model.layers}
    for n in model.nodes:
        if n.name in floats:
            x = floats[n.name]
            enc = str(model.initializer(x.weight).dtype)
            if enc in ("float32", "float16"):
                out.append(FaultLayer(n.name, len(out), x.weight, enc, x.output))
            continue
        if n.op_type == "MatMulNBits" and n.domain == "com.microsoft" and model.is_initializer(n.input(1)):
            t = model._init_protos[n.input(1)]
            if t.data_type == onnx.TensorProto.UINT8:  # packed 4-bit weights: two per stored byte
                out.append(FaultLayer(n.name, len(out), n.input(1), "uint8", n.outputs[0]))
            continue
        for v in (n.input(i) for i in model.info(n).fault_inputs):  # the op family says which inputs
            sub = constant_subgraph(model, v)
            dq = next((d for d in sub or [] if d.op_type == "DequantizeLinear" and model.is_initializer(d.input(0))),
                      None)
            if dq is None:
                continue
            t = model._init_protos[dq.input(0)]
            if t.data_type in _QUANT and len(t.dims) >= 1 and int(np.prod(t.dims)) > 1:
                out.append(FaultLayer(n.name, len(out), dq.input(0), _QUANT[t.data_type], n.outputs[0]))
                break
    if not out:
        raise ModelError(
            "the model has no layers faults can hit: no Conv/ConvTranspose/Gemm/MatMul node reads a float32/float16 "
            "weight initializer or a DequantizeLinear of an int8/uint8/int4/uint4 one, and no MatMulNBits node"
        )
    return out


def constant_subgraph(model: Model, value: str) -> list[Node] | None:
    """The nodes computing ``value`` from initializers only (a weight built by DequantizeLinear, Reshape...),
    in model order; None when ``value`` depends on a graph input, or is itself an initializer or empty."""
    if not value or model.is_initializer(value) or model.producer(value) is None:
        return None
    names = ancestors(model, [value])
    nodes = [n for n in model.nodes if n.name in names]
    for n in nodes:
        if n.op_type in ("If", "Loop", "Scan"):
            return None
        for i in n.inputs:
            if i and not model.is_initializer(i) and (model.producer(i) is None or model.producer(i).name not in names):  # type: ignore[union-attr]
                return None
    return nodes
