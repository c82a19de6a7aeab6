"""Deployment formats of a quantized model, and the mixed-precision plan that keeps sensitive layers in float.

- ``qdq``: static int8 activations and weights (onnxruntime's ``quantize_static``, QDQ, per-channel
  int8 weights, uint8 activations), after onnxruntime's quantization pre-processing (shape inference
  and BatchNormalization folded into the Convs), so that onnxruntime fuses every DequantizeLinear ->
  op -> QuantizeLinear into an integer kernel. Layers named in ``exclude`` stay float (the
  modelopt/AIMET/Quark practice for the most sensitive layers).
- ``weight``: weight-only int8 (:mod:`~onnxslice.rewrite.weight_quant`): smaller, for memory-bound
  deployment; weights are dequantized at run time, so it is not faster on CPU.
- ``dynamic``: onnxruntime's ``quantize_dynamic``: int8 per-channel MatMul/Conv weights, activations
  quantized at run time from each batch's own range (``DynamicQuantizeLinear`` + ``MatMulInteger``), so
  no calibration range can clip; onnxruntime's recommendation for transformers and RNNs on CPU. Layers
  named in ``exclude`` stay float.
- ``nbits``: MatMul weights as onnxruntime's 4-bit ``MatMulNBits`` (other layers stay float).
- ``fp16``: the whole graph in float16 with float32 inputs and outputs (onnxruntime's
  ``convert_float_to_float16``): for GPUs; on CPU it is slower.

:func:`plan_float_layers` chooses the float layers: layers in order of a sensitivity (most sensitive
first) are kept float a few more at a time (0, 1, 2, 4, ... of them) until the QDQ model's top-1
agreement with the float model on the calibration data reaches the goal, or a latency budget (a
fraction of the float model's measured latency) would be exceeded. :func:`qdq_sensitivity` measures
that sensitivity directly: the top-1 agreement / KL gained by keeping each layer alone in float,
with one calibration shared by every trial (onnxruntime's calibration cache).
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxslice.cpu import int8_saturates
from onnxslice.errors import OnnxSliceError, PlanError
from onnxslice.model import Model
from onnxslice.record import as_feed, cuda_usable, make_session, runtime_proto, validate_inputs
from onnxslice.rewrite import matmul_nbits
from onnxslice.rewrite.bits_plan import uniform_plan
from onnxslice.rewrite.fidelity import compare_outputs, run_outputs
from onnxslice.rewrite.passes import FromProto, PassManager
from onnxslice.rewrite.plan import Plan
from onnxslice.rewrite.precision import quantizable_layers
from onnxslice.rewrite.quantize import quantize
from onnxslice.rewrite.static_quant import FeedReader
from onnxslice.session import median_ratios, timed_sessions

__all__ = ["FORMATS", "DynamicBuilder", "QdqBuilder", "QdqPlan", "fp16_convert", "plan_float_layers", "qdq_quantize",
           "qdq_sensitivity"]

FORMATS = ("qdq", "dynamic", "weight", "nbits", "fp16")


class _Quiet:
    """Silence onnxruntime's quantizer advice on the root logger and its calibrators' prints on stdout."""

    def __enter__(self) -> None:
        self.level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)
        self.out = contextlib.redirect_stdout(io.StringIO())
        self.out.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.out.__exit__(None, None, None)
        logging.getLogger().setLevel(self.level)


def _preprocessed(model: Model, prefix: str) -> tuple[tempfile.TemporaryDirectory[str], Path, list[str]]:
    """onnxruntime's quantization pre-processing of ``model`` in a new temporary folder: the folder, the
    pre-processed file in it, and the quantizable layers that survived pre-processing (by node name).

    Raises:
        OnnxSliceError: the pre-processing failed.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    tmp = tempfile.TemporaryDirectory(prefix=prefix)
    src = Path(tmp.name) / "float.onnx"
    onnx.save_model(runtime_proto(model.proto), str(src))
    pre = Path(tmp.name) / "pre.onnx"
    with _Quiet():
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        except Exception as e:
            tmp.cleanup()
            raise OnnxSliceError(f"onnxruntime's quantization pre-processing failed on this model: {e}") from e
    names = {n.name for n in onnx.load(str(pre), load_external_data=False).graph.node}
    return tmp, pre, [x.name for x in quantizable_layers(model) if x.name in names]


