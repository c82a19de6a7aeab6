"""The VJP rule protocol and the templates op families are built from.

A VJP rule reads a node, its recorded input and output arrays and the cotangents of its outputs, and
returns one cotangent per node input (``None`` where no gradient flows). Rules are pure: they never
touch the graph, the registry or any shared state. The reverse walk (``onnxslice.grad``) owns order
and accumulation.

Per-sample mode: when ``ctx.per_sample[i]`` is set, input ``i`` is batch-independent (a weight, or a
value computed from weights only) and the caller wants its cotangent for every sample separately,
shape ``[N, *shape]``. Rules registered with ``per_sample=True`` handle that natively (batched
einsums); for other rules the engine slices the batch and calls the rule sample by sample.

Rules are registered with :func:`vjp` (a function of the context) or, for rules written against the
primitives, :func:`onnxslice.opsets.vjp.eager.prim_vjp`. The templates op families share (unary gates,
routing, broadcasting) are in :mod:`onnxslice.opsets.templates`; the one ``unbroadcast`` is
:func:`onnxslice.opsets.broadcast.unbroadcast`, re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxslice.errors import UnsupportedOpError

from ..broadcast import PerSampleUnsupported, unbroadcast
from ..registry import REGISTRY

if TYPE_CHECKING:
    from onnxslice.model import Node


__all__ = [
    "Grads",
    "PerSampleUnsupported",
    "VjpContext",
    "VjpFn",
    "VjpRule",
    "int_list",
    "register",
    "unbroadcast",
    "vjp",
]

Grads = list[np.ndarray | None]


@dataclass
class VjpContext:
    """Everything a VJP rule may read about one node of one recorded forward pass.

    Attributes:
        node: the node.
        ins: input arrays in node order (``None`` for omitted optional inputs).
        outs: output arrays in node order (``None`` where an output was not recorded).
        out_grads: cotangent of each output (``None``: no gradient reaches that output).
        needs: which inputs the caller wants a cotangent for (skip the work for the others).
        per_sample: which inputs want a per-sample cotangent ``[N, *shape]`` (see module docstring).
    """

    node: Node
    ins: Sequence[np.ndarray | None]
    outs: Sequence[np.ndarray | None]
    out_grads: Sequence[np.ndarray | None]
    needs: Sequence[bool]
    per_sample: Sequence[bool] = field(default_factory=tuple)

    def attr(self, name: str, default: Any = None) -> Any:
        """The node attribute ``name`` (decoded), or ``default``."""
        return self.node.attr(name, default)

    def x(self, i: int) -> np.ndarray:
        """Input ``i``; raises when it is omitted."""
        v = self.ins[i] if i < len(self.ins) else None
        if v is None:
            raise ValueError(f"{self.node}: input {i} is omitted")
        return v

    def has(self, i: int) -> bool:
        """Whether input ``i`` is present."""
        return i < len(self.ins) and self.ins[i] is not None

    def need(self, i: int) -> bool:
        """Whether the caller wants the cotangent of input ``i``."""
        return i < len(self.needs) and bool(self.needs[i])

    def keep(self, i: int) -> bool:
        """Whether input ``i`` wants a per-sample cotangent."""
        return i < len(self.per_sample) and bool(self.per_sample[i])

    def g(self, k: int = 0) -> np.ndarray:
        """Cotangent of output ``k`` (zeros when none reaches it)."""
        g = self.out_grads[k] if k < len(self.out_grads) else None
        if g is not None:
            return g
        y = self.outs[k] if k < len(self.outs) else None
        if y is None:
            raise ValueError(f"{self.node}: output {k} has neither a cotangent nor a recorded value")
        return np.zeros_like(y)

    def y(self, k: int = 0) -> np.ndarray:
        """Output ``k``; raises when it was not recorded."""
        v = self.outs[k] if k < len(self.outs) else None
        if v is None:
            raise ValueError(f"{self.node}: output {k} was not recorded")
        return v

    def unsupported(self, why: str) -> UnsupportedOpError:
        """An error for a configuration of this op the rule does not differentiate."""
        n = self.node
        return UnsupportedOpError.for_node(n, "vjp", f"{why}; pass exact=False to use finite differences.")


VjpFn = Callable[[VjpContext], Grads]


@dataclass(frozen=True)
class VjpRule:
    """A registered VJP: ``fn(ctx) -> one cotangent per input``.

    Attributes:
        fn: the rule.
        per_sample: ``fn`` honours ``ctx.per_sample`` itself.
        name: a readable name (the function's).
    """

    fn: VjpFn
    per_sample: bool = False
    name: str = ""

    def __call__(self, ctx: VjpContext) -> Grads:
        return self.fn(ctx)


def vjp(
    op_types: str | Iterable[str],
    *,
    since: int = 1,
    until: int | None = None,
    domain: str = "",
    per_sample: bool = False,
) -> Callable[[VjpFn], VjpFn]:
    """Register ``fn`` as the VJP of ``op_types`` (space-separated or a list) for opsets ``since..until``."""
    names = op_types.split() if isinstance(op_types, str) else list(op_types)

    def deco(fn: VjpFn) -> VjpFn:
        register(names, VjpRule(fn, per_sample, fn.__name__), since=since, until=until, domain=domain)
        return fn

    return deco


def register(
    op_types: Iterable[str], rule: VjpRule, *, since: int = 1, until: int | None = None, domain: str = ""
) -> VjpRule:
    """Register a prepared :class:`VjpRule` (from a template) for several op types."""
    for op in op_types:
        REGISTRY.add(
            "vjp", op, rule, domain=domain, since=since, until=until, origin=f"{rule.fn.__module__}.{rule.name}"
        )
    return rule


def int_list(v: Any) -> list[int]:
    """An attribute or a recorded integer tensor as a list of Python ints."""
    return [int(a) for a in np.asarray(v).reshape(-1)]
