"""The float view of a pre-quantized model: integer ops become float ops, quantized weights float weights.

Used by :func:`onnxslice.model.load` with ``dequantize=True`` (the analysis verbs). What changes:

- ``DequantizeLinear`` of a constant integer tensor (the weights and biases of a QDQ model) becomes the
  float initializer it computes;
- ``QLinearConv``, ``QLinearMatMul``, ``com.microsoft::QGemm`` and ``QLinearGlobalAveragePool`` become
  ``DequantizeLinear`` of their input, the float op on dequantized weights (bias: ``B * x_scale *
  w_scale``), and ``QuantizeLinear`` of the result (when the op produced integers);
- ``ConvInteger`` / ``MatMulInteger`` (``quantize_dynamic``) become ``Conv`` / ``MatMul`` of
  ``DequantizeLinear(x, 1, x_zero_point)`` (that is ``x - x_zero_point`` in float) with the weight
  ``w - w_zero_point`` in float, so the value equals the integer op's and the scale multiplication that
  follows is untouched (the layer's weight is integer-valued; its scale sits in that ``Mul``);
- ``com.microsoft::DynamicQuantizeLSTM`` becomes ``LSTM`` with dequantized (and transposed) ``W``, ``R``.

Quantize-dequantize of activations (``QuantizeLinear``, ``DynamicQuantizeLinear``, ``DequantizeLinear`` of
a computed value) stays: gradients go through it with the straight-through estimator of those ops'
VJP rules. Every quantized weight thus becomes a float weight that the analyses see as a layer. The
float view computes what the quantized model's integer arithmetic computes (up to float rounding of
the integer accumulations); :func:`float_view` checks nothing itself, the tests compare both in
onnxruntime. That is what onnxruntime runs except on x86 CPUs without VNNI
(:func:`onnxslice.cpu.int8_saturates`), where its default uint8 x int8 kernels clip 16-bit sums of
product pairs: there the quantized file itself strays from its arithmetic (by up to 0.29 on
``vit_tiny_qdyn``'s logits of magnitude 1 on an AMD EPYC with AVX2) unless its session sets
``session.x64quantprecision`` to 1 (exact uint8 x uint8 kernels), as the tests' reference does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxslice.errors import QuantizedModelError

__all__ = ["QUANTIZED_OPS", "float_view", "is_quantized"]

#: Integer ops that only the float view makes analysable.
QUANTIZED_OPS = frozenset({
    "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm", "QLinearGlobalAveragePool",
    "DynamicQuantizeLSTM", "DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear",
})


def is_quantized(proto: onnx.ModelProto) -> list[str]:
    """The quantized op types a model holds (empty for a float model)."""
    return sorted({n.op_type for n in proto.graph.node if n.op_type in QUANTIZED_OPS})


class _View:
    def __init__(self, proto: onnx.ModelProto) -> None:
        self.proto = proto
        self.g = proto.graph
        self.inits = {t.name: t for t in self.g.initializer}
        self.new_inits: list[onnx.TensorProto] = []
        self.nodes: list[onnx.NodeProto] = []
        self.changed: dict[str, int] = {}
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13)

    def const(self, name: str) -> np.ndarray | None:
        t = self.inits.get(name)
        return None if t is None else numpy_helper.to_array(t)

    def add_init(self, name: str, arr: np.ndarray) -> str:
        t = numpy_helper.from_array(np.ascontiguousarray(arr), name)
        self.new_inits.append(t)
        self.inits[name] = t
        return name

    def dequant(self, q: str, scale: str, zp: str, axis: int = 1, block: int = 0) -> np.ndarray | None:
        """The float value of a constant quantized tensor (None when not constant)."""
        qa, sa = self.const(q), self.const(scale)
        if qa is None or sa is None:
            return None
        za = self.const(zp) if zp else None
        z = np.zeros_like(sa, dtype=np.float64) if za is None else za.astype(np.float64)
        s = sa.astype(np.float64)
        x = qa.astype(np.float64)
        if s.ndim == 0 or s.size == 1:
            return ((x - z.reshape(())) * s.reshape(())).astype(np.float32)
        if block:
            rep = np.repeat(s, block, axis=axis).take(np.arange(x.shape[axis]), axis=axis)
            zrep = np.repeat(z, block, axis=axis).take(np.arange(x.shape[axis]), axis=axis)
            return ((x - zrep) * rep).astype(np.float32)
        ax = axis % x.ndim
        shape = [1] * x.ndim
        shape[ax] = -1
        return ((x - z.reshape(shape)) * s.reshape(shape)).astype(np.float32)

    def node(self, op: str, ins: list[str], outs: list[str], name: str, **attrs: Any) -> None:
        self.nodes.append(helper.make_node(op, ins, outs, name=name, **attrs))

    def count(self, op: str) -> None:
        self.changed[op] = self.changed.get(op, 0) + 1


def _attrs(node: onnx.NodeProto, keep: tuple[str, ...] | None = None) -> dict[str, object]:
    out = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return {k: v for k, v in out.items() if keep is None or k in keep}


def _dq_const(v: _View, n: onnx.NodeProto) -> bool:
    a = _attrs(n)
    w = v.dequant(n.input[0], n.input[1], n.input[2] if len(n.input) > 2 else "", int(a.get("axis", 1)),  # type: ignore[call-overload]
                  int(a.get("block_size", 0)))  # type: ignore[call-overload]
    if w is None:
        return False
    v.add_init(n.output[0], w)
    return True


def _float_bias(v: _View, bias: str, x_scale: str, w_scale: str) -> np.ndarray | None:
    """The float32 bias of a QLinear/QGemm node's int32 bias: ``bias * x_scale * w_scale`` (None: not constant)."""
    ba, xsa, wsa = v.const(bias), v.const(x_scale), v.const(w_scale)
    if ba is None or xsa is None or wsa is None:
        return None
    return (ba.astype(np.float64) * float(xsa) * wsa.astype(np.float64)).astype(np.float32)


