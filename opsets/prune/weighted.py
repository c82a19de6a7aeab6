"""``prune`` rules for layers (Conv, ConvTranspose, Gemm, MatMul): where groups start and end.

Asked on its output, a layer with a constant weight is a *source*: its output channels (Conv filters,
Gemm/MatMul neurons) are the group's, and its weight rows and bias entries go with them. Asked on its
data input, it is a *sink*: the matching input columns of its weight go (the next Conv's
in-channels, a Gemm's columns). A depthwise Conv passes the channels through (its filters and the
``group`` attribute shrink with them); a grouped Conv can be a source (the same number of filters
leaves each group) but not a sink.

Each rule also answers :meth:`source_ref`: the reference of its own output channels, or why the
layer cannot start a group.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..registry import REGISTRY
from .base import Context, CountEdit, Effect, Port, Ref, blocked

if TYPE_CHECKING:
    from onnxslice.model import Node

__all__ = ["ConvRule", "ConvTransposeRule", "GemmRule", "MatMulRule"]


def _bias_cut(node: Node, ctx: Context, k: int, ref: Ref) -> tuple[tuple[str, Ref], ...] | str:
    b = node.input(k)
    if not b:
        return ()
    if not ctx.is_const(b):
        return f"its bias '{b}' is computed at run time"
    shape = ctx.shape(b) or ctx.const(b).shape
    if len(shape) == 0 or shape[-1] == 1:
        return ()
    return ((b, ref.moved(len(shape) - 1, ref.offset, 1)),)


class ConvRule:
    """Conv: output channels on axis 1; weight ``[C_out, C_in/group, k...]``."""

    def _weight(self, node: Node, ctx: Context) -> tuple[int, int, int] | str:
        w = node.input(1)
        if not ctx.is_const(w):
            return f"its weight '{w}' is computed at run time"
        shape = ctx.const(w).shape
        g = int(node.attr("group", 1))
        return int(shape[0]), int(shape[1]) * g, g

    def source_ref(self, node: Node, ctx: Context) -> Ref | str:
        """Output channels of a plain or grouped Conv; depthwise Convs follow their input instead."""
        got = self._weight(node, ctx)
        if isinstance(got, str):
            return got
        c_out, c_in, g = got
        if g > 1 and g == c_in:
            return "a depthwise Conv keeps the channels of its input (pruned with the layer before it)"
        return Ref(1, 0, 1, c_out)

    def __call__(self, node: Node, ctx: Context, port: Port, ref: Ref) -> Effect:
        got = self._weight(node, ctx)
        if isinstance(got, str):
            return blocked(got)
        c_out, c_in, g = got
        side, i = port
        if (side, i) not in (("in", 0), ("out", 0)):
            return blocked(f"channels arrive on {side}put {i} (its weight or bias is computed at run time)")
        if ref.axis != 1:
            return blocked(f"the group is on axis {ref.axis}, not the channel axis")
        w = node.input(1)
        depthwise = g > 1 and g == c_in
        if depthwise:
            m = c_out // c_in  # filters per input channel (depth multiplier)
            if side == "out":
                if ref.offset % m or ref.block % m:
                    return blocked("the channels do not align with whole depthwise filters")
                out_ref, in_ref = ref, Ref(1, ref.offset // m, ref.block // m, ref.size)
            else:
                in_ref, out_ref = ref, ref.moved(1, ref.offset * m, m)
            bias = _bias_cut(node, ctx, 2, out_ref)
            if isinstance(bias, str):
                return blocked(bias)
            other = (node.outputs[0], out_ref) if side == "in" else (node.inputs[0], in_ref)
            return Effect(
                refs=(other,),
                cuts=((w, out_ref.moved(0, out_ref.offset, 1)), *bias),
                counts=(CountEdit("attr", in_ref.block, name="group"),),
            )
        if side == "in":
            if g > 1:
                return blocked(f"a grouped Conv (group={g}) ties its input channels together by group")
            return Effect(cuts=((w, ref),))
        if g > 1 and (ref.offset, ref.block, ref.size) != (0, 1, c_out):
            return blocked("a grouped Conv's filters are reached through a Concat or Flatten")
        bias = _bias_cut(node, ctx, 2, ref)
        if isinstance(bias, str):
            return blocked(bias)
        return Effect(cuts=((w, ref.moved(0, ref.offset, 1)), *bias), source=True, segments=g)


class ConvTransposeRule:
    """ConvTranspose (group 1): weight ``[C_in, C_out, k...]``."""

    def source_ref(self, node: Node, ctx: Context) -> Ref | str:
        """Output channels on axis 1."""
        w = node.input(1)
        if not ctx.is_const(w):
            return f"its weight '{w}' is computed at run time"
        if int(node.attr("group", 1)) != 1:
            return "a grouped ConvTranspose is left alone"
        return Ref(1, 0, 1, int(ctx.const(w).shape[1]))

    def __call__(self, node: Node, ctx: Context, port: Port, ref: Ref) -> Effect:
        why = self.source_ref(node, ctx)
        if isinstance(why, str):
            return blocked(why)
        side, i = port
        if (side, i) not in (("in", 0), ("out", 0)) or ref.axis != 1:
            return blocked(f"channels arrive on {side}put {i} axis {ref.axis}")
        w = node.input(1)
        if side == "in":
            return Effect(cuts=((w, ref.moved(0, ref.offset, 1)),))
        bias = _bias_cut(node, ctx, 2, ref)
        if isinstance(bias, str):
            return blocked(bias)
        return Effect(cuts=((w, ref.moved(1, ref.offset, 1)), *bias), source=True)


class GemmRule:
    """Gemm ``alpha * A' B' + beta * C`` with a constant B: neurons are columns of B'."""

    def source_ref(self, node: Node, ctx: Context) -> Ref | str:
        """Output neurons on axis 1."""
        b = node.input(1)
        if not ctx.is_const(b):
            return f"its operand B '{b}' is not a constant weight"
        shape = ctx.const(b).shape
        return Ref(1, 0, 1, int(shape[0] if node.attr("transB", 0) else shape[1]))

    def __call__(self, node: Node, ctx: Context, port: Port, ref: Ref) -> Effect:
        why = self.source_ref(node, ctx)
        if isinstance(why, str):
            return blocked(why)
        b = node.input(1)
        trans_b = int(node.attr("transB", 0))
        side, i = port
        if (side, i) == ("in", 0):
            k_axis = 0 if node.attr("transA", 0) else 1
            if ref.axis != k_axis:
                return blocked(f"the group is on the rows of A (axis {ref.axis}), not its features")
            return Effect(cuts=((b, ref.moved(1 if trans_b else 0, ref.offset, 1)),))
        if (side, i) != ("out", 0):
            return blocked(f"channels arrive on {side}put {i} (a weight or bias computed at run time)")
        if ref.axis != 1:
            return blocked("the group is on the batch axis of the output")
        bias = _bias_cut(node, ctx, 2, ref)
        if isinstance(bias, str):
            return blocked(bias)
        return Effect(cuts=((b, ref.moved(0 if trans_b else 1, ref.offset, 1)), *bias), source=True)


