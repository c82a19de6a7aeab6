"""Many weight settings per gradient-engine call: the layers' weights stacked along the batch axis.

Path criteria (IG, GIG, IDGI) and noise criteria (SmoothGrad, VarGrad) evaluate ``E_x[df/dw]`` at many
weight settings ("points"). One engine call per point pays the per-call cost (a recorded forward, the
backward walk, numpy dispatch per node) once per point; on small models that cost is most of the time.
Here ``G`` points share one call: the calibration batch is tiled ``G`` times along axis 0 and every layer
node is rewritten into ``Split`` (its data input, ``G`` equal parts along axis 0) -> ``G`` copies of the
node, copy ``g`` reading its own weight ``W_g`` -> ``Concat`` (axis 0). Every other node is untouched,
so sample ``g * N + i`` of the stacked batch is sample ``i`` evaluated at point ``g``, and the gradient of
``W_g`` is exactly the gradient of ``W`` at point ``g`` (per sample too). The copies' weights are
swappable, so one engine (one onnxruntime session) serves every group of points.

A model qualifies when its inputs and the target carry the samples on axis 0 with a free batch size,
and every layer is a Conv, ConvTranspose, MatMul or Gemm (``transA=0``) whose data input carries the
samples; otherwise (and with ``options["stack"]=False``) the points are evaluated one call each, with
the same numbers. ``G`` is bounded by a memory budget (``options["stack_mb"]``, default 1024 MB) on the
recorded activations of ``G * batch`` samples.

:func:`stack_subject` is the other kind: one layer's weight varies (a per-layer path), so the graph above
that layer runs once and only the graph below it runs per point. It is the default for per-layer paths;
stacking points that change every layer is opt-in (``options["stack_all"]``): measured on the reference
models it was no faster than one call per point (see ``Context._stack_size``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from onnxslice.model import Layer, Model, Node

__all__ = ["STACKABLE_OPS", "Points", "Stacked", "sample_mixing", "stack_model", "stack_problem", "stack_subject",
           "weight_copy"]

#: Layer op types whose copies can read one group of the stacked batch each.
STACKABLE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


class Points(Sequence[Mapping[str, np.ndarray]]):
    """``count`` weight settings made on demand by ``make(index)`` (not all held in memory at once)."""

    def __init__(self, count: int, make: Callable[[int], Mapping[str, np.ndarray]]) -> None:
        self.size, self.make = count, make

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Mapping[str, np.ndarray]:  # type: ignore[override]
        if not -self.size <= index < self.size:
            raise IndexError(index)
        return self.make(index % self.size)

    def __iter__(self) -> Iterator[Mapping[str, np.ndarray]]:
        return (self.make(i) for i in range(self.size))


def weight_copy(weight: str, group: int) -> str:
    """The name of group ``group``'s copy of ``weight`` in the stacked model."""
    return f"{weight}__stack{group}" if group >= 0 else f"{weight}__stacked"


def _data_inputs(model: Model, layer: Layer) -> list[int]:
    node = model.node(layer.name)
    return [i for i, v in enumerate(node.inputs) if v and i != layer.weight_input and not model.is_initializer(v)]


def stack_problem(model: Model, layers: Sequence[Layer], structural: bool = False) -> str | None:
    """Why ``model`` cannot be stacked over ``layers`` (None when it can).

    ``structural``: only what stops every kind of stacking (opset, batch, layer kinds), not a node that
    combines the samples of a batch (:func:`sample_mixing`), which only stops stacking below it
    (:func:`stack_subject` checks the graph below its layer).
    """
    if model.opsets.get("", 0) < 13:
        return f"opset {model.opsets.get('', 0)} < 13 (Split needs it)"
    for vi in model.inputs:
        if not vi.shape or (isinstance(vi.shape[0], int) and vi.shape[0] > 0):
            return f"input '{vi.name}' has no free batch dimension"
    weights = [x.weight for x in layers]
    if len(set(weights)) != len(weights):
        return "two layers share a weight"
    for x in layers:
        node = model.node(x.name)
        if node.op_type not in STACKABLE_OPS:
            return f"layer '{x.name}' is a {node.op_type}"
        if node.op_type == "Gemm" and int(node.attr("transA", 0)):
            return f"layer '{x.name}' is a Gemm with transA=1"
        if len(model.consumers(x.weight)) != 1:
            return f"weight '{x.weight}' is read by more than one node"
        data = _data_inputs(model, x)
        if len(data) != 1:
            return f"layer '{x.name}' has {len(data)} data inputs"
    return None if structural else sample_mixing(model, model.nodes)


