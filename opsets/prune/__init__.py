"""``prune`` rules: how a channel selection on one tensor of a node propagates to its other tensors.

A rule is a pure function ``rule(node, ctx, port, ref) -> Effect``: given that a group of channels lives
at ``ref`` in the tensor at ``port`` of ``node``, it says which other values of the node carry the same
channels, which initializers must be sliced with them, which channel counts (attributes, shape
constants) change, whether the node is a prunable layer whose output channels define the group, or why
the channels cannot be removed safely there. Rules never edit a graph; the channel-group walk
(:mod:`onnxslice.rewrite.groups`) and the prune pass own order and edits.
"""

from __future__ import annotations

from .base import Context, CountEdit, Effect, Port, Ref, blocked

__all__ = ["Context", "CountEdit", "Effect", "Port", "Ref", "blocked"]