def _qlinear_conv(v: _View, n: onnx.NodeProto) -> bool:
    x, xs, xz, w, ws, wz, ys, yz = (list(n.input) + [""] * 9)[:8]
    b = n.input[8] if len(n.input) > 8 else ""
    wf = v.dequant(w, ws, wz, 0)
    if wf is None:
        return False
    base = n.name or n.output[0]
    xf = f"{base}/x_float"
    v.node("DequantizeLinear", [x, xs, xz], [xf], f"{base}/dequantize_x")
    ins = [xf, v.add_init(f"{base}/W", wf)]
    if b:
        bias = _float_bias(v, b, xs, ws)
        if bias is None:
            return False
        ins.append(v.add_init(f"{base}/B", bias))
    yf = f"{base}/y_float"
    v.node("Conv", ins, [yf], f"{base}/Conv", **_attrs(n))
    v.node("QuantizeLinear", [yf, ys, yz], [n.output[0]], f"{base}/quantize_y")
    return True


def _qlinear_matmul(v: _View, n: onnx.NodeProto) -> bool:
    a, as_, az, b, bs, bz, ys, yz = n.input[:8]
    bf = v.dequant(b, bs, bz, -1)
    if bf is None:
        return False
    base = n.name or n.output[0]
    af = f"{base}/a_float"
    v.node("DequantizeLinear", [a, as_, az], [af], f"{base}/dequantize_a")
    yf = f"{base}/y_float"
    v.node("MatMul", [af, v.add_init(f"{base}/B", bf)], [yf], f"{base}/MatMul")
    v.node("QuantizeLinear", [yf, ys, yz], [n.output[0]], f"{base}/quantize_y")
    return True


def _qgemm(v: _View, n: onnx.NodeProto) -> bool:
    ins = list(n.input) + [""] * 9
    a, as_, az, b, bs, bz, c, ys, yz = ins[:9]
    at = _attrs(n)
    axis = 0 if at.get("transB", 0) else -1
    bf = v.dequant(b, bs, bz, axis)
    if bf is None:
        return False
    base = n.name or n.output[0]
    af = f"{base}/a_float"
    v.node("DequantizeLinear", [a, as_, az], [af], f"{base}/dequantize_a")
    gins = [af, v.add_init(f"{base}/B", bf)]
    if c:
        bias = _float_bias(v, c, as_, bs)
        if bias is None:
            return False
        gins.append(v.add_init(f"{base}/C", bias))
    keep = {k: at[k] for k in ("alpha", "transA", "transB") if k in at}
    if ys:
        yf = f"{base}/y_float"
        v.node("Gemm", gins, [yf], f"{base}/Gemm", **keep)
        v.node("QuantizeLinear", [yf, ys, yz], [n.output[0]], f"{base}/quantize_y")
    else:
        v.node("Gemm", gins, [n.output[0]], f"{base}/Gemm", **keep)
    return True


