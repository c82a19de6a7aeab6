"""The backward pass as an ONNX graph: :func:`emit_gradient_model`.

The gradient model holds the model's own forward nodes and weights, the target (computed in the
graph from the logits, as :class:`~onnxslice.targets.BoundTarget` does in numpy) and, for each
backward step of a :class:`~onnxslice.grad.GradientEngine`, the nodes its VJP rule emits when run on
:class:`~onnxslice.grad.lowering.OnnxPrims` -- the same rule definitions the eager engine runs.

Inputs: the model's inputs, plus ``labels`` (int64 ``[N]``) for ``target="loss"`` or ``cotangent``
(shaped like the output) for ``target="cotangent"`` (the graph is then the model's plain
vector-Jacobian product, ``target = sum(cotangent * output)`` over every axis but the first). Outputs:
``target`` (float64 ``[N]``, the per-sample target values), then ``grad:<weight>`` (summed over the
batch) and ``grad:<input>`` for every weight and input the engine differentiates.

Shape policy: every shape is that of the sample the graph was traced on, batch included; the model's
inputs are declared with those shapes and ``metadata_props`` records them
(``onnxslice.grad.shapes``). Run it on batches of exactly that size.
"""

from __future__ import annotations

import datetime
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import helper

from onnxslice.errors import DataError, OnnxSliceError, UnsupportedOpError
from onnxslice.opsets.capabilities.vjp import PerSampleUnsupported, VjpContext
from onnxslice.opsets.vjp.prims import NotEmittable, PrimRule
from onnxslice.session import MEMORY_LOCATION, memory_stub
from onnxslice.version import __version__

from .lowering import MIN_OPSET, GraphBuilder, OnnxPrims, Sym, tensor_type

if TYPE_CHECKING:
    from .engine import GradientEngine

__all__ = [
    "EMIT_TARGETS",
    "FED_LOCATION",
    "EmissionError",
    "emission_error",
    "emit_gradient_model",
    "fed_weights",
    "grad_output_name",
    "run_emitted",
]

#: Targets the emitted graph computes itself.
EMIT_TARGETS = ("pred", "class", "loss", "output-norm", "cotangent")


class EmissionError(OnnxSliceError):
    """The gradient graph cannot be emitted for this model or target (exit 3: unsupported)."""

    exit_code = 3


def grad_output_name(source: str) -> str:
    """The output name of the gradient of weight or input ``source`` in an emitted model."""
    return f"grad:{source}"


def _hint(why: str) -> str:
    return f"{why}; run `onnxslice grad` without --emit (the eager engine differentiates it)."


def _seed(
    P: OnnxPrims, b: GraphBuilder, engine: GradientEngine, z: Sym, labels: Sym | None
) -> tuple[Sym, Sym]:
    """The target values ``[N]`` (float64) and the cotangent of the target value ``z`` [N, C]."""
    kind = engine.target.kind
    n, c = z.shape
    f64 = np.dtype(np.float64)
    if kind == "output-norm":
        zz = P.cast(z, f64)
        norm = P.sqrt(P.reduce_sum(P.mul(zz, zz), (1,)))
        safe = P.where(P.compare(">", norm, 0.0), norm, 1.0)
        return norm, P.cast(P.div(zz, P.reshape(safe, (n, 1))), z.dtype)
    if kind == "pred":
        (idx,) = b.node("ArgMax", [z.name], axis=1, keepdims=1)
        choice = Sym(idx, (n, 1), np.dtype(np.int64))
    elif kind == "class":
        k = engine.target.classes[0]
        if not 0 <= k < c:
            raise DataError(f"target class {k} is out of range: value '{engine.value}' has {c} classes (0..{c - 1})")
        choice = P.lift(np.full((n, 1), k, np.int64))
    else:
        assert labels is not None
        choice = P.reshape(labels, (n, 1))
    onehot = P.compare("==", choice, P.lift(np.arange(c, dtype=np.int64).reshape(1, c)))
    zz = P.cast(z, f64)
    (picked,) = b.node("GatherElements", [zz.name, choice.name], axis=1)
    score = P.reshape(Sym(picked, (n, 1), f64), (n,))
    if kind != "loss":
        return score, P.cast(onehot, z.dtype)
    m = P.reduce_max(zz, (1,), keepdims=True)
    (e,) = b.node("Exp", [P.sub(zz, m).name])
    s = P.reduce_sum(Sym(e, (n, c), f64), (1,), keepdims=True)
    (lg,) = b.node("Log", [s.name])
    lse = P.reshape(P.add(Sym(lg, (n, 1), f64), m), (n,))
    p = P.div(Sym(e, (n, c), f64), s)
    return P.sub(lse, score), P.cast(P.sub(p, P.cast(onehot, f64)), z.dtype)


