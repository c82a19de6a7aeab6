"""The quantization passes on the graph IR: ``OpsetUpgrade``, ``WeightQuant`` (DequantizeLinear/CastLike
weights), ``MatMulNBits`` and ``StaticQuant`` (onnxruntime's QDQ ``quantize_static``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxslice.errors import OnnxSliceError
from onnxslice.rewrite import matmul_nbits
from onnxslice.rewrite.opset_upgrade import default_opset, upgrade_opset
from onnxslice.rewrite.passes.base import Pass, PassResult, replace_weights, to_ir, to_proto, view
from onnxslice.rewrite.static_quant import static_quantize
from onnxslice.rewrite.weight_quant import weight_edits

__all__ = ["MatMulNBits", "OpsetUpgrade", "StaticQuant", "WeightQuant"]


class OpsetUpgrade(Pass):
    """Raise the default-domain opset to ``target`` (``onnx.version_converter``), refused unless
    onnxruntime computes the same outputs on ``feed`` (see :func:`onnxslice.rewrite.opset_upgrade.upgrade_opset`).

    Args:
        target: the opset needed.
        feed: inputs to compare on (default: deterministic random inputs).
        min_ir_version: also raise the IR version to at least this (INT4 tensors need 10).
    """

    name = "opset-upgrade"

    def __init__(self, target: int, feed: Mapping[str, np.ndarray] | None = None, min_ir_version: int = 0) -> None:
        self.target = target
        self.feed = feed
        self.min_ir_version = min_ir_version

    def call(self, model: ir.Model) -> PassResult:
        have = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
        changed = False
        if have < self.target:
            proto = upgrade_opset(view(model), self.target, self.feed)
            model = to_ir(proto)
            changed = True
        if model.ir_version < self.min_ir_version:
            model.ir_version = self.min_ir_version
            changed = True
        return PassResult(model, changed, {"opset": max(have, self.target)} if changed else {})


class WeightQuant(Pass):
    """Store weights in low precision: per-channel int8 or block-wise int4 ``DequantizeLinear`` on the
    quantized initializer, or float16 + ``CastLike`` (:mod:`onnxslice.rewrite.weight_quant`); each node
    chain writes the weight's original name, so the layers reading it are untouched.

    Args:
        decisions: layer -> ``fp16``/``int8``/``int4`` (one layer per shared weight).
        block_size: int4 block size.
    """

    name = "weight-quant"

    def __init__(self, decisions: Mapping[str, str], block_size: int = 32) -> None:
        self.decisions = {k: v for k, v in decisions.items() if v != "fp32"}
        self.block_size = block_size

    def call(self, model: ir.Model) -> PassResult:
        if not self.decisions:
            return PassResult(model, False, {})
        edits = weight_edits(view(model), self.decisions, self.block_size)
        lost = [e.weight for e in edits if e.weight not in model.graph.initializers]
        if lost:  # an earlier pass (onnxruntime's quantize_static) renamed a weight left float
            raise OnnxSliceError(f"the weight(s) {', '.join(lost)} are no longer initializers of the model "
                                 "(renamed by an earlier pass; a bug, please report)")
        replace_weights(model.graph, [(e.weight, e.initializers, e.nodes) for e in edits])
        return PassResult(model, True, {"weights": len(self.decisions)})


class MatMulNBits(Pass):
    """MatMul weights as onnxruntime's 4-bit ``MatMulNBits`` (packed by onnxruntime's own quantizer,
    :func:`onnxslice.rewrite.matmul_nbits.apply`, which reads and writes protos)."""

    name = "matmul-nbits"

    def __init__(self, weights: Sequence[str], block_size: int = 32) -> None:
        self.weights = list(weights)
        self.block_size = block_size

    def call(self, model: ir.Model) -> PassResult:
        if not self.weights:
            return PassResult(model, False, {})
        out = matmul_nbits.apply(to_proto(model), self.weights, self.block_size)
        return PassResult(to_ir(out), True, {"weights": len(self.weights)})


class StaticQuant(Pass):
    """Weights and activations quantized by onnxruntime's ``quantize_static`` (QDQ), per the plan's
    decisions (:func:`onnxslice.rewrite.static_quant.static_quantize`; it works on files, so the model
    round-trips through a temporary folder)."""

    name = "static-quant"

    def __init__(self, decisions: Mapping[str, str], calibration: Any, **options: Any) -> None:
        self.decisions = dict(decisions)
        self.calibration = calibration
        self.options = options

    def call(self, model: ir.Model) -> PassResult:
        out = static_quantize(view(model), self.decisions, self.calibration, **self.options)
        return PassResult(to_ir(out), True, {"opset": default_opset(out)})
