"""``prune`` rule of LSTM, GRU and RNN: a sink for the features of ``X``; its own hidden units are left alone.

Channels that arrive on the feature axis of ``X`` (the last axis, in either ``layout``) are input columns of
``W [D, G*H, I]``: they are cut from its axis 2, and the layer before the recurrent one can be pruned.

The recurrent layer itself starts no group: a hidden unit feeds back into every gate of the next step
through ``R``, and its removal would have to shrink ``W``, ``R``, ``B``, ``P``, ``initial_h``/``initial_c``,
the ``hidden_size`` attribute and every consumer of ``Y``, ``Y_h`` and ``Y_c`` together (and the layout of
``Y [T, D, B, H]`` interleaves directions with the batch). onnxslice leaves these layers whole and says so
in the plan.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..coverage import refuses
from ..registry import REGISTRY
from .base import Context, Effect, Port, Ref, blocked

if TYPE_CHECKING:
    from onnxslice.model import Node

__all__ = ["RecurrentRule"]


class RecurrentRule:
    """LSTM/GRU/RNN: input features prune with the layer before; hidden units are left alone."""

    def source_ref(self, node: Node, ctx: Context) -> Ref | str:
        """Why the layer starts no group of its own."""
        return (
            f"its hidden units feed back into every gate through R and fix the shapes of Y, Y_h and the initial "
            f"states, so onnxslice leaves {node.op_type} layers whole"
        )

    def __call__(self, node: Node, ctx: Context, port: Port, ref: Ref) -> Effect:
        w = node.input(1)
        if port != ("in", 0):
            return blocked(str(self.source_ref(node, ctx)))
        if not ctx.is_const(w):
            return blocked(f"its weight '{w}' is computed at run time")
        shape = ctx.shape(node.inputs[0])
        if shape is None or len(shape) != 3 or ref.axis != 2:
            return blocked("the group is not on the feature (last) axis of its input X")
        return Effect(cuts=((w, ref.moved(2, ref.offset, 1)),))


REGISTRY.register("prune", ["LSTM", "GRU", "RNN"], since=7)(RecurrentRule())
refuses("prune", "LSTM GRU RNN", "its own hidden units (left alone; the layer before it prunes)", lambda n, m: True)
