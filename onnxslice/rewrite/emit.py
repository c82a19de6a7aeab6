"""Checks and provenance of every emitted model, run once per rewrite by the pass manager
(:class:`onnxslice.rewrite.passes.PassManager`): what makes an emitted model acceptable.

An emitted model passes ``onnx.checker.check_model(full_check=True)``, carries an IR version that
onnxruntime accepts, keeps the source's input and output names and ranks, records its provenance
(tool version, pass, plan) in ``metadata_props``, and opens in onnxruntime. A failure here is a bug in
a pass, reported with the reason; it is never silently written.
"""

from __future__ import annotations

import json
from typing import Any

import onnx

from onnxslice.errors import OnnxSliceError
from onnxslice.model import Model, load
from onnxslice.record import make_session, max_ort_ir_version, runtime_proto
from onnxslice.rewrite.plan import Plan
from onnxslice.version import __version__

__all__ = ["finalize"]


#: metadata keys that state a measured quality of the model they sit in (our reference models' build
#: scripts write them): a rewritten model keeps them as ``source.<key>``, a claim about its source
_MEASURED = ("test_accuracy", "samples_top1")


def _measured_as_source(proto: onnx.ModelProto) -> None:
    """Rename the source's measured-quality entries to ``source.<key>``: they do not describe the rewrite."""
    for p in proto.metadata_props:
        if p.key in _MEASURED or (p.key.endswith("accuracy") and not p.key.startswith(("source.", "onnxslice."))):
            p.key = f"source.{p.key}"


def _set_meta(proto: onnx.ModelProto, entries: dict[str, str]) -> None:
    keep = [p for p in proto.metadata_props if p.key not in entries]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for k, v in entries.items():
        proto.metadata_props.add(key=k, value=v)


def _io_signature(model: Model) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    def sig(vis: Any) -> list[tuple[str, int]]:
        return [(v.name, len(v.shape) if v.shape is not None else -1) for v in vis]

    return sig(model.inputs), sig(model.outputs)


def finalize(
    proto: onnx.ModelProto,
    source: Model,
    *,
    pass_name: str,
    plan: Plan | None = None,
    extra: dict[str, Any] | None = None,
    added_outputs: tuple[str, ...] = (),
) -> Model:
    """Check an edited proto, stamp its provenance, and return it as a loaded :class:`Model`.

    Args:
        proto: the edited model (consumed).
        source: the model it was made from (never modified).
        pass_name: e.g. ``"prune"``, ``"quantize"``.
        plan: the plan that was applied.
        extra: more provenance (JSON-serialisable).
        added_outputs: outputs the pass adds after the source's own (the guard's fault flag).

    Raises:
        OnnxSliceError: the result fails the full check, changes the I/O signature, or does not run.
    """
    proto.ir_version = min(proto.ir_version, max_ort_ir_version())
    history = [p.value for p in proto.metadata_props if p.key == "onnxslice.passes"]
    passes = (json.loads(history[0]) if history else []) + [pass_name]
    meta = {"onnxslice.version": __version__, "onnxslice.pass": pass_name, "onnxslice.passes": json.dumps(passes)}
    if plan is not None:
        meta["onnxslice.plan"] = json.dumps(plan.to_dict(), default=str)
    if extra:
        meta["onnxslice.info"] = json.dumps(extra, default=str)
    _measured_as_source(proto)
    _set_meta(proto, meta)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise OnnxSliceError(f"{pass_name} produced an invalid model (a bug; please report): {e}") from e
    out = load(proto, check=False)
    ins, outs = _io_signature(out)
    if added_outputs and tuple(n for n, _ in outs[len(source.outputs):]) == added_outputs:
        outs = outs[: len(source.outputs)]
    if (ins, outs) != _io_signature(source):
        raise OnnxSliceError(
            f"{pass_name} changed the model's inputs/outputs {_io_signature(source)} -> {_io_signature(out)} (a bug)"
        )
    make_session(runtime_proto(out.proto), "cpu")  # raises OnnxSliceError if onnxruntime refuses it
    return out
