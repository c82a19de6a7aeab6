"""Check gradients against central finite differences through onnxruntime (JAX ``check_vjp`` style).

For random output cotangents ``c`` and a random direction ``v`` (entries uniform in [-1, 1]) over
every float input and weight, the engine's ``<grad, v>`` must match ``(phi(h) - phi(-h)) / 2h`` with
``phi(t) = <c, f(x + t v)>`` evaluated by onnxruntime on the untouched model. Tolerances are keyed by dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from onnxslice.errors import DataError, OnnxSliceError
from onnxslice.model import Model, load
from onnxslice.record import Recorder, runtime_proto

from .engine import GradientEngine

__all__ = ["APPROXIMATE_IN_REFERENCE", "TOLERANCES", "VjpCheck", "as_double", "check_vjp"]

#: dtype -> (finite-difference step, relative tolerance)
TOLERANCES: dict[str, tuple[float, float]] = {"float64": (1e-6, 1e-5), "float32": (1e-3, 3e-3), "float16": (3e-2, 5e-2)}


@dataclass(frozen=True)
class VjpCheck:
    """The outcome of :func:`check_vjp`.

    Attributes:
        analytic: ``<grad, v>`` summed over every source.
        numeric: the central finite difference.
        rel_error: ``|analytic - numeric| / max(|analytic|, |numeric|, scale)``.
        tolerance: the dtype's tolerance.
        sources: the names the direction moved.
        resolution: the relative error that rounding the moved values and the outputs to their
            dtype alone brings to the difference (``eps * ||(g x, c y)||_2 / h``); when it nears the
            tolerance the comparison is meaningless.
        kink: the one-sided differences disagree (the function is not differentiable at this point
            along the direction, e.g. an input exactly at a Relu's 0 or a tie in a max): the
            comparison says nothing about the rule.
    """

    analytic: float
    numeric: float
    rel_error: float
    tolerance: float
    sources: tuple[str, ...]
    kink: bool = False
    resolution: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether the relative error is within tolerance."""
        return self.rel_error <= self.tolerance

    def __repr__(self) -> str:
        return (
            f"VjpCheck({'ok' if self.ok else 'FAILED'}: analytic {self.analytic:.8g}, numeric {self.numeric:.8g}, "
            f"rel. error {self.rel_error:.2e} (tol {self.tolerance:.0e}), {len(self.sources)} sources)"
        )


def as_double(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``proto`` computing in float64: float/float16 inputs, outputs, weights and casts become double."""
    half = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    g = out.graph
    for vi in [*g.input, *g.output]:
        if vi.type.tensor_type.elem_type in half:
            vi.type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
    del g.value_info[:]
    for i, t in enumerate(g.initializer):
        if t.data_type in half:
            g.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))
    for node in g.node:
        for a in node.attribute:
            if node.op_type == "Cast" and a.name == "to" and a.i in half:
                a.i = onnx.TensorProto.DOUBLE
            elif a.type == onnx.AttributeProto.TENSOR and a.t.data_type in half:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float64), a.t.name))
    return out


#: ops whose onnx.reference kernel approximates the function (erf to ~1e-8): float64 differences
#: through the reference evaluator measure the approximation, not the rule
APPROXIMATE_IN_REFERENCE = frozenset({"Erf", "Gelu"})

Runner = Callable[[Mapping[str, np.ndarray], Mapping[str, np.ndarray]], dict[str, np.ndarray]]


def _ort_runner(m: Model, values: Sequence[str], weights: Sequence[str]) -> Runner:
    rec = Recorder(m, list(values), "cpu", weight_inputs=weights)
    return lambda feed, w: rec.run(feed, validated=True, weights=dict(w) or None)


def _reference_runner(m: Model, values: Sequence[str], weights: Sequence[str]) -> Runner:
    from onnx.reference import ReferenceEvaluator

    proto = runtime_proto(m.full_proto(), [*m.output_names, *values], weights)
    ev = ReferenceEvaluator(proto)
    names = [o.name for o in proto.graph.output]

    def run(feed: Mapping[str, np.ndarray], w: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        full = {**feed, **{k: m.initializer(k) for k in weights}, **w}
        try:
            res = ev.run(None, full)
        except Exception as e:  # the reference kernels raise whatever numpy raises
            raise OnnxSliceError(f"onnx.reference cannot run this model: {e}") from e
        return {k: np.asarray(v) for k, v in zip(names, res, strict=True)}

    return run


def check_vjp(
    model: Model | Any,
    inputs: Mapping[str, np.ndarray],
    *,
    seed: int = 0,
    exact: bool = True,
    step: float | None = None,
    tolerance: float | None = None,
    fixed: Sequence[str] = (),
    backend: str = "onnxruntime",
) -> VjpCheck:
    """Compare the engine's gradients with central finite differences along a random direction.

    Every float output gets a random cotangent; every float input and float initializer is moved.
    The VJP rules run on the forward values of the same backend as the finite differences.

    Args:
        model: a Model, path or ModelProto.
        inputs: arrays keyed by input name.
        seed: random seed for the cotangents and the direction.
        exact: refuse ops with no VJP rule (default) rather than checking the fallback.
        step: finite-difference step (default: by dtype, see :data:`TOLERANCES`).
        tolerance: relative tolerance (default: by dtype).
        fixed: float initializers or inputs to leave where they are (parameters that carry no
            gradient by definition, such as Clip bounds).
        backend: ``"onnxruntime"`` (the model as it is), or ``"reference"``: the model converted to
            float64 (:func:`as_double`) and run by ONNX's reference evaluator, for ops that
            onnxruntime only runs in float32.

    Raises:
        DataError: no float output, nothing to move, or outputs that are not finite.
    """
    if backend == "reference":
        proto = model.full_proto() if isinstance(model, Model) else load(model).proto
        m = load(as_double(proto))
    else:
        m = model if isinstance(model, Model) else load(model)
    declared = {vi.name: vi.dtype for vi in m.inputs}
    feed = {k: np.asarray(v, dtype=declared.get(k) or np.asarray(v).dtype) for k, v in inputs.items()}
    outs = [o.name for o in m.outputs if o.dtype is None or np.issubdtype(o.dtype, np.floating)]
    if not outs:
        raise DataError("the model has no float output to differentiate")
    weights = [w for w in m.initializer_names if np.issubdtype(m.initializer(w).dtype, np.floating) and w not in fixed]
    engine = GradientEngine(m, "cotangent", weights=weights, exact=exact, output=outs, device="cpu")
    make = _reference_runner if backend == "reference" else _ort_runner
    run = make(m, engine.record_values, weights)
    rng = np.random.default_rng(seed)
    base = run(feed, {})
    bad = [o for o in outs if not np.all(np.isfinite(base[o]))]
    if bad:
        raise DataError(f"output(s) {', '.join(bad)} are not finite at this point: nothing to compare")
    cots = {o: rng.standard_normal(base[o].shape).astype(base[o].dtype) for o in outs}
    grads = engine.vjp_from_values(feed, base, cots)
    float_in = [k for k, v in feed.items() if np.issubdtype(v.dtype, np.floating) and k not in fixed]
    # entries in [-1, 1]: a step h moves no element by more than h, so inputs spaced wider than 2h
    # never cross a kink (Relu at 0, a max in a pooling window)
    direction = {k: rng.uniform(-1, 1, feed[k].shape) for k in float_in}
    direction.update({w: rng.uniform(-1, 1, m.initializer(w).shape) for w in weights})
    if not direction:
        raise DataError("nothing to move: the model has no float input or weight outside `fixed`")
    analytic = sum(float((grads[k].astype(np.float64) * direction[k]).sum()) for k in direction if k in grads)
    dtype = np.dtype(next((feed[k].dtype for k in float_in), None) or m.initializer(weights[0]).dtype)
    h_default, tol_default = TOLERANCES.get(dtype.name, TOLERANCES["float32"])
    h = step if step is not None else h_default
    sources = {**feed, **{w: m.initializer(w) for w in weights}}

    def phi(t: float) -> float:
        f = {k: (v + t * direction[k]).astype(v.dtype) if k in direction else v for k, v in feed.items()}
        w = {k: (m.initializer(k) + t * direction[k]).astype(m.initializer(k).dtype) for k in weights}
        out = run(f, w)
        return float(sum((cots[o].astype(np.float64) * out[o].astype(np.float64)).sum() for o in outs))

    f_plus, f_zero, f_minus = phi(h), phi(0.0), phi(-h)
    if not np.isfinite([f_plus, f_minus]).all():
        raise DataError("the outputs stop being finite along the direction (the point is at the edge of the domain)")
    numeric = (f_plus - f_minus) / (2 * h)
    scale = 1e-3 * float(np.sqrt(sum(float((c.astype(np.float64) ** 2).sum()) for c in cots.values())))
    denom = max(abs(analytic), abs(numeric), scale, 1e-12)
    rel = abs(analytic - numeric) / denom
    forward, backward = (f_plus - f_zero) / h, (f_zero - f_minus) / h
    kink = abs(forward - backward) > 0.1 * max(abs(forward), abs(backward), scale)
    # rounding noise of the difference: the moved values and the outputs are rounded to the dtype,
    # independent errors that add up as a root sum of squares
    eps = float(np.finfo(dtype).eps)
    moved = sum(float(((grads[k].astype(np.float64) * sources[k]) ** 2).sum()) for k in direction if k in grads)
    outputs = sum(float(((cots[o].astype(np.float64) * base[o]) ** 2).sum()) for o in outs)
    resolution = eps * float(np.sqrt(moved + outputs)) / h / denom
    tol = tolerance if tolerance is not None else tol_default
    return VjpCheck(analytic, numeric, rel, tol, tuple(direction), bool(kink), resolution)
