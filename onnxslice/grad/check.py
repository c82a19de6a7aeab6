"""Check gradients against central finite differences through onnxruntime (JAX ``check_vjp`` style).

For random output cotangents ``c`` and a random direction ``v`` (entries uniform in [-1, 1]) over
every float input and weight, the engine's ``<grad, v>`` must match ``(phi(h) - phi(-h)) / 2h`` with
``phi(t) = <c, f(x + t v)>`` evaluated by onnxruntime on the untouched model. Tolerances are keyed by dtype.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxslice.model import Model, load
from onnxslice.record import Recorder

from .engine import GradientEngine

__all__ = ["TOLERANCES", "VjpCheck", "check_vjp"]

#: dtype -> (finite-difference step, relative tolerance)
TOLERANCES: dict[str, tuple[float, float]] = {"float64": (1e-6, 1e-6), "float32": (1e-2, 3e-3), "float16": (1e-1, 5e-2)}


@dataclass(frozen=True)
class VjpCheck:
    """The outcome of :func:`check_vjp`.

    Attributes:
        analytic: ``<grad, v>`` summed over every source.
        numeric: the central finite difference.
        rel_error: ``|analytic - numeric| / max(|analytic|, |numeric|, scale)``.
        tolerance: the dtype's tolerance.
        sources: the names the direction moved.
    """

    analytic: float
    numeric: float
    rel_error: float
    tolerance: float
    sources: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """Whether the relative error is within tolerance."""
        return self.rel_error <= self.tolerance

    def __repr__(self) -> str:
        return (
            f"VjpCheck({'ok' if self.ok else 'FAILED'}: analytic {self.analytic:.8g}, numeric {self.numeric:.8g}, "
            f"rel. error {self.rel_error:.2e} (tol {self.tolerance:.0e}), {len(self.sources)} sources)"
        )


def check_vjp(
    model: Model | Any,
    inputs: Mapping[str, np.ndarray],
    *,
    seed: int = 0,
    exact: bool = True,
    step: float | None = None,
    tolerance: float | None = None,
    fixed: Sequence[str] = (),
) -> VjpCheck:
    """Compare the engine's gradients with central finite differences along a random direction.

    Every float output gets a random cotangent; every float input and float initializer is moved.

    Args:
        model: a Model, path or ModelProto.
        inputs: arrays keyed by input name.
        seed: random seed for the cotangents and the direction.
        exact: refuse ops with no VJP rule (default) rather than checking the fallback.
        step: finite-difference step (default: by dtype, see :data:`TOLERANCES`).
        tolerance: relative tolerance (default: by dtype).
        fixed: float initializers to leave where they are (parameters that carry no gradient by
            definition, such as Clip bounds).
    """
    m = model if isinstance(model, Model) else load(model)
    declared = {vi.name: vi.dtype for vi in m.inputs}
    feed = {k: np.asarray(v, dtype=declared.get(k) or np.asarray(v).dtype) for k, v in inputs.items()}
    outs = [o.name for o in m.outputs if o.dtype is None or np.issubdtype(o.dtype, np.floating)]
    weights = [w for w in m.initializer_names if np.issubdtype(m.initializer(w).dtype, np.floating) and w not in fixed]
    engine = GradientEngine(m, "cotangent", weights=weights, exact=exact, output=outs, device="cpu")
    rec = Recorder(m, None, "cpu", weight_inputs=weights)
    rng = np.random.default_rng(seed)
    base = rec.run(feed, validated=True)
    cots = {o: rng.standard_normal(base[o].shape).astype(base[o].dtype) for o in outs}
    grads = engine.vjp(feed, cots)
    float_in = [k for k, v in feed.items() if np.issubdtype(v.dtype, np.floating)]
    # entries in [-1, 1]: a step h moves no element by more than h, so inputs spaced wider than 2h
    # never cross a kink (Relu at 0, a max in a pooling window)
    direction = {k: rng.uniform(-1, 1, feed[k].shape) for k in float_in}
    direction.update({w: rng.uniform(-1, 1, m.initializer(w).shape) for w in weights})
    analytic = sum(float((grads[k].astype(np.float64) * direction[k]).sum()) for k in direction if k in grads)
    dtype = str(next((feed[k].dtype for k in float_in), None) or m.initializer(weights[0]).dtype)
    h_default, tol_default = TOLERANCES.get(dtype, TOLERANCES["float32"])
    h = step if step is not None else h_default

    def phi(t: float) -> float:
        f = {k: (v + t * direction[k]).astype(v.dtype) if k in direction else v for k, v in feed.items()}
        w = {k: (m.initializer(k) + t * direction[k]).astype(m.initializer(k).dtype) for k in weights}
        out = rec.run(f, validated=True, weights=w)
        return float(sum((cots[o].astype(np.float64) * out[o].astype(np.float64)).sum() for o in outs))

    numeric = (phi(h) - phi(-h)) / (2 * h)
    scale = 1e-3 * float(np.sqrt(sum(float((c.astype(np.float64) ** 2).sum()) for c in cots.values())))
    rel = abs(analytic - numeric) / max(abs(analytic), abs(numeric), scale, 1e-12)
    return VjpCheck(
        analytic, numeric, rel, tolerance if tolerance is not None else tol_default, tuple(float_in + weights)
    )
