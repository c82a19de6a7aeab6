"""The exceptions onnxslice raises for user errors.

Every message names the node, input or file concerned and says what to do. Bugs are not
wrapped: they surface as ordinary Python exceptions with their traceback.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DataError", "ModelError", "OnnxSliceError", "PlanError", "QuantizedModelError", "UnsupportedOpError"]


class OnnxSliceError(Exception):
    """Base class of every user-facing onnxslice error."""

    exit_code: int = 2


class ModelError(OnnxSliceError):
    """The model cannot be loaded, or is not a valid ONNX graph."""


class QuantizedModelError(ModelError):
    """A pre-quantized model where a float model is needed (exit 3: unsupported model)."""

    exit_code = 3


class DataError(OnnxSliceError):
    """Input data is missing, of the wrong shape or dtype, or not finite."""


class PlanError(OnnxSliceError):
    """A pruning or quantization plan cannot be applied to the model."""


class UnsupportedOpError(OnnxSliceError):
    """No plugin provides a capability for an op.

    Attributes:
        op_type: the ONNX op type, exact spelling.
        domain: the op's domain ("" is the default ONNX domain).
        opset: the opset version of that domain in the model.
        node: the name of the node that needed the capability (may be empty).
        capability: what was asked of the plugin ("vjp", "contributions", "prune", ...).
    """

    exit_code = 3

    def __init__(self, op_type: str, domain: str, opset: int, capability: str, node: str = "", hint: str = "") -> None:
        self.op_type = op_type
        self.domain = domain
        self.opset = opset
        self.capability = capability
        self.node = node
        where = f" at node '{node}'" if node else ""
        dom = domain or "ai.onnx"
        msg = f"no '{capability}' rule for op {dom}::{op_type} (opset {opset}){where}. " + (
            hint or f"Add a '{capability}' rule for {op_type} in onnxslice/opsets, or remove the op."
        )
        super().__init__(msg)

    @classmethod
    def for_node(cls, node: Any, capability: str, hint: str = "") -> UnsupportedOpError:
        """The error for ``node`` (an ``onnxslice.Node``) lacking ``capability``."""
        return cls(node.op_type, node.domain, node.opset, capability, node=node.name, hint=hint)