def emit_gradient_model(
    engine: GradientEngine,
    sample: Mapping[str, np.ndarray],
    *,
    source: str = "",
    trace_device: str | None = None,
    fed_min: int | None = None,
) -> onnx.ModelProto:
    """The standalone gradient model of ``engine``'s target, traced on ``sample`` (its shapes are kept).

    Args:
        engine: the engine (its model, target, weights and inputs select what is emitted).
        sample: one batch of model inputs (validated feed); fixes every shape of the graph.
        source: the model's file name, recorded in ``metadata_props``.
        trace_device: record the sample's forward values on this device with a fresh recorder (default:
            the engine's own recorder).
        fed_min: for an in-process session only: float weights of the model with at least this many
            elements are left out of the proto (external-data stubs, see :data:`FED_LOCATION`) and are
            handed to onnxruntime from the model's own arrays (:func:`fed_weights`), so neither the proto
            nor its serialized bytes copy them. Such a model is not checked or written.

    Returns:
        A model that passes ``onnx.checker.check_model(full_check=True)`` (without ``fed_min``).

    Raises:
        EmissionError: a target or model the emission does not handle.
        UnsupportedOpError: a node on the gradient path whose VJP rule is not written against the primitives.
    """
    m = engine.model
    opset = m.opsets.get("", 1)
    if opset < MIN_OPSET:
        raise EmissionError(f"the model uses opset {opset}; gradient emission needs opset {MIN_OPSET} or later "
                            "(convert it with onnx.version_converter)")
    if engine.target.kind not in EMIT_TARGETS or (engine.target.kind == "class" and len(engine.target.classes) != 1):
        raise EmissionError(f"target '{engine.target.spec}' cannot be emitted as a graph; use one of pred, class:K, "
                            "loss, output-norm, cotangent")
    steps = engine.emission_steps
    if steps is engine.steps and (trace_device is None or trace_device == engine.device):
        vals = engine.recorder.run(dict(sample), validated=True)
    else:  # another device, or the unfused steps: their values, recorded once for their shapes (no arena:
        # its buffers go back before the graph's session is built)
        rec = engine.make_recorder(engine.emission_values, trace_device, arena=False)  # type: ignore[arg-type]
        vals = rec.run(dict(sample), validated=True)
        del rec
    n = len(next(iter(sample.values())))
    z_arr = vals[engine.value]
    static = engine._static
    # the computed values only lend their shapes and dtypes, except those computed from weights alone
    traced = {k: (v.shape, v.dtype) for k, v in vals.items()}
    vals = {k: v for k, v in vals.items() if k in static}
    lay = engine.bound.layout(z_arr, n)
    cot = engine.target.kind == "cotangent"
    if z_arr.dtype.kind != "f" or (not cot and (z_arr.ndim != 2 or lay.batch != 0)):
        raise EmissionError(f"target value '{engine.value}' has shape {list(z_arr.shape)}: gradient emission needs "
                            "float [samples, classes] logits")
    b = GraphBuilder(opset)
    P = OnnxPrims(b)

    def sym(name: str) -> Sym | None:
        if not name:
            return None
        if m.is_initializer(name):
            arr = m.initializer(name)
            return Sym(name, arr.shape, arr.dtype, arr)
        if name in vals:
            const = np.asarray(vals[name])
            return Sym(name, const.shape, const.dtype, const)
        if name in traced:
            return Sym(name, *traced[name], None)
        if name not in sample:
            return None
        arr = np.asarray(sample[name])
        return Sym(name, arr.shape, arr.dtype, arr if name in static else None)

    z = sym(engine.value)
    assert z is not None
    labels = Sym("labels", (n,), np.dtype(np.int64)) if engine.target.kind == "loss" else None
    if cot:
        labels = Sym("cotangent", z.shape, z.dtype)
        prod = P.cast(P.mul(labels, z), np.float64)
        f = P.reduce_sum(prod, tuple(range(1, len(z.shape)))) if len(z.shape) > 1 else prod
        seed = labels
    else:
        f, seed = _seed(P, b, engine, z, labels)
    grads: dict[str, Sym] = {engine.value: seed}
    for step in steps:
        node = step.node
        out_grads: list[Any] = [grads.pop(o, None) if o else None for o in node.outputs]
        if all(g is None for g in out_grads):
            continue
        rule = step.rule
        if not isinstance(rule, PrimRule) or rule.prim is None:
            raise UnsupportedOpError.for_node(
                node, "vjp emission", _hint(f"the VJP rule of {node.op_type} is not yet written against the primitives")
            )
        ins = [sym(v) for v in node.inputs]
        outs = [sym(o) for o in node.outputs]
        if out_grads[0] is None and outs[0] is not None:
            out_grads[0] = P.zeros_like(outs[0])
        ste = m.info(node).straight_through
        needs = tuple(
            nd and ins[i] is not None and (ste or ins[i].dtype.kind == "f")  # type: ignore[union-attr]
            for i, nd in enumerate(step.needs)
        )
        vctx = VjpContext(node, ins, outs, out_grads, needs)
        try:
            res = rule.prim(P, vctx)
        except (NotEmittable, PerSampleUnsupported) as e:
            raise UnsupportedOpError.for_node(node, "vjp emission", _hint(str(e))) from e
        for i, r in enumerate(res):
            if r is None or not needs[i]:
                continue
            name = node.inputs[i]
            grads[name] = P.add(grads[name], r) if name in grads else r
    outputs = [helper.make_tensor_value_info("target", onnx.TensorProto.DOUBLE, list(P.shape(f)))]
    b.nodes.append(helper.make_node("Identity", [f.name], ["target"], name="grad/target"))
    for src in [*engine.weight_names, *engine.input_names]:
        if src in engine.input_names:
            arr = np.asarray(sample[src])
            shape, dtype = arr.shape, arr.dtype
        else:
            w = m.initializer(src)
            shape, dtype = w.shape, w.dtype
        g = grads.get(src)
        if g is None:  # the target does not depend on it
            g = P.lift(np.zeros(shape, dtype=dtype))
        out = grad_output_name(src)
        b.nodes.append(helper.make_node("Identity", [g.name], [out], name=f"grad/out/{src}"))
        outputs.append(helper.make_tensor_value_info(out, tensor_type(dtype), list(shape)))
    return _assemble(engine, sample, b, outputs, labels, source, fed_min)


