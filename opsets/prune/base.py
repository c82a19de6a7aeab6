"""The values ``prune`` rules exchange: channel references, cuts, count edits and effects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

__all__ = ["Context", "CountEdit", "Effect", "Port", "Ref", "blocked", "prod"]

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