_REDUCE_OPS = ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
               "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")
#: Ops that compute one result from every sample of the batch (activation ranges of dynamic quantization).
_BATCH_WIDE_OPS = {("", "DynamicQuantizeLinear"), ("com.microsoft", "DynamicQuantizeMatMul")}


def _rank(model: Model, value: str) -> int | None:
    vi = model.value_info.get(value)
    return len(vi.shape) if vi is not None and vi.shape is not None else None


def _hits_samples(axes: Sequence[int], rank: int | None) -> bool:
    """Whether ``axes`` include axis 0 (a negative axis of unknown rank counts: it may)."""
    return any(a == 0 or (a < 0 and (rank is None or a + rank == 0)) for a in axes)


def _reduce_axes(model: Model, node: Node) -> list[int] | None:
    """A Reduce node's axes (None: every axis); raises KeyError when they are not constant."""
    if (node.op_type == "ReduceSum" and node.opset >= 13) or node.opset >= 18:
        name = node.input(1)
        if not name:
            return None
        return [int(a) for a in model.initializer(name).reshape(-1)]  # KeyError: computed axes
    axes = node.attr("axes")
    return None if axes is None else [int(a) for a in axes]


def _mixes_samples(model: Model, node: Node) -> bool:
    """Whether ``node`` combines the samples of a batch (so stacked points would share one result)."""
    op, rank = node.op_type, _rank(model, node.input(0))
    if (node.domain or "", op) in _BATCH_WIDE_OPS:
        return True
    if op == "BatchNormalization":
        return bool(int(node.attr("training_mode", 0)))
    if op in _REDUCE_OPS:
        try:
            axes = _reduce_axes(model, node)
        except KeyError:
            return True
        if not axes:
            return not int(node.attr("noop_with_empty_axes", 0))
        return _hits_samples(axes, rank)
    if op in ("ArgMax", "ArgMin"):
        return _hits_samples([int(node.attr("axis", 0))], rank)
    if op in ("Softmax", "LogSoftmax", "Hardmax", "LayerNormalization", "TopK"):  # LayerNorm: axes [axis, rank)
        return _hits_samples([int(node.attr("axis", -1))], rank)
    if op == "Flatten":
        return int(node.attr("axis", 1)) == 0
    if op == "MeanVarianceNormalization":
        return _hits_samples([int(a) for a in node.attr("axes", (0, 2, 3))], rank)
    return False


def sample_mixing(model: Model, nodes: Iterable[Node], static: set[str] | None = None) -> str | None:
    """Why points stacked along the batch would not give the numbers of one call each: the first of
    ``nodes`` (those computed from weights alone aside: ``static``, else :func:`_static`) that combines the
    samples of a batch, such as a dynamic quantization's activation range or a reduction over the sample
    axis. None when none does."""
    static = _static(model) if static is None else static
    for node in nodes:
        if all(not o or o in static for o in node.outputs):
            continue
        if _mixes_samples(model, node):
            return f"node '{node.name}' ({node.op_type}) combines the samples of a batch"
    return None


def _batchable(model: Model, layer: Layer) -> bool:
    """Whether ``layer`` can run all groups in one batched MatMul (a 2-D weight on input 1)."""
    node = model.node(layer.name)
    if layer.weight_input != 1 or model.initializer(layer.weight).ndim != 2:
        return False
    if node.op_type == "MatMul":
        return True
    return (node.op_type == "Gemm" and not int(node.attr("transA", 0)) and float(node.attr("alpha", 1.0)) == 1.0
            and float(node.attr("beta", 1.0)) == 1.0)