def _live(nodes: list[Any], inits: list[Any], outputs: list[str]) -> tuple[list[Any], list[Any]]:
    """The nodes (in order) and initializers the outputs depend on (the forward's other branches go)."""
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    keep: set[int] = set()
    used: set[str] = set()
    stack = list(outputs)
    while stack:
        v = stack.pop()
        if v in used:
            continue
        used.add(v)
        i = producer.get(v)
        if i is not None and i not in keep:
            keep.add(i)
            stack.extend(x for x in nodes[i].input if x)
    return [n for i, n in enumerate(nodes) if i in keep], [t for t in inits if t.name in used]


def _assemble(
    engine: GradientEngine,
    sample: Mapping[str, np.ndarray],
    b: GraphBuilder,
    outputs: list[Any],
    labels: Sym | None,
    source: str,
    fed_min: int | None = None,
) -> onnx.ModelProto:
    m = engine.model
    src = m.skeleton.graph
    taken = {v for n in src.node for v in (*n.input, *n.output)} | {t.name for t in src.initializer}
    taken |= {i.name for i in src.input}
    ours = [o.name for o in outputs] + ([labels.name] if labels is not None else [])
    clash = [v for v in ours if v in taken] + sorted({v for n in b.nodes for v in n.output} & taken)
    if clash:
        raise EmissionError(f"the model already has a value named '{clash[0]}', which the gradient graph needs; "
                            "rename it in the model first")
    inputs = []
    for vi in src.input:
        if m.is_initializer(vi.name):
            continue
        arr = np.asarray(sample[vi.name])
        inputs.append(helper.make_tensor_value_info(vi.name, tensor_type(arr.dtype), list(arr.shape)))
    if labels is not None:
        inputs.append(helper.make_tensor_value_info(labels.name, tensor_type(labels.dtype), list(labels.shape)))
    nodes, inits = _live([*src.node, *b.nodes], [*src.initializer, *b.initializers], [o.name for o in outputs])
    if fed_min is not None:
        inits = [memory_stub(t) if _is_fed(m, t, fed_min) else t for t in inits]
    else:  # a standalone graph holds every weight, detached ones (Model.detached) included
        inits = [m.whole_initializer(t) for t in inits]
    graph = helper.make_graph(nodes, f"{src.name or 'model'}_grad", inputs, outputs, initializer=inits)
    opsets = [o for o in m.skeleton.opset_import]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=min(m.skeleton.ir_version or 8, 10),
                              producer_name="onnxslice")
    model.functions.extend(m.skeleton.functions)
    shapes = ", ".join(f"{k}={list(np.shape(v))}" for k, v in sample.items())
    meta = {
        "onnxslice.version": __version__,
        "onnxslice.command": "grad --emit",
        "onnxslice.grad.source": source,
        "onnxslice.grad.target": f"{engine.target.spec} on '{engine.value}'",
        "onnxslice.grad.outputs": "target: float64 [N] per-sample target; grad:<name>: gradient summed over the batch",
        "onnxslice.grad.shapes": f"static, traced at {shapes}: run with exactly these shapes",
        "onnxslice.grad.weights": str(len(engine.weight_names)),
        "onnxslice.grad.inputs": ",".join(engine.input_names),
        "onnxslice.grad.rules": "VJP rules on onnxslice.opsets.vjp.prims, lowered by onnxslice.grad.lowering",
        "onnxslice.created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    if fed_min is None:
        note = _full_check(model, engine.model.full_proto())
        if note:
            meta["onnxslice.grad.check"] = note
    for k, v in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    return model


def _full_check(model: onnx.ModelProto, source: onnx.ModelProto) -> str:
    """``check_model(full_check=True)`` on the gradient graph; "" when it passes.

    When onnx's own checker cannot check the *source* model in full either (its shape inference fails on
    some op's function body: MeanVarianceNormalization from opset 13 in onnx 1.23), the gradient graph
    gets the structural check only, and the note returned says so (it goes into the metadata). A gradient
    graph that fails where its source passes is a bug in the emission and raises.
    """
    try:
        onnx.checker.check_model(model, full_check=True)
        return ""
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        try:
            onnx.checker.check_model(source, full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as src:
            onnx.checker.check_model(model)
            reason = str(src).strip().splitlines()[0][:200]
            warnings.warn(f"onnx's full check fails on the source model itself ({reason}); the gradient graph "
                          "passed the structural check only", stacklevel=3)
            return f"structural check only: onnx's full check fails on the source model itself ({reason})"
        raise OnnxSliceError(f"the emitted gradient graph fails onnx's full check (a bug in onnxslice; please "
                             f"report it with the model): {str(e).strip().splitlines()[0][:300]}") from e


#: The external-data location of weights that :func:`emit_gradient_model` (``fed_min``) leaves out.
FED_LOCATION = MEMORY_LOCATION


def _is_fed(m: Any, t: onnx.TensorProto, fed_min: int) -> bool:
    if t.name in m.detached:  # its data is only in memory
        return True
    if not m.is_initializer(t.name) or t.data_location == onnx.TensorProto.EXTERNAL:
        return False
    if t.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
        return False
    return int(np.prod(t.dims)) >= fed_min


def fed_weights(proto: onnx.ModelProto, model: Any) -> dict[str, np.ndarray]:
    """The model's arrays of the weights ``proto`` leaves out (:data:`FED_LOCATION`), by name."""
    fed = {}
    for t in proto.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL and any(
            e.key == "location" and e.value == FED_LOCATION for e in t.external_data
        ):
            fed[t.name] = np.ascontiguousarray(model.initializer(t.name))
    return fed


def run_emitted(
    proto: onnx.ModelProto, feed: Mapping[str, np.ndarray], labels: np.ndarray | None = None, *, optimize: bool = False
) -> dict[str, np.ndarray]:
    """Run an emitted gradient model on the CPU provider (graph optimizations off unless ``optimize``).

    ``labels`` feeds the ``labels`` input (loss) or the ``cotangent`` input (cotangent target).

    With optimizations on, onnxruntime fuses the forward (Conv with BatchNormalization, ...), so the
    backward reads forward values that differ in the last bits; at ReLU/Clip kinks that can move a
    cotangent. Off, the graph computes exactly what the rules say.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    so.log_severity_level = 3
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    run_feed = dict(feed)
    if any(i.name == "cotangent" for i in sess.get_inputs()):
        run_feed["cotangent"] = np.asarray(labels)
    elif any(i.name == "labels" for i in sess.get_inputs()):
        if labels is None:
            raise DataError("target 'loss' needs labels (class per sample)")
        run_feed["labels"] = np.asarray(labels, dtype=np.int64)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, run_feed), strict=True))


def emission_error(engine: GradientEngine, proto: onnx.ModelProto, feed: Mapping[str, np.ndarray],
                   labels: np.ndarray | None = None) -> float:
    """Largest difference between the emitted graph and the eager engine on ``feed``.

    Per gradient, ``max |emitted - eager|`` over ``max |eager|`` of all gradients of the same kind
    (weights, inputs), so that gradients that are zero in exact arithmetic do not divide by rounding noise.
    Where the engine records with onnxruntime's optimizations on (fused chains), the graph runs with
    them on too, so both decide their gates on the same fused forward.
    """
    res = run_emitted(proto, feed, labels, optimize=engine.recording_optimized)  # the forward the engine records
    cot = engine.target.kind == "cotangent"
    g = engine(dict(feed), cotangent=labels if cot else None, labels=None if cot else labels)
    worst = 0.0
    for group in (g.weights, g.inputs):
        scale = max((float(np.max(np.abs(v))) for v in group.values() if v.size), default=0.0) or 1.0
        for k, v in group.items():
            if v.size:
                worst = max(worst, float(np.max(np.abs(res[grad_output_name(k)] - v))) / scale)
    return worst
