"""Compose passes and check the emitted model once: :class:`PassManager`.

``PassManager(name, passes).run(model)`` converts the source :class:`onnxslice.Model` to the graph IR once,
runs each pass in order on the result of the one before, and checks what comes out once with
:func:`onnxslice.rewrite.emit.finalize`: IR version lowered to what onnxruntime reads, provenance in
``metadata_props``, ``onnx.checker.check_model(full_check=True)``, the source's input/output names and
ranks kept, and an onnxruntime session opened. A check that fails names the pass that broke the model
(the pipeline is replayed from the source, checking after each pass that changed it) and says what to do;
nothing is returned, so a command writes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx
import onnx_ir as ir

from onnxslice.errors import OnnxSliceError
from onnxslice.model import Model
from onnxslice.rewrite.emit import finalize
from onnxslice.rewrite.passes.base import VIEW, Pass, PassResult, to_ir, to_proto
from onnxslice.rewrite.plan import Plan

__all__ = ["PassManager", "PipelineResult", "provenance"]


@dataclass
class PipelineResult:
    """The checked model and what each pass reported.

    Attributes:
        model: the emitted, checked model.
        changed: whether any pass changed the model.
        reports: ``(pass name, changed, report)`` per pass, in order.
    """

    model: Model
    changed: bool
    reports: list[tuple[str, bool, dict[str, Any]]] = field(default_factory=list)


class PassManager:
    """Run ``passes`` in order on a model and check the result once.

    Args:
        name: the rewrite's name, recorded as ``onnxslice.pass`` (e.g. ``"prune"``).
        passes: the passes, applied in order.
    """

    def __init__(self, name: str, passes: Sequence[Pass]) -> None:
        self.name = name
        self.passes = list(passes)

    def __repr__(self) -> str:
        return f"PassManager({self.name!r}, [{', '.join(p.name for p in self.passes)}])"

    @staticmethod
    def _start(source: Model) -> tuple[onnx.ModelProto, ir.Model]:
        proto = onnx.ModelProto()
        proto.CopyFrom(source.proto)  # the IR wraps the proto's tensors: never let a pass reach the source's
        model = to_ir(proto)
        model.graph.meta[VIEW] = source  # passes' view() of the unchanged source is the source
        return proto, model

    @staticmethod
    def _step(p: Pass, model: ir.Model) -> tuple[ir.Model, PassResult]:
        result = p(model)
        if result.changed:
            model.graph.meta.pop(VIEW, None)  # edited in place: the source is no longer its view
            result.model.graph.meta.pop(VIEW, None)
            return result.model, result
        return model, result

    def _apply(self, source: Model) -> tuple[onnx.ModelProto, list[tuple[str, bool, dict[str, Any]]]]:
        proto, model = self._start(source)
        reports = []
        for p in self.passes:
            model, result = self._step(p, model)
            reports.append((p.name, result.changed, result.report))
        return (to_proto(model) if any(c for _, c, _ in reports) else proto), reports

    def run(self, source: Model, *, plan: Plan | None = None, extra: dict[str, Any] | None = None,
            added_outputs: tuple[str, ...] = ()) -> PipelineResult:
        """Apply the passes to a copy of ``source`` and check the result.

        Args:
            source: the model (never modified).
            plan: the plan applied, recorded as ``onnxslice.plan``.
            extra: provenance recorded as ``onnxslice.info`` (default: the report of a single pass, or
                pass name -> report); a pipeline of several passes adds ``pipeline``, the passes that changed it.
            added_outputs: outputs a pass adds after the source's own (the guard's fault flag).

        Raises:
            OnnxSliceError: a pass's own error (bad plan, data, model), or a check the result fails,
                naming the pass that broke it.
        """
        proto, reports = self._apply(source)
        if extra is not None:
            info = dict(extra)
        elif len(self.passes) == 1:
            info = dict(reports[0][2])
        else:
            info = {n: r for n, _, r in reports if r}
        if len(self.passes) > 1:
            info["pipeline"] = [n for n, c, _ in reports if c]
        try:
            out = finalize(proto, source, pass_name=self.name, plan=plan, extra=info, added_outputs=added_outputs)
        except OnnxSliceError as e:
            reason = " ".join(str(e).split())[:300]
            raise OnnxSliceError(f"{self._culprit(source, added_outputs)} produced a model that fails its checks "
                                 f"({reason}); nothing was written: a bug in onnxslice, please report it with "
                                 "the model") from e
        return PipelineResult(out, any(c for _, c, _ in reports), reports)

    def _culprit(self, source: Model, added_outputs: tuple[str, ...]) -> str:
        """Replay the passes from ``source``, checking after each one that changed the model: the first
        whose output fails is named."""
        _, model = self._start(source)
        for p in self.passes:
            model, result = self._step(p, model)
            if not result.changed:
                continue
            try:
                finalize(to_proto(model), source, pass_name=self.name, added_outputs=added_outputs)
            except OnnxSliceError:
                return f"pass '{p.name}' of {self.name}"
        return f"the passes of {self.name} ({', '.join(p.name for p in self.passes)}) together"


def provenance(model: Model) -> dict[str, Any]:
    """The onnxslice provenance in a model's ``metadata_props`` (JSON values decoded)."""
    out: dict[str, Any] = {}
    for p in model.skeleton.metadata_props:
        if p.key.startswith("onnxslice."):
            try:
                out[p.key] = json.loads(p.value)
            except ValueError:
                out[p.key] = p.value
    return out
