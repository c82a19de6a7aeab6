"""Static (weights and activations) QDQ quantization with per-layer weight bit widths.

The work is onnxruntime's ``quantize_static``: it calibrates activation ranges on the caller's data
(through a ``CalibrationDataReader``) and inserts QuantizeLinear/DequantizeLinear pairs. This module
only translates a precision plan into its options: ``fp32`` layers go to ``nodes_to_exclude``, every
int8/int4 weight gets a per-tensor override (``TensorQuantOverrides``: type, per-channel axis,
symmetric), and ``fp16`` layers are excluded here and stored as float16 by the weight-only pass after it.
onnxruntime wants a file path, so the model round-trips through a private temporary folder.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader

from onnxslice.errors import DataError, OnnxSliceError
from onnxslice.model import Model
from onnxslice.record import as_feed, runtime_proto, validate_inputs
from onnxslice.rewrite.opset_upgrade import upgrade_opset
from onnxslice.rewrite.precision import layout

__all__ = ["FeedReader", "static_quantize"]


class FeedReader(CalibrationDataReader):
    """A ``CalibrationDataReader`` over validated arrays, in batches (rewindable)."""

    def __init__(self, feed: Mapping[str, np.ndarray], batch_size: int) -> None:
        self.feed = dict(feed)
        self.batch_size = max(1, int(batch_size))
        self.n = len(next(iter(self.feed.values())))
        self._it: Iterator[dict[str, np.ndarray]] = self._batches()

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for s in range(0, self.n, self.batch_size):
            yield {k: v[s : s + self.batch_size] for k, v in self.feed.items()}

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next batch, or None at the end."""
        return next(self._it, None)

    def rewind(self) -> None:
        """Start again from the first batch."""
        self._it = self._batches()


def _overrides(model: Model, decisions: Mapping[str, str]) -> dict[str, list[dict[str, Any]]]:
    from onnxruntime.quantization import QuantType

    qtype = {"int8": QuantType.QInt8, "int4": QuantType.QInt4}
    out: dict[str, list[dict[str, Any]]] = {}
    for name, p in decisions.items():
        if p in qtype:
            layer = model.layer(name)
            out[layer.weight] = [{"quant_type": qtype[p], "axis": layout(model, layer).out_axis, "symmetric": True}]
    return out


def static_quantize(
    model: Model,
    decisions: Mapping[str, str],
    calibration: Any,
    *,
    batch_size: int = 16,
    activation_type: str = "uint8",
    calibrate_method: str = "minmax",
    samples: int = 256,
) -> onnx.ModelProto:
    """Quantize weights (per the plan) and activations (8-bit) with onnxruntime's ``quantize_static``.

    Args:
        model: the float model.
        decisions: layer name -> ``fp32``/``fp16``/``int8``/``int4`` for every layer in the plan.
        calibration: data for activation ranges (mapping, array or ``Dataset``).
        batch_size: calibration batch size (a model whose batch axis is fixed is calibrated in whole batches of
            that size; fewer samples than one batch are padded by repeating the last).
        activation_type: ``"uint8"`` (onnxruntime's CPU recommendation) or ``"int8"``.
        calibrate_method: ``"minmax"``, ``"entropy"`` or ``"percentile"``.
        samples: use at most this many calibration samples.

    Returns:
        The QDQ model proto (not yet finalized); ``fp16`` layers are left float32 here, for the
        :class:`~onnxslice.rewrite.passes.quantize.WeightQuant` pass that follows.

    Raises:
        DataError: no or bad calibration data.
        OnnxSliceError: onnxruntime's quantizer fails (the message carries its reason).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if calibration is None:
        raise DataError("static quantization needs calibration data (calibration=... / --data)")
    feed = validate_inputs(model, as_feed(model, calibration))
    feed = {k: v[:samples] for k, v in feed.items()}
    fixed = model.inputs[0].shape[0] if model.inputs and model.inputs[0].shape else None
    bs = batch_size
    if isinstance(fixed, int) and fixed > 0:  # batch fixed by the model: calibrate in whole batches of it
        bs = fixed
        n = len(next(iter(feed.values())))
        keep = max(fixed, n - n % fixed)
        feed = {k: np.concatenate([v, np.repeat(v[-1:], keep - n, axis=0)]) if keep > n else v[:keep]
                for k, v in feed.items()}
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if calibrate_method not in methods:
        raise DataError(f"unknown calibrate_method '{calibrate_method}'; use one of {', '.join(methods)}")
    if activation_type not in ("uint8", "int8"):
        raise DataError(f"activation_type must be 'uint8' or 'int8', not '{activation_type}'")
    exclude = [n for n, p in decisions.items() if p in ("fp32", "fp16")]
    with tempfile.TemporaryDirectory(prefix="onnxslice-quant-") as tmp:
        src, dst = Path(tmp) / "float.onnx", Path(tmp) / "qdq.onnx"
        # 4-bit QDQ needs opset 21; raise it here (checked) rather than let the quantizer guess a domain
        need = 21 if "int4" in decisions.values() else 15 if "fp16" in decisions.values() else 0
        base = upgrade_opset(model, need, feed) if need else model.proto
        onnx.save_model(runtime_proto(base), str(src))
        level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)  # onnxruntime's quantizer logs advice on the root logger
        try:
            quantize_static(
                str(src),
                str(dst),
                FeedReader(feed, bs),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8 if activation_type == "uint8" else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=exclude,
                calibrate_method=methods[calibrate_method],
                extra_options={"TensorQuantOverrides": _overrides(model, decisions)},
            )
        except Exception as e:
            raise OnnxSliceError(f"onnxruntime's quantize_static failed on this model: {e}") from e
        finally:
            logging.getLogger().setLevel(level)
        proto = onnx.load(str(dst))
    return proto
