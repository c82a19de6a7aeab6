"""Load, validate and normalize ONNX models; the read-only :class:`Model` every analysis takes.

Loading checks the graph with the ONNX checker, runs shape inference, turns ``Constant`` nodes into
initializers (so weights are found wherever the exporter put them), names unnamed nodes
deterministically and loads external data. Nothing here runs the model or writes the input file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import external_data_helper, helper, numpy_helper

from onnxslice.dequantize import float_view
from onnxslice.errors import ModelError, OnnxSliceError
from onnxslice.limits import check_size
from onnxslice.opsets import REGISTRY, default_info
from onnxslice.order import topological_order
from onnxslice.outputs import temp_prefix
from onnxslice.session import copy_replacing_initializers, memory_stub

__all__ = ["Layer", "Model", "Node", "ValueInfo", "load", "save_model"]

#: Models above this size are written with external data.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
#: :func:`load` keeps initializers of at least this many bytes as arrays only (:attr:`Model.detached`).
DETACH_MIN = 4096


@dataclass(frozen=True)
class Node:
    """One graph node, with attributes decoded to Python values.

    Attributes:
        name: unique node name (unnamed nodes get ``onnxslice/<op>_<index>`` at load).
        op_type: exact ONNX op type.
        domain: ``""`` for the default domain.
        inputs: input value names; ``""`` marks an omitted optional input.
        outputs: output value names.
        attrs: decoded attributes (ints, floats, strings, lists, numpy arrays for tensors).
        opset: the opset version of the node's domain in this model.
    """

    name: str
    op_type: str
    domain: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: Mapping[str, Any]
    opset: int

    def attr(self, name: str, default: Any = None) -> Any:
        """The attribute ``name``, or ``default`` when absent."""
        return self.attrs.get(name, default)

    def input(self, i: int) -> str:
        """Input ``i`` or ``""`` when it is omitted or absent."""
        return self.inputs[i] if i < len(self.inputs) else ""

    def __str__(self) -> str:
        return f"{self.op_type} '{self.name}'"


@dataclass(frozen=True)
class ValueInfo:
    """Type and shape of a value; dims are ints, symbolic names, or None (unknown)."""

    name: str
    dtype: np.dtype | None
    shape: tuple[int | str | None, ...] | None

    def describe(self) -> str:
        """``float32[N,1,28,28]``-style description."""
        dt = str(self.dtype) if self.dtype is not None else "?"
        if self.shape is None:
            return f"{dt}[?]"
        return f"{dt}[{','.join('?' if d is None else str(d) for d in self.shape)}]"


@dataclass(frozen=True)
class Layer:
    """A SAfER layer: a node that owns a weight initializer.

    Attributes:
        name: the node name.
        op_type: Conv, ConvTranspose, Gemm, MatMul, ...
        weight: name of the weight initializer.
        weight_input: which node input the weight is.
        bias: name of the bias initializer, if any.
        params: number of scalars in weight and bias.
        out_channels: output channels (Conv) or neurons (Gemm/MatMul).
        output: the node's first output value.
        out_axis: the axis of the weight that indexes output channels (0 for Conv, 1 for
            ConvTranspose, depends on transA/transB for Gemm, the last or second-to-last for MatMul).
    """

    name: str
    op_type: str
    weight: str
    weight_input: int
    bias: str | None
    params: int
    out_channels: int
    output: str
    out_axis: int = 0


def _decode_attrs(node: onnx.NodeProto) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH or a.type == onnx.AttributeProto.GRAPHS:
            out[a.name] = helper.get_attribute_value(a)
            continue
        v = helper.get_attribute_value(a)
        if isinstance(v, onnx.TensorProto):
            v = numpy_helper.to_array(v)
        elif isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        elif isinstance(v, list) and v and isinstance(v[0], bytes):
            v = [x.decode("utf-8", "replace") for x in v]
        out[a.name] = v
    return out


def _value_info(vi: onnx.ValueInfoProto) -> ValueInfo:
    t = vi.type
    if not t.HasField("tensor_type"):
        return ValueInfo(vi.name, None, None)
    tt = t.tensor_type
    dtype: np.dtype | None
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)) if tt.elem_type else None
    except (KeyError, TypeError, ValueError):
        dtype = None
    if not tt.HasField("shape"):
        return ValueInfo(vi.name, dtype, None)
    dims: list[int | str | None] = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return ValueInfo(vi.name, dtype, tuple(dims))


def _constant_to_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor a Constant node holds, or None for sparse constants."""
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        name = node.output[0]
        if a.name == "value":
            t = onnx.TensorProto()
            t.CopyFrom(v)
            t.name = name
            return t
        if a.name in ("value_float", "value_int"):
            dtype = np.float32 if a.name == "value_float" else np.int64
            return numpy_helper.from_array(np.array(v, dtype=dtype), name)
        if a.name in ("value_floats", "value_ints"):
            dtype = np.float32 if a.name == "value_floats" else np.int64
            return numpy_helper.from_array(np.array(list(v), dtype=dtype), name)
        if a.name == "value_string":
            return helper.make_tensor(name, onnx.TensorProto.STRING, [], [v])
        if a.name == "value_strings":
            return helper.make_tensor(name, onnx.TensorProto.STRING, [len(v)], list(v))
    return None


