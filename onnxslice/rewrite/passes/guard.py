"""The guard passes: guarded layers are computed twice, from two copies of their weights, and compared.

For every guarded layer ``l`` (a node with output ``y``) the pass adds, under the ``onnxslice/guard/<l>/``
prefix, an independent recomputation ``y'`` of the same node on the same input, reading its *own copy*
of every initializer the node reads (and of a ``DequantizeLinear`` that builds its weight, for quantized
models), and the per-element test

    ``fault_l = any( not (|y - y'| <= atol + rtol * |y'|) )``

(``not <=`` so that a NaN anywhere counts as a fault). With ``rtol = atol = 0`` the test is exact
equality (``Equal``; NaN never equals itself), one elementwise pass instead of six.

A layer is guarded together with its fusable epilogue (a BatchNormalization, a residual Add, one
activation, each the only reader of the value before it; ``y`` is then the epilogue's output):
onnxruntime fuses that chain into one Conv, and guarding the bare layer would block the fusion and
change the bits of the original outputs.

The model gets one extra output, ``onnxslice_fault``: a boolean scalar, true when any guarded layer
disagrees on any element of the batch. The original nodes, values and outputs are untouched, so on
clean inputs the original outputs are those of the input model, and ``y' == y`` bit for bit (same op,
same inputs, same kernel), so the flag stays false. :class:`FullDuplication` builds the baseline that
recomputes the whole graph and compares the outputs. Both are passes; :mod:`onnxslice.rewrite.guard` runs
them through the pass manager (full check, provenance, onnxruntime).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper, numpy_helper

from onnxslice.errors import DataError, ModelError
from onnxslice.fault_sites import constant_subgraph, fault_layers
from onnxslice.model import Model
from onnxslice.rewrite.passes.base import Pass, PassResult, add_protos, view

__all__ = ["FAULT_OUTPUT", "FullDuplication", "Guard", "guard_unit"]

#: name of the boolean output the guarded model adds
FAULT_OUTPUT = "onnxslice_fault"
_P = "onnxslice/guard/"


def _elem(model: Model, value: str) -> int:
    vi = model.value_info.get(value)
    if vi is None or vi.dtype is None:
        return onnx.TensorProto.FLOAT
    return int(helper.np_dtype_to_tensor_dtype(vi.dtype))


def _copy_init(model: Model, name: str, new: str) -> onnx.TensorProto:
    t = onnx.TensorProto()
    t.CopyFrom(model.whole_initializer(model._init_protos[name]))  # a detached weight: from its array
    t.name = new
    return t


def _compare(
    model: Model, y: str, y2: str, prefix: str, rtol: float, atol: float
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], str]:
    """Nodes computing a float scalar that is 1 when every element of ``y`` and ``y2`` agrees within the
    tolerance, else 0 (a NaN compares false, so it counts as a disagreement). Integer and boolean values
    (a classifier's label output) are compared exactly."""
    elem = _elem(model, y)
    np_dtype = helper.tensor_dtype_to_np_dtype(elem)
    exact = np.issubdtype(np_dtype, np.integer) or np_dtype == np.bool_
    if not (exact or np.issubdtype(np_dtype, np.floating)):
        raise ModelError(f"value '{y}' is {np.dtype(np_dtype)}; only numeric values can be compared for faults")
    p = prefix
    if exact or (rtol == 0 and atol == 0):  # exact: one elementwise pass instead of six
        return [
            helper.make_node("Equal", [y, y2], [f"{p}ok"], name=f"{p}equal"),
            helper.make_node("Cast", [f"{p}ok"], [f"{p}okf"], name=f"{p}cast", to=onnx.TensorProto.FLOAT),
            helper.make_node("ReduceMin", [f"{p}okf"], [f"{p}all"], name=f"{p}all", keepdims=0),
        ], [], f"{p}all"
    inits = [numpy_helper.from_array(np.array(rtol, np_dtype), f"{prefix}rtol"),
             numpy_helper.from_array(np.array(atol, np_dtype), f"{prefix}atol")]
    nodes = [
        helper.make_node("Sub", [y, y2], [f"{p}diff"], name=f"{p}sub"),
        helper.make_node("Abs", [f"{p}diff"], [f"{p}absdiff"], name=f"{p}absdiff"),
        helper.make_node("Abs", [y2], [f"{p}absref"], name=f"{p}absref"),
        helper.make_node("Mul", [f"{p}absref", f"{p}rtol"], [f"{p}reltol"], name=f"{p}reltol"),
        helper.make_node("Add", [f"{p}reltol", f"{p}atol"], [f"{p}tol"], name=f"{p}tol"),
        helper.make_node("LessOrEqual", [f"{p}absdiff", f"{p}tol"], [f"{p}ok"], name=f"{p}within"),
        helper.make_node("Cast", [f"{p}ok"], [f"{p}okf"], name=f"{p}cast", to=onnx.TensorProto.FLOAT),
        helper.make_node("ReduceMin", [f"{p}okf"], [f"{p}all"], name=f"{p}all", keepdims=0),
    ]
    return nodes, inits, f"{p}all"


def _flag(parts: list[str]) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    p = f"{_P}flag/"
    nodes: list[onnx.NodeProto] = []
    total = parts[0]
    if len(parts) > 1:
        nodes.append(helper.make_node("Min", parts, [f"{p}min"], name=f"{p}min"))
        total = f"{p}min"
    nodes.append(helper.make_node("Less", [total, f"{p}one"], [FAULT_OUTPUT], name=f"{p}less"))
    return nodes, [numpy_helper.from_array(np.array(1.0, np.float32), f"{p}one")]


def _check_tolerance(rtol: float, atol: float) -> None:
    if not (rtol >= 0 and atol >= 0 and np.isfinite(rtol) and np.isfinite(atol)):
        raise DataError(f"tolerances must be finite and >= 0, got rtol={rtol}, atol={atol}")


#: ops onnxruntime fuses into the Conv/Gemm before them (BatchNormalization folded into the weights,
#: a residual Add as the fused Conv's sum input, then an activation)
_EPILOGUE = ("BatchNormalization", "Add", "Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "Tanh")
_ACTIVATIONS = _EPILOGUE[2:]


def guard_unit(model: Model, name: str) -> list[str]:
    """The nodes guarded together: the layer and its fusable epilogue, each node alone reading the
    previous one's output (BatchNormalization with constant statistics, then Add, then one activation).
    onnxruntime fuses that chain into the layer; guarding the bare layer would block the fusion and
    change the bits of the original outputs."""
    unit = [name]
    out = model.node(name).outputs[0]
    seen: set[str] = set()
    while True:
        cons = model.consumers(out)
        if len(cons) != 1 or out in model.output_names:
            return unit
        nxt = cons[0]
        if nxt.op_type not in _EPILOGUE or nxt.domain or nxt.op_type in seen:
            return unit
        if nxt.op_type == "BatchNormalization" and (
                seen or not all(model.is_initializer(v) for v in nxt.inputs[1:] if v)):
            return unit
        if nxt.op_type == "Add" and nxt.input(0) != out:
            first = model.producer(nxt.input(0))
            if first is not None and first.op_type in ("Conv", "BatchNormalization"):
                return unit  # onnxruntime fuses this Add into the other branch's Conv: leave it there
        unit.append(nxt.name)
        seen.add(nxt.op_type)
        out = nxt.outputs[0]
        if nxt.op_type in _ACTIVATIONS:
            return unit


def _recompute(model: Model, name: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], str, str]:
    """A copy of the guarded unit of ``name`` reading its own copies of its initializers (and of
    the nodes building a quantized weight). Returns nodes, initializers, the original and the recomputed output."""
    protos = {n.name: n for n in model.graph.node}
    p = f"{_P}{name}/"
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    renamed: dict[str, str] = {}
    unit = guard_unit(model, name)
    for u, uname in enumerate(unit):
        node = model.node(uname)
        q = f"{p}{u}/" if u else p
        inputs: list[str] = []
        for i, v in enumerate(node.inputs):
            if v in renamed:
                inputs.append(renamed[v])
                continue
            if v and model.is_initializer(v):
                inits.append(_copy_init(model, v, f"{q}in{i}"))
                inputs.append(f"{q}in{i}")
                continue
            sub = constant_subgraph(model, v)
            if sub:  # a weight built from initializers (DequantizeLinear, Reshape...): copy it all
                copied: dict[str, str] = {}
                for j, sn in enumerate(sub):
                    c = onnx.NodeProto()
                    c.CopyFrom(protos[sn.name])
                    c.name = f"{q}in{i}/w{j}"
                    new_in = []
                    for k, x in enumerate(sn.inputs):
                        if x and model.is_initializer(x):
                            copied.setdefault(x, f"{q}in{i}/w{j}/{k}")
                            if copied[x] == f"{q}in{i}/w{j}/{k}":
                                inits.append(_copy_init(model, x, copied[x]))
                        new_in.append(copied.get(x, x) if x else "")
                    del c.input[:]
                    c.input.extend(new_in)
                    outs_j = [f"{q}in{i}/w{j}/out{k}" if o else "" for k, o in enumerate(sn.outputs)]
                    for o, o2 in zip(sn.outputs, outs_j, strict=True):
                        if o:
                            copied[o] = o2
                    del c.output[:]
                    c.output.extend(outs_j)
                    nodes.append(c)
                inputs.append(copied[v])
                continue
            inputs.append(v)
        copy = onnx.NodeProto()
        copy.CopyFrom(protos[uname])
        copy.name = f"{q}recompute"
        del copy.input[:]
        copy.input.extend(inputs)
        outs = [f"{q}y" if k == 0 else (f"{q}out{k}" if o else "") for k, o in enumerate(node.outputs)]
        del copy.output[:]
        copy.output.extend(outs)
        nodes.append(copy)
        renamed[node.outputs[0]] = outs[0]
    last = model.node(unit[-1]).outputs[0]
    return nodes, inits, last, renamed[last]


def _check_free(model: Model) -> None:
    if FAULT_OUTPUT in model.output_names or any(FAULT_OUTPUT in n.outputs for n in model.nodes):
        raise ModelError(f"the model already has a value named '{FAULT_OUTPUT}'; it is guarded already")


def _add(model: ir.Model, nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto]) -> None:
    add_protos(model.graph, nodes, inits, [helper.make_tensor_value_info(FAULT_OUTPUT, onnx.TensorProto.BOOL, [])])


