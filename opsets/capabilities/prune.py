"""The values ``prune`` rules exchange: channel references, cuts, count edits and effects."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

if TYPE_CHECKING:
    from onnxslice.model import Node

__all__ = [
    "Context",
    "CountEdit",
    "Dim",
    "Effect",
    "Port",
    "Ref",
    "Rule",
    "bias_cut",
    "blocked",
    "const_input",
    "left_alone",
    "prod",
    "rank_of",
]


#: ``("in", i)`` or ``("out", i)``: which tensor of the node a reference arrives on.
Port = tuple[Literal["in", "out"], int]


Dim = int | str | None


@dataclass(frozen=True)
class Ref:
    """Where a group of ``size`` channels lives along one axis of a tensor.

    Channel ``c`` of the group occupies indices ``offset + c*block ... offset + (c+1)*block - 1``
    along ``axis``: ``block`` is 1 for a plain channel axis and H*W after a Flatten; ``offset`` is
    non-zero inside a Concat.
    """

    axis: int
    offset: int
    block: int
    size: int

    def indices(self, channels: np.ndarray) -> np.ndarray:
        """The tensor indices along ``axis`` of the given group channels."""
        c = np.asarray(channels, dtype=np.int64)
        return (self.offset + c[:, None] * self.block + np.arange(self.block)[None, :]).reshape(-1)

    def moved(self, axis: int, offset: int | None = None, scale: int = 1) -> Ref:
        """The same channels on another axis, with the offset shifted and the block scaled."""
        return Ref(axis, self.offset * scale if offset is None else offset, self.block * scale, self.size)

    @property
    def end(self) -> int:
        """One past the last index the group occupies."""
        return self.offset + self.size * self.block


@dataclass(frozen=True)
class CountEdit:
    """A channel count stored in the node that shrinks with the group.

    ``kind="attr"``: attribute ``name`` (e.g. Conv ``group``); ``kind="input"``: entry ``position`` of the
    constant node input ``index`` (e.g. a Reshape shape). Each removed group channel lowers the count
    by ``per_channel``.
    """

    kind: Literal["attr", "input"]
    per_channel: int
    name: str = ""
    index: int = 0
    position: int = 0


@dataclass(frozen=True)
class Effect:
    """What a rule says about one node for one channel reference.

    Attributes:
        refs: other values of the node that carry the same channels, with where they live.
        cuts: initializers to slice with the channels (initializer name, reference in its axes).
        counts: channel counts stored in the node that shrink.
        source: the node is a layer whose output channels are the group's (a prunable layer).
        segments: the selection must remove the same number of channels from each of this many
            equal parts (grouped Conv).
        blocked: why the channels cannot be removed safely here (None when they can).
    """

    refs: tuple[tuple[str, Ref], ...] = ()
    cuts: tuple[tuple[str, Ref], ...] = ()
    counts: tuple[CountEdit, ...] = ()
    source: bool = False
    segments: int = 1
    blocked: str | None = None


def blocked(reason: str) -> Effect:
    """An effect that stops the group: its channels stay."""
    return Effect(blocked=reason)


def left_alone(reason: str) -> Rule:
    """A rule for an op whose channels are never removed: it stops every group with ``reason``."""

    def rule(node: Node, ctx: Context, port: Port, ref: Ref) -> Effect:
        return blocked(reason)

    rule.__name__ = rule.__qualname__ = "left_alone"
    return rule


def prod(dims: tuple[Dim, ...] | list[Dim]) -> int | None:
    """Product of static dims, None if any is unknown."""
    out = 1
    for d in dims:
        if not isinstance(d, int):
            return None
        out *= d
    return out


class Context(Protocol):
    """Read-only facts a rule may ask about the model."""

    def shape(self, value: str) -> tuple[Dim, ...] | None:
        """Static shape of ``value`` (dims may be symbolic or None), None when unknown."""

    def is_const(self, value: str) -> bool:
        """Whether ``value`` is an initializer."""

    def const(self, value: str) -> np.ndarray:
        """The initializer ``value``."""

    def is_graph_output(self, value: str) -> bool:
        """Whether ``value`` is a model output."""


Rule = Callable[["Node", Context, Port, Ref], Effect]


def bias_cut(node: Node, ctx: Context, k: int, ref: Ref) -> tuple[tuple[str, Ref], ...] | str:
    """The cut of bias input ``k`` with the output channels ``ref``: () when absent or scalar, why not when computed."""
    b = node.input(k)
    if not b:
        return ()
    if not ctx.is_const(b):
        return f"its bias '{b}' is computed at run time"
    shape = ctx.shape(b) or ctx.const(b).shape
    if len(shape) == 0 or shape[-1] == 1:
        return ()
    return ((b, ref.moved(len(shape) - 1, ref.offset, 1)),)


def rank_of(ctx: Context, value: str) -> int | None:
    """The rank of ``value`` when its shape is known, else None."""
    s = ctx.shape(value)
    return None if s is None else len(s)


def const_input(node: Node, ctx: Context, k: int) -> np.ndarray | str | None:
    """The constant node input ``k``, None when omitted, or why it is not a constant."""
    v = node.input(k)
    if not v:
        return None
    if not ctx.is_const(v):
        return f"its input {k} ('{v}') is computed at run time"
    return np.asarray(ctx.const(v))