def _normalize(proto: onnx.ModelProto) -> list[str]:
    """Constant nodes -> initializers, unique node names. Returns notes about what changed."""
    g = proto.graph
    notes: list[str] = []
    keep: list[onnx.NodeProto] = []
    converted = 0
    graph_outputs = {o.name for o in g.output}
    for node in g.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output[0] not in graph_outputs:
            t = _constant_to_tensor(node)
            if t is not None:
                g.initializer.append(t)
                converted += 1
                continue
        keep.append(node)
    if converted:
        del g.node[:]
        g.node.extend(keep)
        notes.append(f"{converted} Constant node(s) became initializers")
        if proto.ir_version < 4:  # initializers must be graph inputs before IR 4
            proto.ir_version = 4
    init_names = {t.name for t in g.initializer}
    listed = [i for i in g.input if i.name in init_names]
    if listed:  # old exports (IR < 4) also list every initializer as a graph input; they are weights, not inputs
        real = [i for i in g.input if i.name not in init_names]
        del g.input[:]
        g.input.extend(real)
        proto.ir_version = max(proto.ir_version, 4)
        notes.append(f"{len(listed)} initializer(s) listed as graph inputs are weights, not inputs (old export)")
    seen: set[str] = set()
    renamed = 0
    for i, node in enumerate(g.node):
        name = node.name
        if not name or name in seen:
            base = name or f"onnxslice/{node.op_type}_{i}"
            name, k = base, 1
            while name in seen:
                name, k = f"{base}_{k}", k + 1
            node.name = name
            renamed += 1
        seen.add(name)
    if renamed:
        notes.append(f"{renamed} node(s) got deterministic names")
    return notes + _fold_weight_constants(proto)


#: Ops that exporters use to build weights from constants; folded into initializers at load.
_FOLDABLE = {"ConstantOfShape", "Identity", "Transpose", "Cast", "Reshape", "Unsqueeze", "Squeeze"}
_MAX_FOLD_BYTES = 512 * 2**20


