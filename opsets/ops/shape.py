"""Ops that hold no neurons: shape arithmetic, constants, control flow and the ai.onnx.ml ops skl2onnx emits."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..capabilities.info import OpInfo, register_info
from ..capabilities.prune import Context, Effect, Port, Ref, blocked
from ..registry import REGISTRY
from ..templates.routing import no_neurons

if TYPE_CHECKING:
    from onnxslice.model import Node


# -- info: static metadata ---------------------------------------------------------------------------


register_info(
    "Shape Size ConstantOfShape Range NonZero EyeLike RandomNormal RandomUniform",
    OpInfo("shape", non_differentiable=(0, 1, 2)),
)
register_info("Constant", OpInfo("shape"))
register_info("If Loop Scan", OpInfo("control"))
# ai.onnx.ml ops emitted by skl2onnx: analysable as opaque nodes (recording works; no gradients).
for _op in ("ZipMap", "LinearClassifier", "LinearRegressor", "Normalizer", "Scaler", "ArrayFeatureExtractor"):
    REGISTRY.add("info", _op, OpInfo("other"), domain="ai.onnx.ml", since=1, origin=__name__)

# -- contributions: NNSlicer -------------------------------------------------------------------------


REGISTRY.register("contributions", ["Shape", "Size", "ConstantOfShape", "Range", "NonZero", "EyeLike"])(no_neurons)

# -- prune: channel groups ---------------------------------------------------------------------------


def _shape_reader(node: Node, ctx: Context, port: Port, ref: Ref) -> Effect:
    return blocked("it reads the channel count (the computed shapes would change)")


REGISTRY.register("prune", ["Shape", "Size"])(_shape_reader)
