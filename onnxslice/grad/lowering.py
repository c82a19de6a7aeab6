"""The ONNX lowering of the VJP primitives: each primitive call emits standard ONNX nodes.

:class:`OnnxPrims` implements :class:`onnxslice.opsets.vjp.prims.Prims` over :class:`Sym` values
(a value name with the static shape and dtype it has on the recorded sample) and appends nodes and
constants to a :class:`GraphBuilder`. Only default-domain ops are emitted, so the graph runs on any
onnxruntime provider. Convolution gradients lower to ConvTranspose (input; a 1x1 Conv by the swapped
weight for pointwise layers) and to per-offset GEMMs (2-D, one group) or a Conv with the sample and
channel axes swapped (weight); MaxPool's to a second MaxPool with its ``Indices`` output and a
ScatterElements with ``reduction="add"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from onnx import helper, numpy_helper

from onnxslice.opsets.vjp.prims import ConvGeometry, NotEmittable, Prims

__all__ = ["MIN_OPSET", "GraphBuilder", "OnnxPrims", "Sym"]

#: The lowering emits opset-13 forms (axes of ReduceSum/Squeeze/Unsqueeze as inputs).
MIN_OPSET = 13

_CMP = {"<": "Less", "<=": "LessOrEqual", ">": "Greater", ">=": "GreaterOrEqual", "==": "Equal"}


@dataclass(frozen=True)
class Sym:
    """A symbolic value of the gradient graph.

    Attributes:
        name: the ONNX value name.
        shape: its static shape (on the recorded sample).
        dtype: its element type.
        const: its array when it is a constant of the graph (weights, folded constants), else None.
    """

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    const: np.ndarray | None = None


class GraphBuilder:
    """Nodes and constant initializers appended by the lowering, with fresh unique names."""

    def __init__(self, opset: int, prefix: str = "grad") -> None:
        self.opset = opset
        self.prefix = prefix
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._count = 0
        self._consts: dict[tuple[str, tuple[int, ...], bytes], str] = {}

    def fresh(self, hint: str) -> str:
        """A new value name."""
        self._count += 1
        return f"{self.prefix}/{hint}_{self._count}"

    def node(self, op: str, inputs: Sequence[str], n_out: int = 1, **attrs: Any) -> list[str]:
        """Append ``op`` and return its output names."""
        outs = [self.fresh(op) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=self.fresh(f"{op}_node"), **attrs))
        return outs

    def const(self, value: np.ndarray) -> str:
        """A constant initializer (deduplicated by content)."""
        arr = np.ascontiguousarray(value)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            name = self.fresh("const")
            self.initializers.append(numpy_helper.from_array(arr, name))
            self._consts[key] = name
        return self._consts[key]


def _onnx_type(dtype: Any) -> int:
    return int(helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))


#: Weight cotangents of 2-D convolutions with at most this many output columns (samples x output
#: positions) are lowered through a one-hot im2col Conv and one GEMM (see
#: ``OnnxPrims._conv_weight_grad_onehot``): measured faster only there (ResNet-18 at batch 8: its 4x4 maps).
ONEHOT_MAX_COLUMNS = 128
#: ... and so are those of 2-D convolutions with at most this many input channels, whatever their maps:
#: the per-offset GEMMs ``[O, N*P] x [N*P, C]`` are then matrix-vector products (LeNet-5 b32's graph, whose
#: convolutions read 1 and 6 channels: 7.2 -> 5.8 ms; neutral on the 3-channel stems of ResNet-18 and
#: EfficientNet-Lite0).
ONEHOT_MAX_CHANNELS = 16


class OnnxPrims(Prims):
    """Emits each primitive as ONNX nodes into ``builder``; values are :class:`Sym`."""

    eager = False

    def __init__(self, builder: GraphBuilder) -> None:
        self.b = builder

    # -- helpers ---------------------------------------------------------------------------------
    def _sym(self, name: str, shape: Sequence[int], dtype: Any) -> Sym:
        return Sym(name, tuple(int(s) for s in shape), np.dtype(dtype))

    def lift(self, v: Sym | float | np.ndarray, like: Sym | None = None) -> Sym:
        """A number or array as a constant Sym (numbers take ``like``'s type, else float64)."""
        if isinstance(v, Sym):
            return v
        dtype = like.dtype if like is not None and not isinstance(v, np.ndarray) else np.asarray(v).dtype
        if like is None and not isinstance(v, np.ndarray):
            dtype = np.dtype(np.float64) if isinstance(v, float) else np.asarray(v).dtype
        arr = np.asarray(v, dtype=dtype)
        return Sym(self.b.const(arr), arr.shape, arr.dtype, arr)

    def _pair(self, a: Sym | float, b: Sym | float) -> tuple[Sym, Sym]:
        sa = self.lift(a, b if isinstance(b, Sym) else None)
        sb = self.lift(b, sa)
        if sa.dtype != sb.dtype:  # numpy's promotion (float32 with float64 -> float64)
            t = np.result_type(sa.dtype, sb.dtype)
            sa, sb = self.cast(sa, t), self.cast(sb, t)
        return sa, sb

    def _binary(self, op: str, a: Sym | float, b: Sym | float, out_dtype: Any = None) -> Sym:
        sa, sb = self._pair(a, b)
        shape = np.broadcast_shapes(sa.shape, sb.shape)
        (out,) = self.b.node(op, [sa.name, sb.name])
        return self._sym(out, shape, out_dtype or sa.dtype)

    def _unary(self, op: str, a: Sym, **attrs: Any) -> Sym:
        (out,) = self.b.node(op, [a.name], **attrs)
        return self._sym(out, a.shape, a.dtype)

    def _axes(self, axes: Sequence[int]) -> str:
        return self.b.const(np.asarray(list(axes), dtype=np.int64))

    # -- introspection ---------------------------------------------------------------------------
    def shape(self, x: Sym) -> tuple[int, ...]:
        return x.shape

    def dtype(self, x: Sym) -> np.dtype[Any]:
        return x.dtype

    def value(self, x: Sym) -> np.ndarray:
        if x.const is None:
            raise NotEmittable(f"value '{x.name}' is data, not a constant")
        return x.const

    # -- elementwise -----------------------------------------------------------------------------
    def add(self, a: Sym, b: Sym | float) -> Sym:
        return self._binary("Add", a, b)

    def sub(self, a: Sym, b: Sym | float) -> Sym:
        return self._binary("Sub", a, b)

    def mul(self, a: Sym, b: Sym | float) -> Sym:
        return self._binary("Mul", a, b)

    def div(self, a: Sym, b: Sym | float) -> Sym:
        return self._binary("Div", a, b)

    def neg(self, a: Sym) -> Sym:
        return self._unary("Neg", a)

    def sqrt(self, a: Sym) -> Sym:
        return self._unary("Sqrt", a)

    def reciprocal(self, a: Sym) -> Sym:
        return self._unary("Reciprocal", a)

    def scalar_div(self, c: float, a: Sym) -> Sym:
        return self._binary("Div", self.lift(c, a), a)

    def func(self, name: str, a: Sym) -> Sym:
        return self._unary(name.capitalize(), a)

    def power(self, a: Sym, b: Sym | float) -> Sym:
        return self._binary("Pow", a, b)

    def maximum(self, a: Sym, b: Sym) -> Sym:
        return self._binary("Max", a, b)

    def compare(self, op: str, a: Sym, b: Sym | float) -> Sym:
        return self._binary(_CMP[op], a, b, np.bool_)

    def logical(self, op: str, a: Sym, b: Sym | None = None) -> Sym:
        if op == "not":
            return self._unary("Not", a)
        assert b is not None
        return self._binary("And" if op == "and" else "Or", a, b, np.bool_)

    def where(self, cond: Sym, a: Sym | float, b: Sym | float) -> Sym:
        sa, sb = self._pair(a, b)
        shape = np.broadcast_shapes(cond.shape, sa.shape, sb.shape)
        (out,) = self.b.node("Where", [cond.name, sa.name, sb.name])
        return self._sym(out, shape, sa.dtype)

    def cast(self, x: Sym, dtype: Any) -> Sym:
        if np.dtype(dtype) == x.dtype:
            return x
        (out,) = self.b.node("Cast", [x.name], to=_onnx_type(dtype))
        return self._sym(out, x.shape, dtype)

    # -- reductions ------------------------------------------------------------------------------
    def _reduced(self, x: Sym, axes: Sequence[int], keepdims: bool) -> tuple[int, ...]:
        ax = {a % len(x.shape) for a in axes} if x.shape else set()
        if keepdims:
            return tuple(1 if i in ax else d for i, d in enumerate(x.shape))
        return tuple(d for i, d in enumerate(x.shape) if i not in ax)

    def reduce_sum(self, x: Sym, axes: Sequence[int], keepdims: bool = False, acc: Any = None) -> Sym:
        if acc is not None:
            x = self.cast(x, acc)
        if not len(axes):
            return x
        (out,) = self.b.node("ReduceSum", [x.name, self._axes(axes)], keepdims=int(keepdims))
        return self._sym(out, self._reduced(x, axes, keepdims), x.dtype)

    def dot_sum(self, a: Sym, b: Sym, axes: Sequence[int], acc: Any) -> Sym:
        return self.reduce_sum(self.mul(self.cast(a, acc), self.cast(b, acc)), axes)

    def reduce_max(self, x: Sym, axes: Sequence[int], keepdims: bool = False) -> Sym:
        if self.b.opset >= 18:
            (out,) = self.b.node("ReduceMax", [x.name, self._axes(axes)], keepdims=int(keepdims))
        else:
            (out,) = self.b.node("ReduceMax", [x.name], axes=list(axes), keepdims=int(keepdims))
        return self._sym(out, self._reduced(x, axes, keepdims), x.dtype)

    # -- layout ----------------------------------------------------------------------------------
    def reshape(self, x: Sym, shape: Sequence[int]) -> Sym:
        static = np.empty(x.shape, dtype=np.bool_).reshape(tuple(shape)).shape  # resolves -1
        if static == x.shape:
            return x
        (out,) = self.b.node("Reshape", [x.name, self.b.const(np.asarray(static, dtype=np.int64))])
        return self._sym(out, static, x.dtype)

    def transpose(self, x: Sym, perm: Sequence[int]) -> Sym:
        perm = [int(p) for p in perm]
        if perm == list(range(len(perm))):
            return x
        (out,) = self.b.node("Transpose", [x.name], perm=perm)
        return self._sym(out, tuple(x.shape[p] for p in perm), x.dtype)

    def broadcast_to(self, x: Sym, shape: Sequence[int]) -> Sym:
        if tuple(shape) == x.shape:
            return x
        (out,) = self.b.node("Expand", [x.name, self.b.const(np.asarray(list(shape), dtype=np.int64))])
        return self._sym(out, tuple(shape), x.dtype)

    def slice(self, x: Sym, axis: int, start: int, end: int) -> Sym:
        return self._slice(x, [axis], [start], [end])

    def _slice(self, x: Sym, axes: Sequence[int], starts: Sequence[int], ends: Sequence[int]) -> Sym:
        if all(s == 0 and e == x.shape[a] for a, s, e in zip(axes, starts, ends, strict=True)):
            return x
        i64 = np.int64
        (out,) = self.b.node(
            "Slice",
            [x.name, self.b.const(np.asarray(starts, i64)), self.b.const(np.asarray(ends, i64)),
             self.b.const(np.asarray(axes, i64))],
        )
        shape = list(x.shape)
        for a, s, e in zip(axes, starts, ends, strict=True):
            shape[a] = e - s
        return self._sym(out, shape, x.dtype)

    # -- linear algebra and windows --------------------------------------------------------------
    def matmul(self, a: Sym, b: Sym, trans_a: bool = False, trans_b: bool = False) -> Sym:
        if len(a.shape) == 2 and len(b.shape) == 2:
            m = a.shape[1] if trans_a else a.shape[0]
            n = b.shape[0] if trans_b else b.shape[1]
            (out,) = self.b.node("Gemm", [a.name, b.name], transA=int(trans_a), transB=int(trans_b))
            return self._sym(out, (m, n), a.dtype)
        if trans_a:
            a = self.transpose(a, (*range(len(a.shape) - 2), len(a.shape) - 1, len(a.shape) - 2))
        if trans_b:
            b = self.transpose(b, (*range(len(b.shape) - 2), len(b.shape) - 1, len(b.shape) - 2))
        shape = (*np.broadcast_shapes(a.shape[:-2], b.shape[:-2]), a.shape[-2], b.shape[-1])
        (out,) = self.b.node("MatMul", [a.name, b.name])
        return self._sym(out, shape, a.dtype)

    def place(self, x: Sym, begin: Sequence[int], length: Sequence[int]) -> Sym:
        r = len(begin)
        ends = [min(b + n, L) for b, n, L in zip(begin, x.shape[2:], length, strict=True)]
        src_start = [max(-b, 0) for b in begin]
        src_end = [e - b for e, b in zip(ends, begin, strict=True)]
        cut = self._slice(x, list(range(2, 2 + r)), src_start, src_end)
        lo = [max(b, 0) for b in begin]
        hi = [L - e for L, e in zip(length, ends, strict=True)]
        if not any(lo) and not any(hi):
            return cut
        pads = [0, 0, *lo, 0, 0, *hi]
        (p,) = self.b.node("Pad", [cut.name, self.b.const(np.asarray(pads, np.int64))])
        return self._sym(p, (*x.shape[:2], *length), x.dtype)

    def conv(self, x: Sym, w: Sym, out_shape: Sequence[int], geom: ConvGeometry) -> Sym:
        r = len(geom.kernel)
        (y,) = self.b.node(
            "Conv", [x.name, w.name], strides=list(geom.strides), dilations=list(geom.dilations),
            group=geom.groups, pads=[0] * (2 * r), kernel_shape=list(geom.kernel),
        )
        sp = [(n - ((k - 1) * d + 1)) // s + 1 for n, k, d, s in
              zip(x.shape[2:], geom.kernel, geom.dilations, geom.strides, strict=True)]
        return self.place(self._sym(y, (x.shape[0], w.shape[0], *sp), x.dtype), [0] * r, list(out_shape[2:]))

    def conv_input_grad(self, g: Sym, w: Sym, x_shape: Sequence[int], geom: ConvGeometry) -> Sym:
        """ConvTranspose without pads (the full padded-input cotangent), then cropped to the input.

        A 1x1, stride-1, unpadded, one-group convolution's input cotangent is a 1x1 Conv of ``g`` by the
        weight with its two channel axes swapped (onnxruntime runs it as one GEMM per sample with no
        col2im pass: 1.1-1.9x faster than its ConvTranspose on EfficientNet-Lite0's pointwise layers).
        """
        r = len(geom.kernel)
        if (geom.groups == 1 and all(k == 1 for k in geom.kernel) and all(s == 1 for s in geom.strides)
                and not any(geom.begin) and list(x_shape[2:]) == list(g.shape[2:])):
            wt = self.transpose(w, (1, 0, *range(2, 2 + r)))
            (dx,) = self.b.node("Conv", [g.name, wt.name], kernel_shape=[1] * r, pads=[0] * (2 * r))
            return self._sym(dx, x_shape, g.dtype)
        (full,) = self.b.node(
            "ConvTranspose", [g.name, w.name], strides=list(geom.strides), dilations=list(geom.dilations),
            group=geom.groups, pads=[0] * (2 * r), kernel_shape=list(geom.kernel),
        )
        fsp = [(o - 1) * s + (k - 1) * d + 1 for o, s, k, d in
               zip(g.shape[2:], geom.strides, geom.kernel, geom.dilations, strict=True)]
        fs = self._sym(full, (g.shape[0], x_shape[1], *fsp), g.dtype)
        in_sp = list(x_shape[2:])
        ends = [min(b + i, f) for b, i, f in zip(geom.begin, in_sp, fsp, strict=True)]
        out = self._slice(fs, list(range(2, 2 + r)), list(geom.begin), ends)
        short = [b + i - e for b, i, e in zip(geom.begin, in_sp, ends, strict=True)]
        if any(short):  # input positions no window reaches get a zero cotangent
            pads = [0] * (2 + r) + [0, 0] + short
            (p,) = self.b.node("Pad", [out.name, self.b.const(np.asarray(pads, np.int64))])
            out = self._sym(p, x_shape, g.dtype)
        return out

    def conv_weight_grad(self, x: Sym, g: Sym, w_shape: Sequence[int], geom: ConvGeometry, keep: bool = False) -> Sym:
        """A Conv of the input by the cotangent with sample and channel axes swapped (strides and dilations swap)."""
        if keep:
            raise NotEmittable("per-sample weight gradients are not emitted")
        if geom.groups == 1 and len(x.shape) == 4 and min(*geom.begin, *geom.end) >= 0:
            if x.shape[0] * int(np.prod(g.shape[2:])) <= ONEHOT_MAX_COLUMNS or x.shape[1] <= ONEHOT_MAX_CHANNELS:
                return self._conv_weight_grad_onehot(x, g, geom)
            return self._conv_weight_grad_im2col(x, g, geom)
        n, c = x.shape[:2]
        o = g.shape[1]
        sp = list(x.shape[2:])
        r = len(sp)
        groups = geom.groups
        cg = c // groups
        xg = self.reshape(x, (n, groups, cg, *sp))
        xt = self.transpose(xg, (2, 1, 0, *range(3, 3 + r)))  # [Cg, G, N, *sp]
        xin = self.reshape(xt, (cg, groups * n, *sp))
        gt = self.transpose(g, (1, 0, *range(2, 2 + r)))  # [O, N, *out]
        ksp = [
            (i + b + e - ((q - 1) * s + 1)) // d + 1
            for i, b, e, q, s, d in zip(sp, geom.begin, geom.end, g.shape[2:], geom.strides, geom.dilations,
                                        strict=True)
        ]
        (dw,) = self.b.node(
            "Conv", [xin.name, gt.name], strides=list(geom.dilations), dilations=list(geom.strides),
            pads=[*geom.begin, *geom.end], group=groups, kernel_shape=list(g.shape[2:]),
        )
        dws = self._sym(dw, (cg, o, *ksp), x.dtype)
        dws = self._slice(dws, list(range(2, 2 + r)), [0] * r, list(geom.kernel))
        return self.transpose(dws, (1, 0, *range(2, 2 + r)))

    def _conv_weight_grad_onehot(self, x: Sym, g: Sym, geom: ConvGeometry) -> Sym:
        """2-D, one group, few output positions: the im2col matrix from one grouped Conv whose one-hot kernels
        each pick one input channel at one kernel offset, then a single GEMM ``[O, N*P] x [C*K, N*P]^T``.

        On small maps the per-offset GEMMs of :meth:`_conv_weight_grad_im2col` are too small to pay for
        their calls: on ResNet-18's 4x4 layers at batch 8 this takes 7.5 ms against 10.4; on larger maps
        it is slower (its im2col copy is transposed once more), hence :data:`ONEHOT_MAX_COLUMNS`; where the
        input has few channels the per-offset GEMMs are matrix-vector products (:data:`ONEHOT_MAX_CHANNELS`).
        """
        n, c = x.shape[:2]
        o, out = g.shape[1], g.shape[2:]
        kernel = list(geom.kernel)
        k = int(np.prod(kernel))
        p = int(np.prod(out))
        eye = np.eye(k, dtype=x.dtype).reshape(1, k, *kernel)
        onehot = self.lift(np.ascontiguousarray(np.broadcast_to(eye, (c, k, *kernel))).reshape(c * k, 1, *kernel))
        (col,) = self.b.node(
            "Conv", [x.name, onehot.name], group=c, kernel_shape=kernel, pads=[*geom.begin, *geom.end],
            strides=list(geom.strides), dilations=list(geom.dilations),
        )
        col_s = self._sym(col, (n, c * k, *out), x.dtype)
        if o <= p:
            # fewer output channels than positions: per sample [C*K, P] x [P, O], summed over the samples,
            # transposes the small cotangent instead of the im2col matrix (LeNet-5 b32's two convolutions,
            # 6 and 16 channels on 784 and 100 positions)
            gn = self.transpose(self.reshape(g, (n, o, p)), (0, 2, 1))  # [N, P, O]
            per = self.matmul(self.reshape(col_s, (n, c * k, p)), gn)  # [N, C*K, O]
            return self.reshape(self.transpose(self.reduce_sum(per, (0,)), (1, 0)), (o, c, *kernel))
        cols = self.reshape(self.transpose(col_s, (1, 0, 2, 3)), (c * k, n * p))
        gt = self.reshape(self.transpose(g, (1, 0, 2, 3)), (o, n * p))  # [O, N*P]
        (prod,) = self.b.node("Gemm", [gt.name, cols.name], transB=1)  # [O, C*K]
        return self.reshape(self._sym(prod, (o, c * k), x.dtype), (o, c, *kernel))

    def _conv_weight_grad_im2col(self, x: Sym, g: Sym, geom: ConvGeometry) -> Sym:
        """2-D, one group: per kernel offset, one GEMM ``[O, N*P] x [C, N*P]^T`` of the cotangent by that offset's
        strided window of the padded input (channels first), instead of the axis-swapped Conv whose kernel is the
        whole cotangent image (see docs/gradients.md). The windows are never concatenated: each one lives only
        until its GEMM, which keeps the peak memory of the graph down."""
        n, c = x.shape[:2]
        o, oh, ow = g.shape[1], g.shape[2], g.shape[3]
        kh, kw = geom.kernel
        sh, sw = geom.strides
        dh, dw = geom.dilations
        i64 = np.int64
        xt = self.transpose(x, (1, 0, 2, 3))  # [C, N, H, W]
        xp = xt.name
        if any(geom.begin) or any(geom.end):
            pads = self.b.const(np.asarray([0, 0, *geom.begin, 0, 0, *geom.end], i64))
            (xp,) = self.b.node("Pad", [xt.name, pads])
        axes = self.b.const(np.asarray([2, 3], i64))
        steps = self.b.const(np.asarray([sh, sw], i64))
        flat = self.b.const(np.asarray([c, n * oh * ow], i64))
        gt = self.reshape(self.transpose(g, (1, 0, 2, 3)), (o, n * oh * ow))  # [O, N*P]
        last = self.b.const(np.asarray([2], i64))
        parts = []
        for a in range(kh):
            for b_ in range(kw):
                starts = self.b.const(np.asarray([a * dh, b_ * dw], i64))
                ends = self.b.const(np.asarray([a * dh + (oh - 1) * sh + 1, b_ * dw + (ow - 1) * sw + 1], i64))
                full = (a * dh == 0 and b_ * dw == 0 and sh == sw == 1 and xt.shape[2:] == (oh, ow)
                        and not (any(geom.begin) or any(geom.end)))
                (win,) = [xp] if full else self.b.node("Slice", [xp, starts, ends, axes, steps])
                (col,) = self.b.node("Reshape", [win, flat])  # [C, N*P]
                (prod,) = self.b.node("Gemm", [gt.name, col], transB=1)  # [O, C]
                parts.append(self.b.node("Unsqueeze", [prod, last])[0] if kh * kw > 1 else prod)
        if kh * kw == 1:
            return self.reshape(self._sym(parts[0], (o, c), x.dtype), (o, c, 1, 1))
        (stack,) = self.b.node("Concat", parts, axis=2)  # [O, C, K]
        return self.reshape(self._sym(stack, (o, c, kh * kw), x.dtype), (o, c, kh, kw))

    def window_sum_grad(self, g: Sym, x_shape: Sequence[int], geom: ConvGeometry) -> Sym:
        """A depthwise ConvTranspose of ``g`` by a kernel of ones."""
        c = x_shape[1]
        ones = self.lift(np.ones((c, 1, *geom.kernel), dtype=g.dtype))
        depthwise = ConvGeometry(geom.kernel, geom.strides, geom.dilations, geom.begin, geom.end, geom.length, c)
        return self.conv_input_grad(g, ones, x_shape, depthwise)

    def max_pool_grad(self, x: Sym, y: Sym, g: Sym, geom: ConvGeometry) -> Sym:
        """MaxPool again with its ``Indices``, then the cotangent scattered (added) at those indices."""
        if self.b.opset < 16:
            raise NotEmittable("MaxPool's cotangent needs ScatterElements with reduction='add' (opset 16)")
        sp, osp = x.shape[2:], y.shape[2:]
        floor = [(i + b + e - ((k - 1) * d + 1)) // s + 1 for i, b, e, k, d, s in
                 zip(sp, geom.begin, geom.end, geom.kernel, geom.dilations, geom.strides, strict=True)]
        ceil = int(list(floor) != list(osp))
        _, idx = self.b.node(
            "MaxPool", [x.name], n_out=2, kernel_shape=list(geom.kernel), strides=list(geom.strides),
            dilations=list(geom.dilations), pads=[*geom.begin, *geom.end], ceil_mode=ceil,
        )
        total = int(np.prod(x.shape))
        flat_shape = self.b.const(np.asarray([1, -1], np.int64))
        (fi,) = self.b.node("Reshape", [idx, flat_shape])
        (fg,) = self.b.node("Reshape", [g.name, flat_shape])
        zeros = self.b.const(np.zeros((1, total), dtype=x.dtype))
        (sc,) = self.b.node("ScatterElements", [zeros, fi, fg], axis=1, reduction="add")
        return self.reshape(self._sym(sc, (1, total), x.dtype), x.shape)


def tensor_type(dtype: Any) -> int:
    """The ONNX element type of a numpy dtype."""
    return _onnx_type(dtype)