class QdqBuilder:
    """Pre-processes and calibrates once; builds QDQ models with any set of float layers.

    Args:
        model: the float model.
        calibration: calibration data (mapping, array or ``Dataset``).
        samples: at most this many calibration samples.
        batch_size: calibration batch size (1 when the model's batch axis is fixed).
        calibrate_method: ``minmax``, ``entropy`` or ``percentile``.
        selection: samples the trials of :func:`plan_float_layers` / :func:`qdq_sensitivity` are scored on
            (default: the calibration samples).
    """

    fmt = "qdq"

    def __init__(self, model: Model, calibration: Any, *, samples: int = 256, batch_size: int = 16,
                 calibrate_method: str = "minmax", selection: Any = None) -> None:
        from onnxruntime.quantization import CalibrationMethod

        if calibration is None:
            raise OnnxSliceError("qdq quantization needs calibration data (calibration=... / --data)")
        methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                   "percentile": CalibrationMethod.Percentile}
        if calibrate_method not in methods:
            raise PlanError(f"unknown calibrate_method '{calibrate_method}'; use one of {', '.join(methods)}")
        self.model = model
        self.method = methods[calibrate_method]
        feed = validate_inputs(model, as_feed(model, calibration))
        self.feed = {k: v[:samples] for k, v in feed.items()}
        fixed = model.inputs[0].shape[0] if model.inputs and model.inputs[0].shape else None
        self.reader = FeedReader(self.feed, 1 if isinstance(fixed, int) and fixed > 0 else batch_size)
        if selection is not None:
            self.feed = {k: v[:samples] for k, v in validate_inputs(model, as_feed(model, selection)).items()}
        self._tmp, self.pre, self.layers = _preprocessed(model, "onnxslice-qdq-")
        self.dir = Path(self._tmp.name)
        self.cache = self.dir / "calibration.json"
        self._n = 0

    def build(self, exclude: Iterable[str] = ()) -> onnx.ModelProto:
        """The QDQ model with the layers in ``exclude`` kept float."""
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        exclude = list(exclude)
        if exclude and not self.cache.is_file():
            self.build()  # calibrate every tensor once, so that any later set of float layers finds its ranges
        self._n += 1
        dst = self.dir / f"qdq{self._n}.onnx"
        self.reader.rewind()
        with _Quiet():
            try:
                quantize_static(str(self.pre), str(dst), self.reader, quant_format=QuantFormat.QDQ,
                                per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                nodes_to_exclude=list(exclude), calibrate_method=self.method,
                                calibration_cache_path=str(self.cache))
            except Exception as e:
                raise OnnxSliceError(f"onnxruntime's quantize_static failed on this model: {e}") from e
        proto = onnx.load(str(dst))
        dst.unlink()
        return proto

    def close(self) -> None:
        """Remove the temporary folder."""
        self._tmp.cleanup()


class DynamicBuilder:
    """Builds ``quantize_dynamic`` models (int8 weights, run-time activation ranges) with any set of float layers.

    The same interface as :class:`QdqBuilder` (``model``, ``feed``, ``layers``, ``build``, ``close``), so that
    :func:`plan_float_layers` and :func:`qdq_sensitivity` plan either format. ``data`` only scores the trials.

    Args:
        model: the float model.
        data: samples on which trials are scored (mapping, array or ``Dataset``; may be None).
        samples: at most this many of them.
        per_channel: per-output-channel weight scales (default True).
        reduce_range: 7-bit weights (onnxruntime's ``reduce_range``). None (default): where this CPU's
            uint8 x int8 kernels saturate (:func:`~onnxslice.cpu.int8_saturates`: x86 without VNNI), since
            the model's fidelity and latency are measured here; on such a CPU full-range int8 weights
            moved a test net's outputs by 5.8%, 7-bit ones by 1.8%.
    """

    fmt = "dynamic"

    def __init__(self, model: Model, data: Any = None, *, samples: int = 256, per_channel: bool = True,
                 reduce_range: bool | None = None) -> None:
        self.model = model
        self.per_channel = per_channel
        self.reduce_range = int8_saturates() if reduce_range is None else reduce_range
        feed = validate_inputs(model, as_feed(model, data)) if data is not None else {}
        self.feed = {k: v[:samples] for k, v in feed.items()}
        self._tmp, self.pre, self.layers = _preprocessed(model, "onnxslice-dyn-")
        self.dir = Path(self._tmp.name)
        self._n = 0

    def build(self, exclude: Iterable[str] = ()) -> onnx.ModelProto:
        """The dynamically quantized model with the layers in ``exclude`` kept float."""
        from onnxruntime.quantization import QuantType, quantize_dynamic

        self._n += 1
        dst = self.dir / f"dyn{self._n}.onnx"
        with _Quiet():
            try:
                quantize_dynamic(str(self.pre), str(dst), per_channel=self.per_channel, weight_type=QuantType.QInt8,
                                 nodes_to_exclude=list(exclude), reduce_range=self.reduce_range)
            except Exception as e:
                raise OnnxSliceError(f"onnxruntime's quantize_dynamic failed on this model: {e}") from e
        proto = onnx.load(str(dst))
        dst.unlink()
        if not any(n.op_type in ("DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul")
                   for n in proto.graph.node):
            raise PlanError("quantize_dynamic quantized no layer of this model (it takes MatMul/Conv weights); "
                            "use --format qdq or weight")
        return proto

    def close(self) -> None:
        """Remove the temporary folder."""
        self._tmp.cleanup()