def _fold_weight_constants(proto: onnx.ModelProto) -> list[str]:
    """Evaluate weight-building nodes whose inputs are all initializers (ConstantOfShape, ...).

    Only float results are folded (weights, not shape arithmetic) and only the ops in
    ``_FOLDABLE``; quantized weights (DequantizeLinear) and fp16/bf16 weights up-cast by a Cast are left
    as they are on purpose, so loading a compressed model keeps it compressed.
    """
    g = proto.graph
    inits = {t.name: t for t in g.initializer}
    outputs = {o.name for o in g.output}
    keep: list[onnx.NodeProto] = []
    folded = 0
    opset = [o for o in proto.opset_import if o.domain in ("", "ai.onnx")]
    low_precision = {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    for node in g.node:
        ins = [i for i in node.input if i]
        if node.op_type == "Cast" and ins and ins[0] in inits and inits[ins[0]].data_type in low_precision:
            keep.append(node)  # fp16 weights stored compressed on purpose: folding would undo it
            continue
        if (
            node.op_type in _FOLDABLE
            and node.domain in ("", "ai.onnx")
            and ins
            and all(i in inits for i in ins)
            and not any(o in outputs for o in node.output)
            and sum(inits[i].ByteSize() for i in ins) < _MAX_FOLD_BYTES
        ):
            from onnx.reference import ReferenceEvaluator  # only when there is something to fold (17 ms)

            sub = helper.make_model(
                helper.make_graph(
                    [node],
                    "fold",
                    [],
                    [helper.make_value_info(o, onnx.TypeProto()) for o in node.output],
                    [inits[i] for i in ins],
                ),
                opset_imports=opset,
            )
            try:
                results = ReferenceEvaluator(sub).run(None, {})
            except Exception:
                keep.append(node)
                continue
            if all(np.issubdtype(np.asarray(r).dtype, np.floating) for r in results):
                for name, r in zip(node.output, results, strict=True):
                    t = numpy_helper.from_array(np.asarray(r), name)
                    g.initializer.append(t)
                    inits[name] = t
                folded += 1
                continue
        keep.append(node)
    if folded:
        del g.node[:]
        g.node.extend(keep)
        used = {i for n in g.node for i in n.input} | outputs
        dead = {t.name for t in g.initializer if t.name not in used}
        live = [t for t in g.initializer if t.name not in dead]
        del g.initializer[:]
        g.initializer.extend(live)
        ins = [i for i in g.input if i.name not in dead]  # IR < 4 lists initializers as inputs
        del g.input[:]
        g.input.extend(ins)
        return [f"{folded} constant weight-building node(s) folded into initializers"]
    return []


def _tensor_nbytes(t: onnx.TensorProto) -> int | None:
    """Bytes the tensor's dims and type declare (None for strings and unknown types)."""
    try:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return None
    if t.data_type in (onnx.TensorProto.STRING,) or itemsize == 0:
        return None
    n = 1
    for d in t.dims:
        if d < 0:
            return None
        n *= int(d)
    if t.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return (n + 1) // 2
    return n * itemsize


def _contained_location(t: onnx.TensorProto, base_dir: Path, where: str) -> tuple[Path, int, int | None]:
    """The resolved external-data file of ``t``, its offset and length, after the containment rules.

    Rules (whatever the installed onnx does): the location is relative, has no ``..`` component and,
    once symlinks are resolved, stays inside the model's folder. Existence is checked only after.
    """
    info: dict[str, str] = {e.key: e.value for e in t.external_data}
    loc = info.get("location", "")
    rule = ""
    if not loc:
        rule = "has no location"
    elif "\x00" in loc:
        rule = "has a NUL byte in its location"
    elif os.path.isabs(loc) or loc.startswith(("/", "\\")) or (len(loc) > 1 and loc[1] == ":"):
        rule = f"has an absolute location '{loc}'; locations must be relative to the model's folder"
    elif ".." in loc.replace("\\", "/").split("/"):
        rule = f"has a location '{loc}' with '..'; locations must stay inside the model's folder"
    if rule:
        raise ModelError(f"{where}: initializer '{t.name}' {rule}")
    root = Path(os.path.realpath(base_dir))
    real = Path(os.path.realpath(base_dir / loc))
    if real != root and root not in real.parents:
        raise ModelError(
            f"{where}: initializer '{t.name}' has a location '{loc}' that leads out of the model's folder "
            "(through a symlink); external data must stay inside the model's folder"
        )
    try:
        offset = int(info.get("offset", "0") or 0)
        length = int(info["length"]) if info.get("length") not in (None, "") else None
    except ValueError:
        raise ModelError(f"{where}: initializer '{t.name}' has a non-integer external-data offset or length") from None
    if offset < 0 or (length is not None and length < 0):
        raise ModelError(f"{where}: initializer '{t.name}' has a negative external-data offset or length")
    if not real.is_file():
        raise ModelError(
            f"{where}: initializer '{t.name}' keeps its data in '{loc}', which is missing or not a file "
            f"(looked in {base_dir}). Put the external data file beside the model."
        )
    return real, offset, length


def _load_external_data(proto: onnx.ModelProto, base_dir: Path, where: str) -> None:
    """Read every external-data tensor into the proto, after containment and size checks on all of them."""
    todo: list[tuple[onnx.TensorProto, Path, int, int]] = []
    for t in external_data_helper._get_all_tensors(proto):
        if not external_data_helper.uses_external_data(t):
            continue
        real, offset, length = _contained_location(t, base_dir, where)
        need = _tensor_nbytes(t)
        size = real.stat().st_size
        got = length if length is not None else size - offset
        if need is not None:
            check_size(need, f"{where}: initializer '{t.name}' (shape {list(t.dims)})", ModelError)
        check_size(max(got, 0), f"{where}: external data of initializer '{t.name}'", ModelError)
        if offset + max(got, 0) > size or got < 0:
            raise ModelError(
                f"{where}: initializer '{t.name}' reads bytes {offset}..{offset + got} of '{real.name}', "
                f"which has {size}; the external data file is truncated or not this model's"
            )
        if need is not None and got != need:
            raise ModelError(
                f"{where}: initializer '{t.name}' has {got} bytes of external data, its shape {list(t.dims)} "
                f"needs {need}; the external data file is not this model's"
            )
        todo.append((t, real, offset, got))
    for t, real, offset, got in todo:
        with open(real, "rb") as f:
            f.seek(offset)
            data = f.read(got)
        if len(data) != got:
            raise ModelError(f"{where}: external data of initializer '{t.name}' is truncated")
        t.raw_data = data
        del t.external_data[:]
        t.data_location = onnx.TensorProto.DEFAULT


def _check_inline_sizes(proto: onnx.ModelProto, where: str) -> None:
    for t in proto.graph.initializer:
        need = _tensor_nbytes(t)
        if need is not None:
            check_size(need, f"{where}: initializer '{t.name}' (shape {list(t.dims)})", ModelError)


def _read(path: Path) -> onnx.ModelProto:
    if not path.exists():
        raise ModelError(f"model file '{path}' does not exist")
    if path.is_dir():
        raise ModelError(f"'{path}' is a directory, not an ONNX file")
    if path.stat().st_size == 0:
        raise ModelError(f"model file '{path}' is empty")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises DecodeError or RuntimeWarning-ish errors
        raise ModelError(f"'{path}' is not a readable ONNX file (truncated, or another format): {e}") from e
    if not proto.HasField("graph") or len(proto.graph.node) == 0:
        raise ModelError(f"'{path}' holds no ONNX graph (truncated, or another format)")
    _check_inline_sizes(proto, f"'{path}'")
    try:
        _load_external_data(proto, path.parent, f"'{path}'")
    except OSError as e:
        raise ModelError(f"cannot read external data of '{path}': {e.strerror or e}") from e
    return proto


def _check(proto: onnx.ModelProto, where: str) -> None:
    try:
        if proto.ByteSize() < EXTERNAL_DATA_THRESHOLD:
            onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
        raise ModelError(f"{where} is not a valid ONNX model: {first}") from e


def _infer(proto: onnx.ModelProto, where: str) -> onnx.ModelProto:
    if proto.ByteSize() >= EXTERNAL_DATA_THRESHOLD:
        warnings.warn(f"{where}: too large for in-memory shape inference; shapes come from the file only", stacklevel=3)
        return proto
    try:
        return onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)
    except Exception as e:
        warnings.warn(f"{where}: shape inference failed ({e}); continuing with declared shapes", stacklevel=3)
        return proto


