"""Ops that hold no neurons: shape arithmetic, constants, control flow and the ai.onnx.ml ops skl2onnx emits.

Contributions (``contributions``) (was ``contrib/routing.py``). Routing ops: the output's CONTRIB moves to the input
element it came from.

One template for every op that only moves, copies or selects elements (Identity, Dropout, Cast,
Flatten, Reshape, Transpose, Squeeze, Unsqueeze, Concat, Split, Slice, Pad, Gather*, Expand, Tile,
DepthToSpace, SpaceToDepth, Where, and nearest Resize through ``resize.py``): the op itself is run by the ONNX
reference
evaluator on *index tensors* (element ``k`` of the data inputs holds ``k + 1``; shapes, indices, axes
and pads keep their recorded values), so its output says, per output element, which input element it
copies (0 where it reads padding). CONTRIB then moves along that map (summed where an input feeds
several outputs, as Expand does). An op that mixes elements (a linear Resize) gives fractional
indices and is refused with an :class:`UnsupportedOpError`.

At channel granularity a unit is a channel of a rank >= 3 value or a feature of a rank-2 value; each
(output unit, input unit) pair that the map links passes the output unit's CONTRIB once.

Exporters' shape subgraphs (Shape -> Gather -> Unsqueeze -> Concat on int64) hold no neurons, so the
engine never calls a rule for them; ``Shape`` and friends still have a rule that returns nothing.

Channel pruning (``prune``) (was ``prune/layout.py``). ``prune`` rules for ops that move channels: Transpose,
Squeeze/Unsqueeze, Flatten, Reshape, Concat,
and ops that are safe only away from the channel axis (Split, Slice, Pad, Resize).

Flatten and Reshape map a channel axis onto a flattened axis: channel ``c`` becomes the block of H*W
features ``c*H*W ... (c+1)*H*W - 1`` (the C*H*W feature mapping of Flatten -> Gemm). Concat along the
channel axis shifts the offset by the sizes of the inputs before it. Anything that splits or mixes the
channel axis in another way stops the group with the reason.
"""

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