def qdq_quantize(model: Model, calibration: Any, exclude: Iterable[str] = (), **options: Any) -> onnx.ModelProto:
    """Static int8 QDQ (see the module docstring); ``exclude`` names layers kept float."""
    b = QdqBuilder(model, calibration, **options)
    try:
        unknown = [n for n in exclude if n not in {x.name for x in model.layers}]
        if unknown:
            raise PlanError(f"cannot keep unknown layer(s) {', '.join(unknown[:5])} in float")
        return b.build(exclude)
    finally:
        b.close()


def fp16_convert(model: Model) -> onnx.ModelProto:
    """The whole graph in float16, inputs and outputs kept float32 (for GPUs)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    try:
        with _Quiet():
            out = convert_float_to_float16(proto, keep_io_types=True)
    except Exception as e:
        raise OnnxSliceError(f"onnxruntime's float16 conversion failed on this model: {e}") from e
    _toposort(out.graph)
    return out


def _toposort(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` topologically (the float16 converter appends its input Casts at the end)."""
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for n in pending:
            if all(i in ready for i in n.input):
                ordered.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise OnnxSliceError("the float16 graph has a cycle or a missing input (a bug)")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def _outputs(proto: onnx.ModelProto, feed: Mapping[str, np.ndarray], names: Sequence[str],
             batch: int = 64) -> list[np.ndarray]:
    sess = make_session(runtime_proto(proto), "cpu", optimize=True)
    n = len(next(iter(feed.values())))
    parts = [sess.run(list(names), {k: v[s : s + batch] for k, v in feed.items()}) for s in range(0, n, batch)]
    return [np.concatenate([p[i] for p in parts]) for i in range(len(names))]


def _score(ref: list[np.ndarray], out: list[np.ndarray]) -> tuple[float, float]:
    """(top-1 agreement or 1 - relative error, KL or squared relative error): higher first, lower second."""
    f = compare_outputs(ref, out)
    if f.top1_agreement is not None and f.kl is not None:
        return f.top1_agreement, f.kl
    return 1.0 - f.rel_error, f.rel_error**2


def eval_batch(fmt: str) -> int:
    """Batch size to score a format's fidelity with: 1 for ``dynamic`` (its activation ranges are taken over the
    whole batch, so a larger batch would score another model than the batch-1 one whose latency is measured)."""
    return 1 if fmt == "dynamic" else 64


def qdq_sensitivity(builder: QdqBuilder | DynamicBuilder, layers: Sequence[str] | None = None) -> dict[str, float]:
    """Measured sensitivity of each layer under QDQ (or dynamic): the KL removed by keeping it alone in float.

    One model per layer, built from the shared calibration; scored on the calibration samples
    against the float model (squared relative error when the output is not a class score).
    """
    names = list(layers or builder.layers)
    outs = builder.model.output_names
    ref = _outputs(builder.model.proto, builder.feed, outs)
    bs = eval_batch(builder.fmt)
    base = _score(ref, _outputs(builder.build(), builder.feed, outs, bs))[1]
    return {n: base - _score(ref, _outputs(builder.build([n]), builder.feed, outs, bs))[1] for n in names}


@dataclass
class QdqPlan:
    """Float layers chosen for a QDQ model, with what each trial measured.

    Attributes:
        exclude: layers kept float.
        proto: the chosen QDQ model.
        agreement: its top-1 agreement (or 1 - relative error) on the calibration data.
        latency: its measured latency ratio to the float model (None when not measured).
        trials: per number of float layers: agreement, KL and latency.
        met: whether the agreement goal was reached.
    """

    exclude: list[str]
    proto: onnx.ModelProto
    agreement: float
    latency: float | None
    trials: list[dict[str, Any]] = field(default_factory=list)
    met: bool = True


