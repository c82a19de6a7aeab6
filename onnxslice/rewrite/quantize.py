"""``quantize``: apply a per-layer precision plan and return a model that onnxruntime runs.

``mode="weight"`` stores weights in low precision only (activations stay float):
block-wise int4 and per-channel int8 ``DequantizeLinear`` (:mod:`~onnxslice.rewrite.weight_quant`,
raising the opset with :mod:`~onnxslice.rewrite.opset_upgrade` where needed), ``MatMulNBits`` for
eligible MatMul weights (:mod:`~onnxslice.rewrite.matmul_nbits`) and float16 + ``Cast``.
``mode="static"`` quantizes weights and activations with onnxruntime's ``quantize_static``
(:mod:`~onnxslice.rewrite.static_quant`). The plan is validated first, so a bad plan raises
:class:`PlanError` before anything is built; the edits are passes (:mod:`onnxslice.rewrite.passes.quantize`)
run by the pass manager, which checks the result once. The input model is never modified.
"""

from __future__ import annotations

from typing import Any, Literal

from onnxslice.errors import PlanError
from onnxslice.model import Model, load
from onnxslice.record import as_feed, validate_inputs
from onnxslice.rewrite import matmul_nbits
from onnxslice.rewrite.bits_plan import plan_cost
from onnxslice.rewrite.passes.base import Pass
from onnxslice.rewrite.passes.manager import PassManager
from onnxslice.rewrite.passes.quantize import MatMulNBits, OpsetUpgrade, StaticQuant, WeightQuant
from onnxslice.rewrite.plan import Plan
from onnxslice.rewrite.precision import QUANTIZABLE_OPS, check_precision, quantizable_layers

__all__ = ["check_plan", "quantize"]

Mode = Literal["weight", "static"]

#: Default-domain opset each emitted form needs: block-wise int4 DequantizeLinear 21, per-axis
#: DequantizeLinear 13, CastLike 15.
_OPSET_NEEDED = {"int4": 21, "int8": 13, "fp16": 15, "fp32": 0}


def check_plan(model: Model, plan: Plan) -> dict[str, str]:
    """Validate a quantization plan against ``model``; returns layer -> precision.

    Raises:
        PlanError: wrong kind, unknown layers or precisions, a layer that cannot be quantized, or
            two layers sharing one weight with different precisions.
    """
    if plan.kind not in ("quantize", ""):
        raise PlanError(f"a '{plan.kind}' plan cannot be applied by quantize; give a quantize plan")
    plan.validate(model)
    ok = {x.name for x in quantizable_layers(model)}
    decisions: dict[str, str] = {}
    for name, p in plan.layers.items():
        precision = check_precision(p, name)
        if precision != "fp32" and name not in ok:
            layer = model.layer(name)
            raise PlanError(
                f"layer '{name}' ({layer.op_type}) cannot be stored as {precision}: only float32 weights of "
                f"{', '.join(QUANTIZABLE_OPS)} layers can; set it to fp32"
            )
        decisions[name] = precision
    by_weight: dict[str, tuple[str, str]] = {}
    for name, p in decisions.items():
        w = model.layer(name).weight
        if w in by_weight and by_weight[w][1] != p:
            other = by_weight[w][0]
            raise PlanError(
                f"layers '{other}' and '{name}' share weight '{w}' but the plan gives them "
                f"{by_weight[w][1]} and {p}; give them the same precision"
            )
        by_weight[w] = (name, p)
    return decisions


def _dedupe(model: Model, decisions: dict[str, str]) -> dict[str, str]:
    """One layer per shared weight (the rest read the same edited weight)."""
    seen: set[str] = set()
    out = {}
    for name, p in decisions.items():
        w = model.layer(name).weight
        if w not in seen:
            seen.add(w)
            out[name] = p
    return out


def _weight_passes(model: Model, decisions: dict[str, str], block_size: int, use_nbits: bool,
                   probe: Any) -> tuple[list[Pass], list[str]]:
    """The weight-only pipeline: opset upgrade (where the forms need it), DequantizeLinear/CastLike
    weights, then MatMulNBits."""
    decisions = _dedupe(model, {n: p for n, p in decisions.items() if p != "fp32"})
    nbits = {
        n for n, p in decisions.items()
        if p == "int4" and use_nbits and matmul_nbits.eligible(model, model.layer(n), block_size)
    }
    dq = {n: p for n, p in decisions.items() if n not in nbits}
    need = max(_OPSET_NEEDED[p] for p in [*dq.values(), "fp32"])
    feed = None
    if probe is not None:
        feed = validate_inputs(model, as_feed(model, probe))
    passes: list[Pass] = [
        OpsetUpgrade(need, feed, min_ir_version=10 if "int4" in dq.values() else 0),  # INT4 tensors need IR 10
        WeightQuant(dq, block_size),
        MatMulNBits([model.layer(n).weight for n in sorted(nbits)], block_size),
    ]
    return passes, sorted(nbits)


def quantize(
    model: Model | str,
    plan: Plan,
    calibration: Any = None,
    *,
    mode: Mode = "weight",
    block_size: int = 32,
    use_matmul_nbits: bool = True,
    **static_options: Any,
) -> Model:
    """Apply a precision plan and return the quantized model (checked, runnable, provenance recorded).

    Args:
        model: the float model (a loaded ``Model`` or a path).
        plan: a ``quantize`` plan: layer name -> ``fp32``/``fp16``/``int8``/``int4`` (layers it does
            not name stay fp32); from :func:`plan_bits`, :func:`uniform_plan` or ``Plan.load``.
        calibration: data: required for ``mode="static"`` (activation ranges); for ``"weight"`` it is
            only used to check an opset conversion (random inputs otherwise).
        mode: ``"weight"`` (weight-only) or ``"static"`` (weights and activations, QDQ).
        block_size: int4 block size (weight mode; MatMulNBits needs a power of two >= 16).
        use_matmul_nbits: emit int4 MatMul weights as onnxruntime's MatMulNBits where it can.
        **static_options: passed to :func:`onnxslice.rewrite.static_quant.static_quantize`.

    Returns:
        The new :class:`Model` (``model.proto`` is ready to save; ``metadata_props`` hold the plan).

    Raises:
        PlanError: the plan does not fit the model (nothing is built).
        DataError: static mode without calibration data, or bad data.
        ModelError: the opset conversion the plan needs fails or changes the outputs.
    """
    src = model if isinstance(model, Model) else load(model)
    if mode not in ("weight", "static"):
        raise PlanError(f"unknown mode '{mode}'; use 'weight' or 'static'")
    if block_size < 2:
        raise PlanError(f"block_size must be at least 2, got {block_size}")
    decisions = check_plan(src, plan)
    nbits: list[str] = []
    passes: list[Pass]
    if mode == "weight":
        passes, nbits = _weight_passes(src, decisions, block_size, use_matmul_nbits, calibration)
    else:
        fp16 = _dedupe(src, {n: p for n, p in decisions.items() if p == "fp16"})
        passes = [StaticQuant(decisions, calibration, **static_options), WeightQuant(fp16, 32)]
    cost = plan_cost(src, decisions, block_size)
    extra = {"mode": mode, "block_size": block_size, "matmul_nbits": nbits, "avg_bits": round(cost.avg_bits, 4)}
    return PassManager("quantize", passes).run(src, plan=plan, extra=extra).model