@dataclass
class Stacked:
    """A stacked model and how to feed and read its weights.

    Attributes:
        model: the rewritten model.
        groups: points per call ``G``.
        batched: layer weights held as one ``[G, *w.shape]`` initializer (:func:`weight_copy` with group
            -1) read by one batched MatMul; the others have one copy per group.
    """

    model: Model
    groups: int
    batched: frozenset[str]

    def names(self, weights: Sequence[str]) -> list[str]:
        """The stacked model's weight initializers for the original ``weights``."""
        return [weight_copy(w, -1) if w in self.batched else weight_copy(w, k)
                for w in weights for k in (range(1) if w in self.batched else range(self.groups))]

    def feed(self, weights: Sequence[str], values: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """The stacked weights for ``values[g]`` (one mapping weight -> array per group)."""
        out = {}
        for w in weights:
            if w in self.batched:
                out[weight_copy(w, -1)] = np.stack([v[w] for v in values])
            else:
                out.update({weight_copy(w, k): v[w] for k, v in enumerate(values)})
        return out

    def grad(self, grads: Mapping[str, np.ndarray], weight: str, group: int, rows: slice | None) -> np.ndarray:
        """Group ``group``'s gradient of ``weight`` (``rows``: its samples, for per-sample gradients)."""
        if weight in self.batched:
            g = grads[weight_copy(weight, -1)]
            return g[group] if rows is None else g[rows, group]
        return grads[weight_copy(weight, group)]


def _const(name: str, values: Sequence[int]) -> onnx.TensorProto:
    return onnx.numpy_helper.from_array(np.asarray(values, np.int64), name)


def stack_model(model: Model, layers: Sequence[Layer], groups: int, batch: bool = True) -> Stacked:
    """The model with each layer of ``layers`` evaluated at ``groups`` weight settings (module docstring).

    Args:
        model: the model.
        layers: the layers whose weights vary between groups.
        groups: ``G``.
        batch: run MatMul/Gemm layers as one batched MatMul over ``[G, ...]`` weights (else: copies;
            per-sample gradients use copies, so that they stay ``[N, *w.shape]`` per group).
    """
    g = model.graph
    opset = model.opsets.get("", 13)
    by_node = {x.name: x for x in layers}
    nodes: list[onnx.NodeProto] = []
    inits = [t for t in g.initializer if t.name not in {x.weight for x in layers}]
    batched = set()
    for n in g.node:
        x = by_node.get(n.name)
        if x is None:
            nodes.append(n)
            continue
        data = _data_inputs(model, x)[0]
        src = n.input[data]
        w = model.initializer(x.weight)
        if batch and _batchable(model, x):
            batched.add(x.weight)
            p = f"{n.name}__stack"
            wst = weight_copy(x.weight, -1)
            inits.append(onnx.numpy_helper.from_array(np.stack([np.asarray(w)] * groups), wst))
            trans_b = x.out_axis == 0  # a 2-D weight on input 1 (_batchable): [N, K] is Gemm's transB
            m_out = int(w.shape[x.out_axis])
            inits += [_const(f"{p}_gshape", [groups, -1, int(w.shape[1 - x.out_axis])]),
                      _const(f"{p}_m", [m_out]), _const(f"{p}_s0", [0]), _const(f"{p}_s1", [-1])]
            nodes.append(helper.make_node("Reshape", [src, f"{p}_gshape"], [f"{p}_x"], name=f"{p}_x"))
            wt = wst
            if trans_b:
                wt = f"{p}_wt"
                nodes.append(helper.make_node("Transpose", [wst], [wt], name=wt, perm=[0, 2, 1]))
            y = f"{p}_y" if n.op_type == "Gemm" and len(n.input) > 2 and n.input[2] else f"{p}_mm"
            nodes.append(helper.make_node("MatMul", [f"{p}_x", wt], [f"{p}_mm"], name=f"{p}_mm"))
            # output shape: the data input's leading dims and M
            nodes.append(helper.make_node("Shape", [src], [f"{p}_shape"], name=f"{p}_shape"))
            nodes.append(helper.make_node("Slice", [f"{p}_shape", f"{p}_s0", f"{p}_s1"], [f"{p}_lead"],
                                          name=f"{p}_lead"))
            nodes.append(helper.make_node("Concat", [f"{p}_lead", f"{p}_m"], [f"{p}_oshape"],
                                          name=f"{p}_oshape", axis=0))
            if y == f"{p}_y":
                nodes.append(helper.make_node("Reshape", [f"{p}_mm", f"{p}_oshape"], [y], name=f"{p}_y"))
                nodes.append(helper.make_node("Add", [y, n.input[2]], [n.output[0]], name=f"{p}_bias"))
            else:
                nodes.append(helper.make_node("Reshape", [f"{p}_mm", f"{p}_oshape"], [n.output[0]], name=f"{p}_out"))
            continue
        parts = [f"{n.name}__stack_in{k}" for k in range(groups)]
        split = helper.make_node("Split", [src], parts, name=f"{n.name}__stack_split", axis=0)
        if opset >= 18:
            split.attribute.append(helper.make_attribute("num_outputs", groups))
        nodes.append(split)
        outs = []
        for k in range(groups):
            copy = onnx.NodeProto()
            copy.CopyFrom(n)
            copy.name = f"{n.name}__stack{k}"
            copy.input[data] = parts[k]
            copy.input[x.weight_input] = weight_copy(x.weight, k)
            out = f"{n.output[0]}__stack{k}"
            copy.output[0] = out
            outs.append(out)
            nodes.append(copy)
            inits.append(onnx.numpy_helper.from_array(np.asarray(w), weight_copy(x.weight, k)))
        nodes.append(helper.make_node("Concat", outs, [n.output[0]], name=f"{n.name}__stack_concat", axis=0))
    gone = {x.weight for x in layers}
    graph = helper.make_graph(nodes, g.name, [i for i in g.input if i.name not in gone], list(g.output), inits,
                              value_info=list(g.value_info))
    sk = model.skeleton
    proto = helper.make_model(graph, opset_imports=list(sk.opset_import), ir_version=sk.ir_version)
    with contextlib.suppress(Exception):  # types of the new values help the engine; they are not needed
        proto = onnx.shape_inference.infer_shapes(proto)
    return Stacked(model.with_proto(proto, f"stacked x{groups}"), groups, frozenset(batched))


def _static(model: Model) -> set[str]:
    """Values computed from initializers only (no sample axis)."""
    static = set(model.initializer_names)
    for node in model.nodes:
        if node.inputs and all(not i or i in static for i in node.inputs):
            static.update(o for o in node.outputs if o)
    return static


def _batch_free(vi: onnx.ValueInfoProto, static: set[str]) -> onnx.ValueInfoProto:
    """``vi`` with its leading dimension unknown, unless its value is static.

    In a per-layer stacked model the values above the layer hold ``N`` rows and those below it ``G * N``;
    the model's value_info gives them one symbolic batch, which lets onnxruntime's planner share their
    buffers (at the *all* level it then fails on the first reuse: 'Shape mismatch attempting to re-use
    buffer'). The other dimensions stay: the engine sizes its recording from them.
    """
    if vi.name in static or not vi.type.HasField("tensor_type") or not vi.type.tensor_type.shape.dim:
        return vi
    out = onnx.ValueInfoProto()
    out.CopyFrom(vi)
    lead = out.type.tensor_type.shape.dim[0]
    lead.ClearField("dim_value")
    lead.ClearField("dim_param")
    return out


def stack_subject(model: Model, layer: Layer, groups: int, needed: Sequence[str]) -> Stacked | str:
    """``groups`` settings of one layer's weight per call, the part of the graph above it run once.

    The feed is the calibration batch tiled ``groups`` times; the nodes that do not depend on
    ``layer``'s weight (the prefix) read only its first ``N`` rows, the layer runs once per group on
    that prefix value and every prefix value the rest of the graph reads is tiled to ``G * N`` rows. Only
    the layer's weight varies, so a path that scales one layer costs the suffix below it per point,
    not the whole model. ``needed``: values that must depend on the layer (the target).

    Returns:
        the :class:`Stacked` model, or why it cannot be built (an integer value such as a shape
        computed above the layer is read below it, or a needed value does not depend on the layer).
    """
    g = model.graph
    node_l = model.node(layer.name)
    below = set(node_l.outputs)
    suffix: set[str] = set()
    for n in model.nodes:
        if n.name != node_l.name and any(i in below for i in n.inputs if i):
            suffix.add(n.name)
            below.update(o for o in n.outputs if o)
    for v in needed:
        if v not in below:
            return f"'{v}' does not depend on layer '{layer.name}'"
    static = _static(model)
    why = sample_mixing(model, [n for n in model.nodes if n.name in suffix], static)
    if why:
        return f"below layer '{layer.name}', {why}"
    inputs = set(model.input_names)
    tiled: dict[str, str] = {}  # prefix value -> its tiled name, for suffix readers
    for n in model.nodes:
        if n.name not in suffix:
            continue
        for v in n.inputs:
            if not v or v in below or v in static or v in inputs or v in tiled:
                continue
            vi = model.value_info.get(v)
            if vi is None or vi.dtype is None or vi.dtype.kind != "f":
                what = vi.describe() if vi else "untyped"
                return f"value '{v}' ({what}) is computed above layer '{layer.name}' and read below it"
            if vi.shape is not None and (not vi.shape or isinstance(vi.shape[0], int)):
                continue  # no sample axis (a scalar such as a dynamic quantization scale): read as it is
            tiled[v] = f"{v}__tiled"
    first = {i: f"{i}__first" for i in model.input_names}  # prefix readers see the first N rows
    p = f"{node_l.name}__subj"
    nodes: list[onnx.NodeProto] = []
    inits = [t for t in g.initializer if t.name != layer.weight]
    inits += [_const(f"{p}_g", [groups]), _const(f"{p}_s0", [0]), _const(f"{p}_s1", [1])]
    for i in model.input_names:
        nodes.append(helper.make_node("Shape", [i], [f"{i}__shape"], name=f"{i}__shape"))
        nodes.append(helper.make_node("Slice", [f"{i}__shape", f"{p}_s0", f"{p}_s1"], [f"{i}__rows"],
                                      name=f"{i}__rows"))
        nodes.append(helper.make_node("Div", [f"{i}__rows", f"{p}_g"], [f"{i}__n"], name=f"{i}__n"))
        nodes.append(helper.make_node("Slice", [i, f"{p}_s0", f"{i}__n", f"{p}_s0"], [first[i]], name=first[i]))
    w = model.initializer(layer.weight)
    for n in g.node:
        if n.name == node_l.name:
            outs = []
            for k in range(groups):
                copy = onnx.NodeProto()
                copy.CopyFrom(n)
                copy.name = f"{n.name}__stack{k}"
                for j, v in enumerate(copy.input):
                    if v in first:
                        copy.input[j] = first[v]
                copy.input[layer.weight_input] = weight_copy(layer.weight, k)
                copy.output[0] = f"{n.output[0]}__stack{k}"
                outs.append(copy.output[0])
                nodes.append(copy)
                inits.append(onnx.numpy_helper.from_array(np.asarray(w), weight_copy(layer.weight, k)))
            nodes.append(helper.make_node("Concat", outs, [n.output[0]], name=f"{n.name}__stack_concat", axis=0))
            continue
        node = onnx.NodeProto()
        node.CopyFrom(n)
        rename = tiled if n.name in suffix else first
        for j, v in enumerate(node.input):
            if v in rename:
                node.input[j] = rename[v]
        nodes.append(node)
        for o in n.output:
            if o in tiled:
                nodes.append(helper.make_node("Concat", [o] * groups, [tiled[o]], name=tiled[o], axis=0))
    graph = helper.make_graph(nodes, g.name, [i for i in g.input if i.name != layer.weight], list(g.output), inits,
                              value_info=[_batch_free(vi, static) for vi in g.value_info])
    sk = model.skeleton
    proto = helper.make_model(graph, opset_imports=list(sk.opset_import), ir_version=sk.ir_version)
    with contextlib.suppress(Exception):
        proto = onnx.shape_inference.infer_shapes(proto)
    return Stacked(model.with_proto(proto, f"stacked x{groups} on {layer.name}"), groups, frozenset())
