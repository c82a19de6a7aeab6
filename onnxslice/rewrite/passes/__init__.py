"""The rewrite passes: one signature (``onnx_ir.Model`` in, :class:`PassResult` out) and a pass manager
that runs them in order and checks the emitted model once. The table of passes is in ``docs/design.md``."""

from __future__ import annotations

from onnxslice.rewrite.passes.base import FromProto, Pass, PassResult
from onnxslice.rewrite.passes.initializers import ReplaceInitializers
from onnxslice.rewrite.passes.manager import PassManager, PipelineResult, provenance

__all__ = ["FromProto", "Pass", "PassManager", "PassResult", "PipelineResult", "ReplaceInitializers", "provenance"]
