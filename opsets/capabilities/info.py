"""Static per-op metadata (the ``info`` capability): which inputs are weights, which op family.

Analyses read this to find SAfER layers (nodes that own a weight initializer), to know which inputs
carry no gradient (shapes, indices, axes) and which ops only move data. Nothing here reads tensors.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..registry import REGISTRY

__all__ = [
    "OpInfo",
    "OutAxis",
    "default_info",
    "register_info",
]

#: ``out_axis(attr, weight_rank, weight_input)``: the axis of a layer's weight that indexes its output
#: channels (neurons), from the node's attribute getter ``attr(name, default)``, the weight's rank and
#: which node input the weight is. Each weighted family defines its own (:mod:`onnxslice.opsets.ops`).
OutAxis = Callable[[Callable[[str, Any], Any], int, int], int]


@dataclass(frozen=True)
class OpInfo:
    """Static facts about an op type.

    Attributes:
        family: op family ("weighted", "elementwise", "binary", "layout", "pool", "norm", "reduce",
            "shape", "control", "other"); used for summaries and templates.
        layer_weights: candidate input indices of the main weight, in order of preference; the node
            is a *layer* when the first candidate fed by an initializer exists.
        bias_input: index of the bias input, if the op has one.
        param_inputs: further inputs that are trained parameters when they are initializers (BN scale
            and shift, a recurrent layer's recurrence weights, ...).
        constant_inputs: float inputs that frameworks hold as constants, never train, even when they are
            initializers (BatchNormalization's running statistics, Clip's bounds); differentiable all the
            same, but not among a model's parameters (:attr:`onnxslice.model.Model.parameter_names`).
        non_differentiable: input indices that carry no gradient (shapes, indices, axes, sizes).
        layout_only: the op only moves, copies or selects elements (routing in NNSlicer terms).
        straight_through: gradients pass through its integer values by the straight-through estimator
            (quantize/dequantize ops; see ``ops/quantize.py``).
        out_axis: for layers, the family's :data:`OutAxis` function (None: axis 0, as for Conv).
        fault_inputs: inputs, in order of preference, whose weight may be computed from a stored integer
            initializer (a ``DequantizeLinear`` subgraph) and so be a fault site (:mod:`onnxslice.fault_sites`).
    """

    family: str
    layer_weights: tuple[int, ...] = ()
    bias_input: int | None = None
    param_inputs: tuple[int, ...] = ()
    constant_inputs: tuple[int, ...] = ()
    non_differentiable: tuple[int, ...] = ()
    layout_only: bool = False
    straight_through: bool = False
    out_axis: OutAxis | None = None
    fault_inputs: tuple[int, ...] = ()

    def weight_out_axis(self, attr: Callable[[str, Any], Any], rank: int, weight_input: int) -> int:
        """The axis of the layer weight (input ``weight_input``, of rank ``rank``) that indexes output channels."""
        return 0 if self.out_axis is None else self.out_axis(attr, rank, weight_input)

    @property
    def may_be_layer(self) -> bool:
        """Whether nodes of this op can own a layer weight."""
        return bool(self.layer_weights)


def default_info() -> OpInfo:
    """Info for an op with no registered metadata: no weights, nothing known."""
    return OpInfo(family="other")


def register_info(ops: str, info: OpInfo, since: int = 1) -> None:
    """Register ``info`` as the metadata of every op type in ``ops`` (space-separated) from opset ``since``."""
    origin = sys._getframe(1).f_globals.get("__name__", __name__)  # the family module, for overlap errors
    for op in ops.split():
        REGISTRY.add("info", op, info, since=since, origin=origin)
