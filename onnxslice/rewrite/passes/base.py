"""One signature for every rewrite: a pass takes an ``onnx_ir.Model`` and returns a :class:`PassResult`.

The passes edit one mutable graph IR, `onnx-ir <https://github.com/onnx/ir-py>`_ (why this one and not
onnx-graphsurgeon: ``docs/design.md``, "Graph IR"). A pass is configured when it is built (the plan, the
layers, the tolerances) and is then a function of the model alone; it may edit the model in place and
returns it in :class:`PassResult` with ``changed`` (False: the model is untouched) and a JSON-ready
``report``. Passes never check the result themselves: :class:`~onnxslice.rewrite.passes.manager.PassManager`
runs the checks every emitted model needs once, after the last pass.

This module also holds the few IR helpers the passes share: the proto <-> IR conversions, the read-only
analysis view of an IR model (:func:`view`, an :class:`onnxslice.Model` for passes that need layers,
groups or consumers), and the edits several passes make (swap an initializer's values, add nodes and
initializers built as protos, replace a weight by the nodes that compute it).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from onnxslice.errors import ModelError
from onnxslice.model import Model, load

__all__ = [
    "VIEW",
    "FromProto",
    "Pass",
    "PassResult",
    "add_protos",
    "replace_values",
    "replace_weights",
    "to_ir",
    "to_proto",
    "view",
]


@dataclass
class PassResult:
    """What a pass returns.

    Attributes:
        model: the model after the pass (the same object, edited in place, or a new one).
        changed: whether the pass changed anything; False promises ``model`` is the input, untouched.
        report: what the pass did (JSON-serialisable), kept by the manager under the pass's name.
    """

    model: ir.Model
    changed: bool
    report: dict[str, Any] = field(default_factory=dict)


class Pass(abc.ABC):
    """A rewrite: ``pass_(model) -> PassResult``. Subclasses set :attr:`name` and implement :meth:`call`."""

    #: short name used in provenance and in error messages (e.g. ``"channel-cut"``)
    name: str = "pass"

    def __call__(self, model: ir.Model) -> PassResult:
        result = self.call(model)
        if not isinstance(result, PassResult):
            raise TypeError(f"pass '{self.name}' returned {type(result).__name__}, not a PassResult (a bug)")
        return result

    @abc.abstractmethod
    def call(self, model: ir.Model) -> PassResult:
        """Apply the pass to ``model`` (may edit it in place)."""


class FromProto(Pass):
    """A pass whose edit is a function on the ``ModelProto`` (onnxruntime's quantizers and
    ``onnx.version_converter`` take protos): the model is serialised, edited and read back."""

    name = "proto"

    def __init__(self, label: str, fn: Callable[[onnx.ModelProto], onnx.ModelProto | None],
                 report: Mapping[str, Any] | None = None) -> None:
        self.name = label
        self.fn = fn
        self.report = dict(report or {})

    def call(self, model: ir.Model) -> PassResult:
        proto = to_proto(model)
        out = self.fn(proto)
        return PassResult(to_ir(out if out is not None else proto), True, dict(self.report))

    def __repr__(self) -> str:
        return f"FromProto({self.name!r})"


#: where :func:`to_ir` keeps the value types onnx-ir cannot hold (``graph.meta``), for :func:`to_proto`
_OPAQUE = "onnxslice.opaque_types"
#: the source's order of ``metadata_props`` keys (onnx-ir sorts them)
_ORDER = "onnxslice.metadata_order"


def _has_map(t: onnx.TypeProto) -> bool:
    kind = t.WhichOneof("value")
    if kind == "map_type":
        return True
    if kind == "sequence_type":
        return _has_map(t.sequence_type.elem_type)
    if kind == "optional_type":
        return _has_map(t.optional_type.elem_type)
    return False


def to_ir(proto: onnx.ModelProto) -> ir.Model:
    """``proto`` as an IR model (tensors are wrapped, not copied: do not edit ``proto`` afterwards).

    onnx-ir has no map type: a value typed with one (a ZipMap's sequence-of-maps output) enters the IR
    untyped, and :func:`to_proto` writes its original type back.

    Raises:
        ModelError: the IR cannot read the model.
    """
    opaque: dict[str, bytes] = {}
    if any(_has_map(v.type) for v in [*proto.graph.output, *proto.graph.value_info, *proto.graph.input]):
        copy = onnx.ModelProto()
        copy.CopyFrom(proto)
        proto = copy
        for v in [*proto.graph.output, *proto.graph.value_info, *proto.graph.input]:
            if _has_map(v.type):
                opaque[v.name] = v.SerializeToString()
                v.ClearField("type")
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as e:  # onnx-ir raises SerdeError wrapping the cause
        raise ModelError(
            f"the graph IR cannot read this model ({str(e).splitlines()[0][:160]}); "
            "re-export it with tensor-typed values"
        ) from e
    if opaque:
        model.graph.meta[_OPAQUE] = opaque
    model.graph.meta[_ORDER] = [p.key for p in proto.metadata_props]
    return model


def to_proto(model: ir.Model) -> onnx.ModelProto:
    """The IR model as a ``ModelProto``, without the ``value_info`` onnx-ir adds for every initializer, with
    ``metadata_props`` in the source's order (new keys last), and the map types :func:`to_ir` set aside
    written back."""
    proto = ir.serde.serialize_model(model)
    inits = {t.name for t in proto.graph.initializer}
    if inits and any(v.name in inits for v in proto.graph.value_info):
        keep = [v for v in proto.graph.value_info if v.name not in inits]
        del proto.graph.value_info[:]
        proto.graph.value_info.extend(keep)
    order = {k: i for i, k in enumerate(model.graph.meta.get(_ORDER, []))}
    if order and proto.metadata_props:  # onnx-ir writes metadata sorted by key: keep the source's order
        props = sorted(((p.key, p.value) for p in proto.metadata_props), key=lambda kv: order.get(kv[0], len(order)))
        del proto.metadata_props[:]
        proto.metadata_props.extend(onnx.StringStringEntryProto(key=k, value=v) for k, v in props)
    opaque: dict[str, bytes] = model.graph.meta.get(_OPAQUE, {})
    if opaque:
        for v in [*proto.graph.output, *proto.graph.value_info, *proto.graph.input]:
            if v.name in opaque:
                v.ParseFromString(opaque[v.name])
    return proto


#: ``graph.meta`` key of the analysis view the pass manager sets while the model is the unchanged source
VIEW = "onnxslice.view"


def view(model: ir.Model) -> Model:
    """A read-only :class:`onnxslice.Model` of the IR model, for passes that need layers, groups or consumers.

    It is a snapshot: edits to ``model`` after the call do not show in it. While the model is still the
    pass manager's unchanged source, the source itself is returned (the manager drops it from
    ``graph.meta`` as soon as a pass reports a change).
    """
    cached = model.graph.meta.get(VIEW)
    if isinstance(cached, Model):
        return cached
    return load(to_proto(model), check=False)


def _values(graph: ir.Graph) -> dict[str, ir.Value]:
    out: dict[str, ir.Value] = {}
    for v in graph.inputs:
        out[v.name or ""] = v
    for name, v in graph.initializers.items():
        out[name] = v
    for node in graph:
        for o in node.outputs:
            if o.name:
                out[o.name] = o
    return out


def replace_values(graph: ir.Graph, arrays: Mapping[str, np.ndarray]) -> None:
    """Give initializers new values (shape and dtype may change: a cut channel)."""
    for name, arr in arrays.items():
        v = graph.initializers[name]
        arr = np.ascontiguousarray(arr)
        v.const_value = ir.tensor(arr, name=name)
        v.shape = ir.Shape(arr.shape)
        v.type = ir.TensorType(ir.DataType.from_numpy(arr.dtype))


def add_protos(graph: ir.Graph, nodes: Iterable[onnx.NodeProto], initializers: Iterable[onnx.TensorProto] = (),
               outputs: Iterable[onnx.ValueInfoProto] = (), *, prepend: bool = False) -> None:
    """Add nodes and initializers written as protos (``onnx.helper``) to the graph.

    A node's inputs name values already in the graph or made by earlier nodes of ``nodes``; ``outputs``
    names values that become graph outputs. With ``prepend`` the nodes go before the existing ones (weight
    producers), else after.
    """
    for t in initializers:
        tensor = ir.serde.deserialize_tensor(t)
        v = ir.Value(name=t.name, shape=ir.Shape(tensor.shape.numpy()), type=ir.TensorType(tensor.dtype),
                     const_value=tensor)
        graph.register_initializer(v)
    values = _values(graph)
    made: list[ir.Node] = []
    for p in nodes:
        inputs = [values[x] if x else None for x in p.input]
        attrs = [ir.serde.deserialize_attribute(a) for a in p.attribute]
        node = ir.Node(p.domain, p.op_type, inputs, attrs, num_outputs=len(p.output), name=p.name or None)
        for o, oname in zip(node.outputs, p.output, strict=True):
            o.name = oname
            if oname:
                values[oname] = o
        made.append(node)
    if prepend and len(graph):
        graph.insert_before(graph.node(0), made)
    else:
        graph.extend(made)
    for vi in outputs:
        v = values[vi.name]
        ir.serde.deserialize_value_info_proto(vi, v)
        graph.outputs.append(v)


def replace_weights(graph: ir.Graph, edits: Iterable[tuple[str, list[onnx.TensorProto], list[onnx.NodeProto]]]) -> None:
    """Replace each initializer ``weight`` by ``nodes`` computing a value of the same name from ``initializers``.

    ``edits`` holds ``(weight, initializers, nodes)``; the nodes of all edits go before the graph's, in
    order. Every reader of a weight reads the new value; an old-style (IR < 4) graph input of that name goes.
    """
    edits = list(edits)
    old: dict[str, ir.Value] = {}
    for weight, _, _ in edits:
        v = graph.initializers.pop(weight)
        if v.is_graph_input():
            graph.inputs.remove(v)
        v.name = None
        old[weight] = v
    add_protos(graph, [n for _, _, nodes in edits for n in nodes], [t for _, inits, _ in edits for t in inits],
               prepend=True)
    values = _values(graph)
    for weight, v in old.items():
        v.replace_all_uses_with(values[weight])