def _qlinear_gap(v: _View, n: onnx.NodeProto) -> bool:
    x, xs, xz, ys, yz = n.input[:5]
    if _attrs(n).get("channels_last", 0):
        return False
    base = n.name or n.output[0]
    v.node("DequantizeLinear", [x, xs, xz], [f"{base}/x_float"], f"{base}/dequantize_x")
    v.node("GlobalAveragePool", [f"{base}/x_float"], [f"{base}/y_float"], f"{base}/GlobalAveragePool")
    v.node("QuantizeLinear", [f"{base}/y_float", ys, yz], [n.output[0]], f"{base}/quantize_y")
    return True


def _integer(op: str) -> Callable[[_View, onnx.NodeProto], bool]:
    def convert(v: _View, n: onnx.NodeProto) -> bool:
        ins = list(n.input) + [""] * 4
        x, w, xz, wz = ins[:4]
        wa = v.const(w)
        if wa is None:
            return False
        za = v.const(wz) if wz else None
        axis = 0 if op == "Conv" else -1
        z = np.zeros(1) if za is None else za.astype(np.float64)
        if z.size > 1:
            shape = [1] * wa.ndim
            shape[axis] = -1
            z = z.reshape(shape)
        wf = (wa.astype(np.float64) - z).astype(np.float32)
        base = n.name or n.output[0]
        one = v.add_init(f"{base}/one", np.array(1.0, np.float32))
        xf = f"{base}/x_minus_zero_point"
        v.node("DequantizeLinear", [x, one] + ([xz] if xz else []), [xf], f"{base}/dequantize_x")
        attrs = _attrs(n) if op == "Conv" else {}
        v.node(op, [xf, v.add_init(f"{base}/W", wf)], [n.output[0]], f"{base}/{op}", **attrs)
        return True

    return convert


def _dq_lstm(v: _View, n: onnx.NodeProto) -> bool:
    ins = list(n.input) + [""] * 12
    x, w, r, b, seq, h0, c0, p, ws, wz, rs, rz = ins[:12]
    # per-direction scales: dequantize each direction, then [D, I, 4H] -> LSTM's [D, 4H, I]
    wd = _per_direction(v, w, ws, wz)
    rd = _per_direction(v, r, rs, rz)
    if wd is None or rd is None:
        return False
    base = n.name or n.output[0]
    lstm_ins = [x, v.add_init(f"{base}/W", np.transpose(wd, (0, 2, 1)).copy()),
                v.add_init(f"{base}/R", np.transpose(rd, (0, 2, 1)).copy()), b, seq, h0, c0, p]
    while lstm_ins and not lstm_ins[-1]:
        lstm_ins.pop()
    v.node("LSTM", lstm_ins, list(n.output), f"{base}/LSTM", **_attrs(n))
    return True


def _per_direction(v: _View, q: str, s: str, z: str) -> np.ndarray | None:
    qa, sa = v.const(q), v.const(s)
    if qa is None or sa is None:
        return None
    za = v.const(z) if z else None
    zz = np.zeros(sa.shape) if za is None else za.astype(np.float64)
    d = qa.shape[0]
    sv = sa.astype(np.float64).reshape(d, -1)
    zv = zz.reshape(d, -1)
    out = (qa.astype(np.float64) - zv[:, None, :] if zv.shape[1] > 1 else qa.astype(np.float64) - zv[:, :, None])
    scale = sv[:, None, :] if sv.shape[1] > 1 else sv[:, :, None]
    return (out * scale).astype(np.float32)


_CONVERT: dict[str, Callable[[_View, onnx.NodeProto], bool]] = {
    "QLinearConv": _qlinear_conv,
    "QLinearMatMul": _qlinear_matmul,
    "QGemm": _qgemm,
    "QLinearGlobalAveragePool": _qlinear_gap,
    "ConvInteger": _integer("Conv"),
    "MatMulInteger": _integer("MatMul"),
    "DynamicQuantizeLSTM": _dq_lstm,
}