class Guard(Pass):
    """Guard ``layers`` (see the module docstring): their recomputation, comparison and the fault output.

    Args:
        layers: node names to guard (layers of the model: see ``Model.layers`` and
            :func:`onnxslice.apps.faults.fault_layers`).
        rtol: relative tolerance per element.
        atol: absolute floor of the tolerance (for outputs near zero).

    Raises:
        ModelError: no layer to guard, an unknown layer, or a non-float layer output (when called).
        DataError: a negative or non-finite tolerance (when built).
    """

    name = "guard"

    def __init__(self, layers: Sequence[str], *, rtol: float = 1e-4, atol: float = 1e-6) -> None:
        _check_tolerance(rtol, atol)
        self.layers = list(dict.fromkeys(layers))
        self.rtol = rtol
        self.atol = atol

    def call(self, model: ir.Model) -> PassResult:
        src = view(model)
        known = {x.name: x for x in fault_layers(src)}
        if not self.layers:
            raise ModelError("no layers to guard: name at least one layer (or a count >= 1)")
        bad = [n for n in self.layers if n not in known]
        if bad:
            raise ModelError(f"no layer named {', '.join(bad)}; layers are: {', '.join(known)}")
        _check_free(src)
        nodes: list[onnx.NodeProto] = []
        inits: list[onnx.TensorProto] = []
        parts: list[str] = []
        for name in self.layers:
            n2, i2, y, y2 = _recompute(src, name)
            c, ci, flag = _compare(src, y, y2, f"{_P}{name}/", self.rtol, self.atol)
            nodes += n2 + c
            inits += i2 + ci
            parts.append(flag)
        fn, fi = _flag(parts)
        _add(model, nodes + fn, inits + fi)
        report = {"guarded": self.layers, "units": {n: guard_unit(src, n) for n in self.layers}, "rtol": self.rtol,
                  "atol": self.atol, "output": FAULT_OUTPUT,
                  "test": "fault = any(not(|y - y'| <= atol + rtol*|y'|)) over guarded layers"}
        return PassResult(model, True, report)