def raw_dtype(t: onnx.TensorProto) -> np.dtype | None:
    """The little-endian numpy dtype of ``t``'s elements, or None for a type numpy does not hold natively
    (strings, bfloat16, float8, 4-bit): the initializers that can live outside the proto as plain arrays."""
    try:
        dt = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type))
    except (KeyError, TypeError, ValueError):
        return None
    return dt.newbyteorder("<") if dt.kind in "fiub" else None


def _detach(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """``proto`` with its initializers of at least :data:`DETACH_MIN` bytes as data-less stubs
    (:func:`~onnxslice.session.memory_stub`), and their read-only arrays: a model's weights are then held
    once, as the arrays that every rule, session and rewrite reads, instead of twice (the parsed proto and
    the arrays made from it: ResNet-18's 45 MB)."""
    arrays: dict[str, np.ndarray] = {}

    def take(t: onnx.TensorProto) -> onnx.TensorProto | None:
        dt = raw_dtype(t)
        if t.data_location == onnx.TensorProto.EXTERNAL or dt is None or (
            dt.itemsize * int(np.prod(t.dims, dtype=np.int64)) < DETACH_MIN
        ):
            return None
        arr = numpy_helper.to_array(t)
        if arr.dtype != dt:  # a type numpy holds another way: leave it in the proto
            return None
        arr.setflags(write=False)
        arrays[t.name] = arr
        return memory_stub(t)

    out = copy_replacing_initializers(proto, take)
    return (out, arrays) if arrays else (proto, arrays)


class Model:
    """A loaded, normalized ONNX model. Treat it as read-only: rewriters return new models.

    Use :func:`load` to build one. Node order is topological.
    """

    def __init__(
        self,
        proto: onnx.ModelProto,
        path: Path | None = None,
        notes: Iterable[str] = (),
        detached: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """``detached``: arrays of initializers whose data ``proto`` does not hold (each an external-data
        reference there: :func:`load` detaches every large weight, a :mod:`onnxslice.grad.diskcache` entry
        maps them from a file): :meth:`initializer` returns them, sessions get them from memory, :attr:`proto`,
        :meth:`full_proto` and :meth:`save` put them back."""
        self._proto = proto
        self.path = path
        self.notes = list(notes)
        self.opsets: dict[str, int] = {}
        for op in proto.opset_import:
            self.opsets["" if op.domain in ("", "ai.onnx") else op.domain] = int(op.version)
        g = proto.graph
        self._init_protos = {t.name: t for t in g.initializer}
        raw = [
            Node(
                name=n.name,
                op_type=n.op_type,
                domain="" if n.domain in ("", "ai.onnx") else n.domain,
                inputs=tuple(n.input),
                outputs=tuple(n.output),
                attrs=_decode_attrs(n),
                opset=self.opsets.get("" if n.domain in ("", "ai.onnx") else n.domain, 1),
            )
            for n in g.node
        ]
        self.nodes: list[Node] = topological_order(raw, [i.name for i in g.input], self._init_protos)
        self.inputs: list[ValueInfo] = [_value_info(i) for i in g.input if i.name not in self._init_protos]
        self.outputs: list[ValueInfo] = [_value_info(o) for o in g.output]
        vis: dict[str, ValueInfo] = {}
        for vi in list(g.value_info) + list(g.input) + list(g.output):
            vis[vi.name] = _value_info(vi)
        self.value_info = vis
        self._arrays: dict[str, np.ndarray] = dict(detached or {})
        #: initializers whose data lives only in the arrays (see ``detached`` above)
        self.detached: frozenset[str] = frozenset(detached or ())
        self._by_name = {n.name: n for n in self.nodes}
        self._producer = {o: n for n in self.nodes for o in n.outputs if o}
        cons: dict[str, list[Node]] = {}
        for n in self.nodes:
            for i in n.inputs:
                if i:
                    cons.setdefault(i, []).append(n)
        self._consumers = cons

    # -- lookups -------------------------------------------------------------------------------
    @property
    def proto(self) -> onnx.ModelProto:
        """The model as a ModelProto with every weight's data in it (:meth:`full_proto`: a copy when weights
        are :attr:`detached`; read :attr:`skeleton` for the graph's structure and metadata)."""
        return self.full_proto()

    @property
    def skeleton(self) -> onnx.ModelProto:
        """The ModelProto as held (do not mutate): :attr:`detached` weights are data-less external-data stubs
        there, so it is cheap to read for structure and metadata; :meth:`initializer` gives any weight."""
        return self._proto

    @property
    def graph(self) -> onnx.GraphProto:
        """The GraphProto of :attr:`skeleton` (do not mutate; :attr:`detached` initializers have no data
        there: use :meth:`initializer` or :meth:`whole_initializer`)."""
        return self._proto.graph

    @property
    def input_names(self) -> list[str]:
        """Names of the real (non-initializer) graph inputs."""
        return [i.name for i in self.inputs]

    @property
    def output_names(self) -> list[str]:
        """Names of the graph outputs."""
        return [o.name for o in self.outputs]

    @property
    def initializer_names(self) -> list[str]:
        """Names of all initializers (weights and constants)."""
        return list(self._init_protos)

    @property
    def parameter_names(self) -> list[str]:
        """The float initializers a training framework would hold as parameters, in initializer order.

        Every float initializer that some node uses as a trainable input: not the inputs an op declares
        constant (:attr:`OpInfo.constant_inputs <onnxslice.opsets.capabilities.info.OpInfo>`:
        BatchNormalization's running statistics, Clip's bounds), not inputs that carry no gradient, and
        not one-element operands of elementwise binary ops (epsilons, scale factors, exponents). For a
        model exported from PyTorch this is the set of its ``named_parameters()`` (tested); a learned
        scalar applied by a binary op (a temperature) is the exception: name it explicitly.
        """
        trained: set[str] = set()
        for n in self.nodes:
            info = self.info(n)
            for i, v in enumerate(n.inputs):
                if not v or v in trained or not self.is_initializer(v):
                    continue
                if i in info.constant_inputs or i in info.non_differentiable:
                    continue
                if info.family == "binary" and int(np.prod(self._init_protos[v].dims)) == 1:
                    continue
                trained.add(v)
        return [k for k in self._init_protos if k in trained and np.issubdtype(self.initializer(k).dtype, np.floating)]

    def is_initializer(self, name: str) -> bool:
        """Whether ``name`` is an initializer."""
        return name in self._init_protos

    def initializer(self, name: str) -> np.ndarray:
        """The initializer ``name`` as a numpy array (cached; do not mutate)."""
        if name not in self._arrays:
            if name not in self._init_protos:
                raise KeyError(f"'{name}' is not an initializer of this model")
            arr = numpy_helper.to_array(self._init_protos[name])
            arr.setflags(write=False)
            self._arrays[name] = arr
        return self._arrays[name]

    def node(self, name: str) -> Node:
        """The node called ``name``."""
        try:
            return self._by_name[name]
        except KeyError:
            raise ModelError(f"no node named '{name}' in the model") from None

    def producer(self, value: str) -> Node | None:
        """The node that computes ``value`` (None for inputs and initializers)."""
        return self._producer.get(value)

    def consumers(self, value: str) -> list[Node]:
        """The nodes that read ``value``."""
        return self._consumers.get(value, [])

    def info(self, node: Node) -> Any:
        """The op's static metadata (an ``OpInfo``)."""
        return REGISTRY.find("info", node.op_type, node.domain, node.opset) or default_info()

    # -- layers --------------------------------------------------------------------------------
    @cached_property
    def layers(self) -> list[Layer]:
        """SAfER layers in topological order: nodes owning a weight initializer."""
        out: list[Layer] = []
        for n in self.nodes:
            info = self.info(n)
            widx = next((i for i in info.layer_weights if self.is_initializer(n.input(i))), None)
            if widx is None:
                continue
            w = self.initializer(n.input(widx))
            if w.ndim < 2 or not np.issubdtype(w.dtype, np.floating):
                continue  # a scalar or integer constant operand is not a weight matrix
            b = n.input(info.bias_input) if info.bias_input is not None else ""
            bias = b if b and self.is_initializer(b) else None
            params = int(w.size) + (int(self.initializer(bias).size) if bias else 0)
            axis = info.weight_out_axis(n.attr, w.ndim, widx)
            groups = int(n.attr("group", 1)) if n.op_type == "ConvTranspose" else 1
            channels = int(w.shape[axis]) * groups
            out.append(Layer(n.name, n.op_type, n.input(widx), widx, bias, params, channels, n.outputs[0], axis))
        return out

    def layer(self, name: str) -> Layer:
        """The layer whose node is ``name``."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ModelError(f"no layer named '{name}'; layers are: {', '.join(x.name for x in self.layers) or '(none)'}")

    @property
    def num_params(self) -> int:
        """Scalars in all float initializers."""
        return int(
            sum(
                np.prod(t.dims, dtype=np.int64)
                for t in self._init_protos.values()
                if t.data_type
                in (
                    onnx.TensorProto.FLOAT,
                    onnx.TensorProto.FLOAT16,
                    onnx.TensorProto.DOUBLE,
                    onnx.TensorProto.BFLOAT16,
                )
            )
        )

    @cached_property
    def fingerprint(self) -> str:
        """A hash of the graph structure (names, ops, shapes), independent of weight values."""
        h = hashlib.sha1()
        for i in self.inputs:
            h.update(f"in:{i.name}:{i.describe()};".encode())
        for n in self.nodes:
            h.update(f"{n.op_type}:{','.join(n.inputs)}>{','.join(n.outputs)};".encode())
        for name, t in sorted(self._init_protos.items()):
            h.update(f"w:{name}:{list(t.dims)};".encode())
        return h.hexdigest()[:16]

    @cached_property
    def weights_fingerprint(self) -> str:
        """A hash of the weight values (every initializer's bytes); saved artifacts store it with
        :attr:`fingerprint` so that a result computed on other weights is refused at load."""
        h = hashlib.sha1()
        for name, t in sorted(self._init_protos.items()):
            h.update(f"{name}:{t.data_type}:{list(t.dims)};".encode())
            h.update(self.initializer(name).tobytes() if t.data_type != onnx.TensorProto.STRING else b"")
        return h.hexdigest()[:16]

    def op_histogram(self) -> dict[str, int]:
        """Count of nodes per op type (``domain::op`` outside the default domain)."""
        hist: dict[str, int] = {}
        for n in self.nodes:
            key = f"{n.domain}::{n.op_type}" if n.domain else n.op_type
            hist[key] = hist.get(key, 0) + 1
        return dict(sorted(hist.items(), key=lambda kv: (-kv[1], kv[0])))

    def with_proto(self, proto: onnx.ModelProto, note: str = "") -> Model:
        """A new Model from an edited copy of this one's proto (no re-checking)."""
        still = {t.name for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
        kept = {k: self._arrays[k] for k in self.detached & still}
        return Model(proto, None, [*self.notes, note] if note else self.notes, kept or None)

    def full_proto(self) -> onnx.ModelProto:
        """The proto with every initializer's data in it: :attr:`skeleton` itself, or a copy where weights
        are :attr:`detached`."""
        if not self.detached:
            return self._proto
        out = onnx.ModelProto()
        out.CopyFrom(self._proto)
        for t in out.graph.initializer:
            if t.name in self.detached:
                t.CopyFrom(self.whole_initializer(t))
        return out

    def whole_initializer(self, t: onnx.TensorProto) -> onnx.TensorProto:
        """The initializer ``t`` of :attr:`skeleton` with its data: ``t`` itself, or a tensor made from its
        array where it is :attr:`detached`."""
        if t.name not in self.detached:
            return t
        return numpy_helper.from_array(np.ascontiguousarray(self._arrays[t.name]), t.name)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the model atomically; refuses to overwrite the file it was loaded from."""
        return save_model(self.full_proto(), path, source=self.path)

    def __repr__(self) -> str:
        src = f" from '{self.path}'" if self.path else ""
        ops = ", ".join(f"{d or 'ai.onnx'}:{v}" for d, v in self.opsets.items())
        return (
            f"Model({len(self.nodes)} nodes, {len(self.layers)} layers, {self.num_params:,} params, opsets {ops}{src})"
        )


def load(
    source: str | os.PathLike[str] | onnx.ModelProto | bytes,
    *,
    check: bool = True,
    infer_shapes: bool = True,
    dequantize: bool | str = False,
) -> Model:
    """Load, validate and normalize an ONNX model.

    Args:
        source: a path to a ``.onnx`` file (external data beside it is loaded), a ``ModelProto``
            (copied, never modified), or serialized bytes.
        check: run the ONNX checker.
        infer_shapes: run ONNX shape inference so every intermediate value has a type.
        dequantize: load a pre-quantized model's float view (:mod:`onnxslice.dequantize`): integer ops
            become float ops on dequantized weights; a float model is unchanged. ``"strip"`` also removes
            the quantize-dequantize pairs of activations (the float model the rewrites edit).

    Returns:
        The normalized :class:`Model`.

    Raises:
        ModelError: the file is missing, truncated, not ONNX, lacks its external data, or the graph
            is invalid. The message names the file and what is wrong.
    """
    path: Path | None = None
    if isinstance(source, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(source)
        where = "the given ModelProto"
    elif isinstance(source, bytes):
        try:
            proto = onnx.load_model_from_string(source)
        except Exception as e:
            raise ModelError(f"the given bytes are not a serialized ONNX model: {e}") from e
        where = "the given bytes"
    else:
        path = Path(source)
        proto = _read(path)
        where = f"'{path}'"
    if not proto.HasField("graph") or len(proto.graph.node) == 0:
        raise ModelError(f"{where} holds no ONNX graph")
    if check:
        _check(proto, where)
    notes = _normalize(proto)
    if dequantize:
        notes += float_view(proto, "strip" if dequantize == "strip" else "keep")
    if infer_shapes:
        proto = _infer(proto, where)
    proto, arrays = _detach(proto)
    return Model(proto, path.resolve() if path else None, notes, arrays or None)


def save_model(
    proto: onnx.ModelProto,
    path: str | os.PathLike[str],
    *,
    source: Path | None = None,
    overwrite: bool = True,
) -> Path:
    """Write ``proto`` to ``path`` atomically (temporary file, then rename).

    Models over ~1.8 GB are written with external data in ``<name>.data`` beside the file.

    Raises:
        OnnxSliceError: ``path`` is the model's own source file, or exists and ``overwrite`` is off.
    """
    dest = Path(path)
    if source is not None and dest.resolve() == Path(source).resolve():
        raise OnnxSliceError(f"refusing to overwrite the input model '{dest}'; choose another output path")
    if dest.exists() and not overwrite:
        raise OnnxSliceError(f"'{dest}' exists; pass overwrite=True or choose another path")
    dest.parent.mkdir(parents=True, exist_ok=True)
    large = proto.ByteSize() >= EXTERNAL_DATA_THRESHOLD

    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=temp_prefix()) as tmp:
        tmp_model = Path(tmp) / dest.name
        if large:
            data_name = dest.name + ".data"
            onnx.save_model(
                proto, str(tmp_model), save_as_external_data=True, all_tensors_to_one_file=True, location=data_name
            )
            os.replace(Path(tmp) / data_name, dest.parent / data_name)
        else:
            onnx.save_model(proto, str(tmp_model))
        os.replace(tmp_model, dest)
    return dest