def plan_float_layers(
    builder: QdqBuilder | DynamicBuilder,
    order: Sequence[str],
    *,
    goal: float = 0.99,
    max_latency: float | None = None,
    max_float: int | None = None,
    device: str = "cpu",
    threads: int = 1,
    repeats: int = 15,
    latency_feed: Mapping[str, np.ndarray] | None = None,
) -> QdqPlan:
    """Keep the first 0, 1, 2, 4, ... layers of ``order`` in float until the agreement reaches ``goal``.

    Args:
        builder: the shared pre-processing and calibration.
        order: layers, most sensitive first.
        goal: top-1 agreement with the float model on the calibration data to reach.
        max_latency: stop before a trial whose measured latency ratio to float exceeds this.
        max_float: at most this many float layers (default: a quarter of the layers).
        device: provider of the latency measurement.
        threads: its intra-op threads.
        repeats: its round-robin repeats.
        latency_feed: inputs to time with (default: the first calibration sample).

    Returns:
        The first trial meeting the goal; else the most faithful trial within the latency budget.
    """
    outs = builder.model.output_names
    ref = _outputs(builder.model.proto, builder.feed, outs)
    cap = min(len(order), max(1, len(order) // 4) if max_float is None else max_float)
    counts = [0]
    while counts[-1] < cap:
        counts.append(min(cap, max(1, counts[-1] * 2)))
    x = dict(latency_feed) if latency_feed is not None else {k: v[:1] for k, v in builder.feed.items()}
    trials: list[dict[str, Any]] = []
    best: tuple[float, float, list[str], onnx.ModelProto, float | None] | None = None
    for k in counts:
        exclude = list(order[:k])
        proto = builder.build(exclude)
        agree, kl = _score(ref, _outputs(proto, builder.feed, outs, eval_batch(builder.fmt)))
        lat = None
        if max_latency is not None:
            lat = median_ratios(timed_sessions([builder.model.proto, proto], device, threads), x, repeats)[1][1]
        trials.append({"float_layers": k, "agreement": agree, "kl": kl, "latency": lat})
        if lat is not None and max_latency is not None and lat > max_latency and k > 0:
            break
        if best is None or (agree, -kl) > (best[0], -best[1]):
            best = (agree, kl, exclude, proto, lat)
        if agree >= goal:
            return QdqPlan(exclude, proto, agree, lat, trials, True)
    assert best is not None
    return QdqPlan(best[2], best[3], best[0], best[4], trials, False)


def _finish(proto: onnx.ModelProto, model: Model, fmt: str, extra: Mapping[str, Any]) -> Model:
    plan = Plan("quantize", {n: ("fp32" if n in extra.get("float_layers", ()) else fmt)
                             for n in extra.get("layers", ())}, f"format-{fmt}", dict(extra.get("meta", {})))
    built = FromProto(f"format-{fmt}", lambda _: proto)  # the format's builder ran already (onnxruntime's tools)
    info = {"format": fmt, **{k: v for k, v in extra.items() if k not in ("layers", "meta")}}
    return PassManager("quantize", [built]).run(model, plan=plan, extra=info).model


def convert(model: Model, fmt: str, calibration: Any = None, *, exclude: Sequence[str] = (), block_size: int = 32,
            builder: QdqBuilder | DynamicBuilder | None = None, proto: onnx.ModelProto | None = None) -> Model:
    """The model in deployment format ``fmt`` (checked, provenance in ``metadata_props``).

    Args:
        model: the float model.
        fmt: ``qdq``, ``dynamic``, ``weight``, ``nbits`` or ``fp16``.
        calibration: calibration data (``qdq`` needs it).
        exclude: ``qdq``/``dynamic``: layers kept float.
        block_size: ``nbits`` block size.
        builder: a :class:`QdqBuilder` (``qdq``, its calibration) or :class:`DynamicBuilder` (``dynamic``) to reuse.
        proto: an already built model of this format (only finalized here).

    Raises:
        PlanError: an unknown format, or ``nbits`` on a model without a MatMul weight it can take.
    """
    if fmt not in FORMATS:
        raise PlanError(f"unknown format '{fmt}'; use one of {', '.join(FORMATS)}")
    layers = [x.name for x in quantizable_layers(model)]
    if fmt == "weight":
        return quantize(model, uniform_plan(model, "int8"), calibration, mode="weight")
    if fmt == "nbits":
        ok = [x.name for x in quantizable_layers(model) if matmul_nbits.eligible(model, x, block_size)]
        if not ok:
            raise PlanError("no MatMul weight of this model can be stored as MatMulNBits (a 2-D right-hand float32 "
                            "weight is needed); use --format qdq or weight")
        return quantize(model, Plan("quantize", dict.fromkeys(ok, "int4"), "format-nbits"), calibration,
                        mode="weight", block_size=block_size)
    if fmt == "fp16":
        return _finish(proto if proto is not None else fp16_convert(model), model, fmt, {"layers": layers})
    if fmt == "dynamic":
        b = builder if isinstance(builder, DynamicBuilder) else None
        if proto is None:
            b = b if b is not None else DynamicBuilder(model)
            try:
                proto = b.build(exclude)
            finally:
                if b is not builder:
                    b.close()
        meta: dict[str, Any] = {"float_layers": list(exclude)}
        if b is not None:
            meta["reduce_range"] = b.reduce_range
        return _finish(proto, model, "dynamic", {"layers": layers, "float_layers": list(exclude), "meta": meta})
    if proto is None:
        proto = builder.build(exclude) if builder is not None else qdq_quantize(model, calibration, exclude)
    meta = {"float_layers": list(exclude)}
    return _finish(proto, model, "qdq", {"layers": layers, "float_layers": list(exclude), "meta": meta})


def device_of(device: str) -> str:
    """``auto`` -> ``cuda`` where onnxruntime can use it, else ``cpu``."""
    if device != "auto":
        return device

    return "cuda" if cuda_usable() else "cpu"


def matmul_dominated(model: Model) -> bool:
    """Whether at least half of the quantizable layers are MatMul/Gemm (where ``dynamic`` is worth trying)."""
    layers = quantizable_layers(model)
    return bool(layers) and 2 * sum(x.op_type in ("MatMul", "Gemm") for x in layers) >= len(layers)


def default_formats(device: str) -> tuple[str, ...]:
    """The formats worth trying on ``device``, fastest-first guess (the measurement decides)."""
    return ("fp16", "qdq") if device == "cuda" else ("qdq", "dynamic", "weight", "nbits")


def compare(model: Model, variants: Mapping[str, Model], data: Any, *, device: str = "cpu", threads: int = 1,
            repeats: int = 15, batch: int = 1) -> list[dict[str, Any]]:
    """Latency (round-robin with the float model, median per-repeat ratio) and fidelity of each variant.

    Returns one row per variant (and the float model first): format, latency ratio and ms, parameters still
    float (the others are stored quantized), file bytes,
    top-1 agreement, KL, accuracy where ``data`` has labels.
    """
    feed = validate_inputs(model, as_feed(model, data))
    x = {k: v[:batch] for k, v in feed.items()}
    names = ["fp32", *variants]
    models = [model, *variants.values()]
    ms, ratios = median_ratios(timed_sessions([m.proto for m in models], device, threads), x, repeats)
    labels = getattr(data, "labels", None)
    ref = run_outputs(model, data)
    rows = []
    for name, m, t, r in zip(names, models, ms, ratios, strict=True):
        f = compare_outputs(ref, ref if m is model else run_outputs(m, data, eval_batch(name)), labels)
        rows.append({"format": name, "latency": round(r, 4), "latency_ms": round(t, 4), "float_params": m.num_params,
                     "bytes": m.proto.ByteSize(),
                     "top1_agreement": f.top1_agreement, "kl": f.kl, "accuracy": f.accuracy,
                     "rel_error": f.rel_error})
    return rows


def pick(rows: Sequence[Mapping[str, Any]], goal: float = 0.01) -> tuple[str, bool]:
    """The fastest variant faster than float whose top-1 agreement is within ``goal`` of 1 (or whose
    relative error is below ``goal`` without class scores); else the most faithful one faster than
    float; else ``fp32``. Returns (format, whether the goal was met)."""
    def ok(r: Mapping[str, Any]) -> bool:
        a = r["top1_agreement"]
        return (a >= 1.0 - goal - 1e-12) if a is not None else r["rel_error"] <= goal

    cands = [r for r in rows if r["format"] != "fp32" and r["latency"] < 1.0]
    good = [r for r in cands if ok(r)]
    if good:
        return str(min(good, key=lambda r: r["latency"])["format"]), True
    if cands:
        best = max(cands, key=lambda r: ((r["top1_agreement"] or 0.0), -(r["kl"] or r["rel_error"])))
        return str(best["format"]), False
    return "fp32", False