class FullDuplication(Pass):
    """The baseline: the whole graph computed twice (second copy of every node and initializer under
    ``onnxslice/dup/``) and every output compared as :class:`Guard` compares layers."""

    name = "guard-full-duplication"

    def __init__(self, *, rtol: float = 1e-4, atol: float = 1e-6) -> None:
        _check_tolerance(rtol, atol)
        self.rtol = rtol
        self.atol = atol

    def call(self, model: ir.Model) -> PassResult:
        src = view(model)
        _check_free(src)
        p = "onnxslice/dup/"
        inputs = set(src.input_names)

        def ren(v: str) -> str:
            return v if not v or v in inputs else f"{p}{v}"

        nodes: list[onnx.NodeProto] = []
        for n in src.graph.node:
            c = onnx.NodeProto()
            c.CopyFrom(n)
            c.name = f"{p}{n.name}"
            del c.input[:]
            c.input.extend(ren(v) for v in n.input)
            del c.output[:]
            c.output.extend(ren(v) for v in n.output)
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in c.attribute):
                raise ModelError(f"{n.op_type} '{n.name}' has a subgraph; full duplication does not copy subgraphs")
            nodes.append(c)
        inits = [_copy_init(src, t, ren(t)) for t in src.initializer_names]
        parts: list[str] = []
        for k, out in enumerate(src.output_names):
            cn, ci, flag = _compare(src, out, ren(out), f"{p}cmp{k}/", self.rtol, self.atol)
            nodes += cn
            inits += ci
            parts.append(flag)
        fn, fi = _flag(parts)
        _add(model, nodes + fn, inits + fi)
        return PassResult(model, True, {"guarded": "all", "rtol": self.rtol, "atol": self.atol, "output": FAULT_OUTPUT})
