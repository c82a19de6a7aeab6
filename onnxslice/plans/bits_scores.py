"""Layer scores for precision planning: a SAfER criterion (default ``wgrad``) or the measured oracle.

``quantization_scores(model, data, criterion)`` is the one entry point the ``quantize`` CLI and the
benchmark use, so both ask for a criterion by the same name:

- a SAfER criterion of :func:`onnxslice.sensitivity` (``wgrad``, ``grad``, ``weight``, ``gradcampp``,
  ``ig``, ``gig``, ``idgi``, ``smoothgrad``, ``vargrad``, ``hsic``, ``fd``), reduced with ``reduction``;
- ``fisher``, ``taylor`` or ``hutchinson`` (``:<precision>``, int4 by default): the predicted output
  error of each layer's real quantization error (:mod:`onnxslice.plans.quant_criteria`); their
  ``meta["errors"]`` let :func:`plan_bits` compare the candidate precisions of each layer;
- ``oracle`` or ``oracle:<precision>`` (``int4`` when not given): the measured output error of
  quantizing each layer alone (:func:`onnxslice.rewrite.oracle.quantization_oracle`). It is a
  measurement, not a criterion: it costs one forward pass over the data per quantizable layer.

The result names exactly the quantizable layers (the ones :func:`plan_bits` ranks).
"""

from __future__ import annotations

from typing import Any

from onnxslice.data import load_data
from onnxslice.errors import DataError
from onnxslice.model import Model
from onnxslice.plans.quant_criteria import is_quant_criterion, quant_criterion_scores
from onnxslice.rewrite.oracle import quantization_oracle
from onnxslice.rewrite.precision import quantizable_layers
from onnxslice.scores import LayerScores
from onnxslice.sensitivity import sensitivity

__all__ = ["DEFAULT_CRITERION", "is_oracle", "quantization_scores"]

#: The criterion ``quantize`` plans with unless told otherwise.
DEFAULT_CRITERION = "wgrad"


def is_oracle(criterion: str) -> bool:
    """Whether ``criterion`` names the measured oracle (``oracle`` or ``oracle:<precision>``)."""
    return criterion.split(":", 1)[0] == "oracle"


def quantization_scores(
    model: Model,
    data: Any,
    criterion: str = DEFAULT_CRITERION,
    reduction: str = "linf",
    *,
    samples: int = 256,
    block_size: int = 32,
    use_matmul_nbits: bool = True,
    batch_size: int = 64,
    show_progress: bool = False,
    **options: Any,
) -> LayerScores:
    """Score every quantizable layer of ``model`` (higher = keep at higher precision).

    Args:
        model: the float model.
        data: calibration samples (spec, ``Dataset``, array or mapping); ``None`` only for ``weight``.
        criterion: a SAfER criterion name or ``oracle[:int4|int8|fp16]`` (see the module docstring).
        reduction: the SAfER reduction (ignored by the oracle).
        samples: samples used (the first ones).
        block_size: int4 block size the oracle quantizes with (as ``quantize`` will).
        use_matmul_nbits: the oracle quantizes eligible MatMul weights as MatMulNBits does.
        batch_size: samples per onnxruntime run.
        show_progress: progress bar on stderr (oracle only).
        **options: passed to :func:`onnxslice.sensitivity.sensitivity` (``steps``, ``noise_samples``,
            ``seed``, criterion options).

    Returns:
        ``LayerScores`` over the quantizable layers (criterion ``oracle:<precision>`` or the SAfER name).

    Raises:
        UnknownNameError: an unknown criterion or reduction (the message lists the valid ones).
        DataError: a data-driven criterion without data, or data that does not fit the model.
        UnsupportedOpError: a gradient criterion on a model with an op that has no VJP rule.
    """
    names = [x.name for x in quantizable_layers(model)]

    if is_quant_criterion(criterion):
        return quant_criterion_scores(model, _resolve(data), criterion, samples=samples, block_size=block_size,
                                      use_matmul_nbits=use_matmul_nbits, batch_size=min(batch_size, 32),
                                      **{k: v for k, v in options.items() if k in ("probes", "seed")})
    if is_oracle(criterion):
        precision = criterion.split(":", 1)[1] if ":" in criterion else "int4"
        if data is None:
            raise DataError("the oracle measures output errors and needs calibration data; give --data")
        data = _resolve(data)
        return quantization_oracle(
            model, data, precision, samples=samples, batch_size=batch_size, block_size=block_size,
            use_matmul_nbits=use_matmul_nbits, show_progress=show_progress,
        )

    s = sensitivity(model, data, criterion, reduction, samples=samples, batch_size=batch_size, layers=names, **options)
    return LayerScores({n: s.scores[n] for n in names}, s.criterion, s.reduction, s.meta)


def _resolve(data: Any) -> Any:
    if isinstance(data, str):
        return load_data(data)
    return data