def float_view(proto: onnx.ModelProto, activations: str = "keep") -> list[str]:
    """Rewrite ``proto`` in place into its float view; returns notes on what changed (empty: nothing).

    Args:
        proto: the model (edited in place).
        activations: ``"keep"`` the quantize-dequantize of activations (the analyses), or ``"strip"`` every
            ``QuantizeLinear`` -> ``DequantizeLinear`` pair with the same scale and zero point (the rewrites:
            the result is the float model on the dequantized weights).

    Raises:
        QuantizedModelError: a quantized op whose weights are not constants (it cannot be dequantized).
    """
    v = _View(proto)
    for n in proto.graph.node:
        if n.op_type == "DequantizeLinear" and _dq_const(v, n):
            v.count("DequantizeLinear (weights)")
            continue
        conv = _CONVERT.get(n.op_type)
        if conv is not None:
            if not conv(v, n):
                raise QuantizedModelError(
                    f"node '{n.name}' ({n.op_type}) has weights that are not constants: its float view cannot be "
                    "built; analyse the float model it was quantized from instead"
                )
            v.count(n.op_type)
            continue
        v.nodes.append(n)
    if activations == "strip":
        v.nodes = _strip_pairs(v)
    if not v.changed:
        return []
    g = proto.graph
    del g.node[:]
    g.node.extend(v.nodes)
    g.initializer.extend(v.new_inits)
    used = {i for node in g.node for i in node.input} | {o.name for o in g.output}
    live = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(live)
    if v.opset < 13:
        for o in proto.opset_import:
            if o.domain in ("", "ai.onnx"):
                o.version = 13  # per-axis DequantizeLinear/QuantizeLinear
    kinds = ", ".join(f"{k} x{c}" for k, c in sorted(v.changed.items()))
    act = ("activation quantize-dequantize pairs removed" if activations == "strip" else
           "activation quantization kept, differentiated with the straight-through estimator")
    return [f"float view of a quantized model: {kinds} dequantized ({act})"]


#: Ops that commute with a (monotonic, elementwise) quantization: Q -> op -> DQ equals op on floats.
_TRANSPARENT = frozenset({"MaxPool", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity"})


def _same(v: _View, a: str, b: str) -> bool:
    if a == b:
        return True
    x, y = v.const(a), v.const(b)
    return x is not None and y is not None and x.shape == y.shape and bool(np.array_equal(x, y))


def _strip_pairs(v: _View) -> list[onnx.NodeProto]:
    """Replace ``DequantizeLinear(QuantizeLinear(x, s, z), s, z)`` by ``Identity(x)``; drop dead quantizers."""
    producer = {o: n for n in v.nodes for o in n.output}
    readers: dict[str, int] = {}
    for n in v.nodes:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    out: list[onnx.NodeProto] = []
    stripped = 0
    for n in v.nodes:
        if n.op_type == "DequantizeLinear":
            chain: list[onnx.NodeProto] = []  # ops between Q and DQ that commute with quantization
            q = producer.get(n.input[0])
            while q is not None and q.op_type in _TRANSPARENT and readers.get(q.output[0], 0) == 1:
                chain.append(q)
                q = producer.get(q.input[0])
            if (q is not None and q.op_type == "QuantizeLinear" and len(q.input) >= 2
                    and _same(v, q.input[1], n.input[1])
                    and _same(v, q.input[2] if len(q.input) > 2 else "", n.input[2] if len(n.input) > 2 else "")):
                if chain:
                    chain[-1].input[0] = q.input[0]  # the ops now run on the float value
                    src = n.input[0]
                else:
                    src = q.input[0]
                out.append(helper.make_node("Identity", [src], [n.output[0]], name=n.name or n.output[0]))
                stripped += 1
                continue
        out.append(n)
    if stripped:
        v.count("QuantizeLinear/DequantizeLinear pair")
    graph_outputs = {o.name for o in v.g.output}
    while True:  # drop nodes whose outputs nobody reads
        used = {i for n in out for i in n.input} | graph_outputs
        keep = [n for n in out if any(o in used for o in n.output)]
        if len(keep) == len(out):
            return keep
        out = keep
