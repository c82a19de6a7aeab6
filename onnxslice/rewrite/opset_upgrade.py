"""Raise a model's default-domain opset with ``onnx.version_converter`` and prove nothing changed.

Block-wise int4 ``DequantizeLinear`` needs opset 21 and per-axis int8 needs 13. The converted model
is run next to the original in onnxruntime (on the caller's samples, or on deterministic random
inputs) and refused unless the outputs match.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import version_converter

from onnxslice.errors import ModelError
from onnxslice.model import Model
from onnxslice.record import Recorder

__all__ = ["default_opset", "probe_feed", "upgrade_opset"]


def default_opset(proto: onnx.ModelProto) -> int:
    """The model's ``ai.onnx`` opset version."""
    return next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)


def probe_feed(model: Model, n: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic random inputs for ``model`` (symbolic dims become 1, the batch axis ``n``)."""
    rng = np.random.default_rng(seed)
    feed: dict[str, np.ndarray] = {}
    for vi in model.inputs:
        dims = [d if isinstance(d, int) and d > 0 else 1 for d in (vi.shape or ())]
        if dims and not (isinstance(vi.shape, tuple) and isinstance(vi.shape[0], int) and vi.shape[0] > 0):
            dims[0] = n
        dtype = vi.dtype if vi.dtype is not None else np.dtype(np.float32)
        if np.issubdtype(dtype, np.floating):
            feed[vi.name] = rng.uniform(0, 1, size=dims).astype(dtype)
        else:
            feed[vi.name] = np.zeros(dims, dtype=dtype)
    return feed


def upgrade_opset(
    model: Model, target: int, feed: Mapping[str, np.ndarray] | None = None, rtol: float = 1e-4
) -> onnx.ModelProto:
    """A copy of ``model``'s proto at default-domain opset ``target`` (unchanged if already there).

    Args:
        model: the model.
        target: the opset needed.
        feed: inputs to compare the original and converted model on (default: :func:`probe_feed`).
        rtol: relative tolerance of the comparison (scaled by each output's largest magnitude).

    Raises:
        ModelError: the converter fails, or the converted model computes something else.
    """
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    have = default_opset(proto)
    if have >= target:
        return proto
    try:
        converted = version_converter.convert_version(proto, target)
        onnx.checker.check_model(converted)
    except Exception as e:
        raise ModelError(
            f"cannot convert the model from opset {have} to {target} (needed for the requested precisions): {e}. "
            f"Re-export the model at opset {target}, or choose int8/fp16 only."
        ) from e
    feed = dict(feed) if feed is not None else probe_feed(model)
    feed = {k: v[:16] for k, v in feed.items()}
    # Recorder runs a fixed-batch model in whole batches of its size
    ref_out = Recorder(model, None, "cpu").run(feed, validated=True)
    got_out = Recorder(model.with_proto(converted), None, "cpu").run(feed, validated=True)
    ref = [ref_out[o] for o in model.output_names]
    got = [got_out[o] for o in model.output_names]
    for name, a, b in zip(model.output_names, ref, got, strict=True):
        tol = rtol * max(1.0, float(np.abs(a).max()) if a.size else 1.0)
        if a.shape != b.shape or not np.allclose(a, b, rtol=rtol, atol=tol):
            raise ModelError(
                f"the opset {have} -> {target} conversion changed output '{name}' "
                f"(max diff {float(np.abs(a - b).max()) if a.shape == b.shape else 'shape'}); "
                f"re-export the model at opset {target}"
            )
    return converted