class MatMulRule:
    """MatMul ``x @ W`` with a constant 2-D W: neurons are the columns of W, features its rows.

    A transformer MLP (MatMul -> activation -> MatMul) is one group: hidden units leave W1's columns,
    the bias Add, the activation and W2's rows together.
    """

    def source_ref(self, node: Node, ctx: Context) -> Ref | str:
        """Output neurons on the last axis."""
        w, out = node.input(1), node.outputs[0]
        if not ctx.is_const(w):
            return "it multiplies two activations (attention) or a constant first operand"
        if ctx.const(w).ndim != 2:
            return f"its weight '{w}' is not 2-D"
        s = ctx.shape(out)
        if s is None:
            return f"the rank of '{out}' is unknown"
        return Ref(len(s) - 1, 0, 1, int(ctx.const(w).shape[1]))

    def __call__(self, node: Node, ctx: Context, port: Port, ref: Ref) -> Effect:
        got = self.source_ref(node, ctx)
        if isinstance(got, str):
            return blocked(got)
        w = node.input(1)
        side, i = port
        if (side, i) == ("in", 0):
            s = ctx.shape(node.inputs[0])
            if s is None or ref.axis != len(s) - 1:
                return blocked("the group is not on the feature (last) axis of the first operand")
            return Effect(cuts=((w, ref.moved(0, ref.offset, 1)),))
        if (side, i) != ("out", 0) or ref.axis != got.axis:
            return blocked(f"channels arrive on {side}put {i} axis {ref.axis}")
        return Effect(cuts=((w, ref.moved(1, ref.offset, 1)),), source=True)


REGISTRY.register("prune", "Conv")(ConvRule())
REGISTRY.register("prune", "ConvTranspose")(ConvTransposeRule())
REGISTRY.register("prune", "Gemm")(GemmRule())
REGISTRY.register("prune", "MatMul")(MatMulRule())
