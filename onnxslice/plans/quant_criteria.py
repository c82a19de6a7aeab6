"""Criteria that know the quantizer: each layer's predicted output error for its real quantization error.

For a layer ``l`` and a precision ``p``, ``dw = Q_p(w) - w`` is exactly the weight change the
emitted graph makes (:func:`onnxslice.rewrite.weight_quant.fake_quantize`). Three predictions of what
``dw`` does to the model, all from onnxslice's own ONNX gradients, every layer and precision at once:

- ``fisher``: the Gauss-Newton (Fisher of an isotropic Gaussian output model) quadratic form
  ``E_x ||J_x dw||^2``, the first-order expected squared output change, estimated with random
  output cotangents: for ``u_n ~ N(0, I)`` per sample, the per-sample weight gradient
  ``g_n = J_n^T u_n`` (one batched backward pass) gives ``E_u[(g_n . dw)^2] = ||J_n dw||^2``, averaged
  over the samples. ``probes`` backward passes in all.
- ``taylor``: the first-order change of the predicted class's logit, ``|E_x[g_x . dw]|`` with
  ``g_x`` its weight gradient (one backward pass).
- ``hutchinson``: HAWQ-V2's ``Tr(H_l) / n_l * ||dw||^2`` with the Hessian trace of the
  cross-entropy to the predicted class estimated by Hutchinson's method from gradient differences at
  shifted weights: ``v^T H v ~ v . (g(w + eps v) - g(w)) / eps`` with Rademacher ``v`` (block
  diagonal per layer: cross-layer terms vanish in expectation). ``probes + 1`` backward passes.

The oracle (:mod:`onnxslice.rewrite.oracle`) measures ``E_x ||f(w + dw_l) - f(w)||``: one forward
pass over the data per layer. These criteria cost a fixed number of backward passes, whatever the
number of layers. Higher = more sensitive.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from onnxslice.data import load_data
from onnxslice.errors import DataError
from onnxslice.grad.engine import GradientEngine
from onnxslice.model import Model
from onnxslice.record import as_feed, validate_inputs
from onnxslice.rewrite.fidelity import run_outputs
from onnxslice.rewrite.precision import check_precision, quantizable_layers
from onnxslice.rewrite.weight_quant import fake_quantize
from onnxslice.scores import LayerScores

__all__ = ["QUANT_CRITERIA", "is_quant_criterion", "perturbation_errors", "quant_criterion_scores"]

QUANT_CRITERIA = ("fisher", "taylor", "hutchinson")


def is_quant_criterion(name: str) -> bool:
    """Whether ``name`` is ``fisher``/``taylor``/``hutchinson`` (optionally ``:<precision>``)."""
    return name.split(":", 1)[0] in QUANT_CRITERIA


def _feed(model: Model, data: Any, samples: int) -> dict[str, np.ndarray]:
    if data is None:
        raise DataError("quantizer-aware criteria need calibration data; give --data")
    if isinstance(data, str):
        data = load_data(data)
    feed = validate_inputs(model, as_feed(model, data))
    return {k: v[:samples] for k, v in feed.items()}


def perturbation_errors(
    model: Model,
    data: Any,
    method: str = "fisher",
    precisions: Iterable[str] = ("int4", "int8"),
    *,
    samples: int = 64,
    probes: int = 4,
    batch_size: int = 32,
    block_size: int = 32,
    use_matmul_nbits: bool = True,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Predicted error of every quantizable layer at every precision: layer -> precision -> error.

    Args:
        model: the float model.
        data: calibration samples.
        method: ``fisher``, ``taylor`` or ``hutchinson`` (see the module docstring).
        precisions: the candidate precisions (``fp32`` is 0 by definition).
        samples: calibration samples used.
        probes: random probes of ``fisher`` and ``hutchinson``.
        batch_size: samples per backward pass.
        block_size: int4 block size (as ``quantize`` will use).
        use_matmul_nbits: quantize eligible MatMul weights as MatMulNBits does.
        seed: seed of the probes.

    Raises:
        DataError: no data, or an unknown method.
    """
    if method not in QUANT_CRITERIA:
        raise DataError(f"unknown quantizer-aware criterion '{method}'; use one of {', '.join(QUANT_CRITERIA)}")
    precs = [check_precision(p) for p in precisions]
    feed = _feed(model, data, samples)
    n = len(next(iter(feed.values())))
    layers = quantizable_layers(model)
    weights = list(dict.fromkeys(x.weight for x in layers))
    w0 = {k: np.asarray(model.initializer(k), dtype=np.float32) for k in weights}
    dws = {x.name: {p: (fake_quantize(model, x, p, block_size=block_size, use_matmul_nbits=use_matmul_nbits)
                        - w0[x.weight]).astype(np.float64) for p in precs if p != "fp32"} for x in layers}
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, float]] = {x.name: {"fp32": 0.0} for x in layers}
    if method == "fisher":
        eng = GradientEngine(model, "cotangent", weights=weights, inputs=False, device="cpu")

        shape = run_outputs(model, feed, batch_size)[model.output_names.index(eng.output)].shape
        acc = {x.name: dict.fromkeys(dws[x.name], 0.0) for x in layers}
        for _ in range(max(1, probes)):
            cot = rng.standard_normal(shape).astype(np.float32)
            g = eng(feed, cotangent=cot, batch_size=batch_size, per_sample=True).weights
            for x in layers:
                gn = g[x.weight].reshape(n, -1).astype(np.float64)
                for p, dw in dws[x.name].items():
                    acc[x.name][p] += float(((gn @ dw.reshape(-1)) ** 2).sum())
        for x in layers:
            for p, v in acc[x.name].items():
                out[x.name][p] = v / (max(1, probes) * n)
        return out
    eng = GradientEngine(model, "pred", weights=weights, inputs=False, swappable=weights, device="cpu")
    g0 = eng(feed, batch_size=batch_size).weights
    if method == "taylor":
        for x in layers:
            for p, dw in dws[x.name].items():
                out[x.name][p] = abs(float((g0[x.weight].astype(np.float64) * dw).sum())) / n
        return out
    trace = {k: 0.0 for k in weights}
    for _ in range(max(1, probes)):
        rad = {k: rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=w.shape) for k, w in w0.items()}
        eps = {k: 1e-3 * max(float(np.abs(w).mean()), 1e-8) for k, w in w0.items()}
        shifted = {k: (w0[k] + eps[k] * rad[k]).astype(np.float32) for k in weights}
        g1 = eng(feed, weights=shifted, batch_size=batch_size).weights
        for k in weights:
            hv = (g1[k].astype(np.float64) - g0[k].astype(np.float64)) / eps[k]
            trace[k] += float((rad[k] * hv).sum()) / n
    for x in layers:
        t = abs(trace[x.weight]) / max(1, probes) / w0[x.weight].size
        for p, dw in dws[x.name].items():
            out[x.name][p] = t * float((dw**2).sum())
    return out


def quant_criterion_scores(model: Model, data: Any, criterion: str = "fisher:int4", **options: Any) -> LayerScores:
    """``LayerScores`` of one precision (``fisher:int4``; int4 when not given) for ranking and ``plan_bits``.

    ``meta["errors"]`` holds every layer's predicted error at int4, int8 and fp16, so that
    :func:`onnxslice.rewrite.plan_bits` can compare candidate precisions per layer.
    """
    method, _, prec = criterion.partition(":")
    prec = prec or "int4"
    check_precision(prec)
    errors = perturbation_errors(model, data, method, sorted({prec, "int4", "int8", "fp16"}), **options)
    return LayerScores({k: v[prec] for k, v in errors.items()}, f"{method}:{prec}", "",
                       {"errors": errors, "method": method})


def _errors_of(scores: Any) -> Mapping[str, Mapping[str, float]] | None:
    meta = getattr(scores, "meta", None) or {}
    errs = meta.get("errors")
    return errs if isinstance(errs, Mapping) else None
