"""``prune`` rules that stop a channel group with the reason (instead of "no prune rule").

- GroupNormalization normalises over groups of channels: removing a channel changes the statistics of its
  whole group (and ``num_groups`` must keep dividing the channels).
- DepthToSpace/SpaceToDepth move channels into space and back: a channel of one side is ``blocksize^2``
  channels or positions of the other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..coverage import refuses
from ..registry import REGISTRY
from .base import Context, Effect, Port, Ref, blocked

if TYPE_CHECKING:
    from onnxslice.model import Node

_WHY = {
    "GroupNormalization": "it normalises over groups of channels (removing one changes its group's statistics)",
    "DepthToSpace": "it moves blocks of blocksize^2 channels into space",
    "SpaceToDepth": "it moves space into blocks of blocksize^2 channels",
}


def left_alone(node: Node, ctx: Context, port: Port, ref: Ref) -> Effect:
    """Stop the group at this node with the op's reason."""
    return blocked(_WHY[node.op_type])


for _op, _why in _WHY.items():
    REGISTRY.register("prune", _op)(left_alone)
    refuses("prune", _op, _why, lambda n, m: True)
