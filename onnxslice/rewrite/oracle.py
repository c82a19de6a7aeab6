"""The measured quantization oracle: the real output error when only one layer is quantized.

For every quantizable layer l, the model runs with l's weight replaced by exactly what the emitted
graph would compute from it (:func:`onnxslice.rewrite.weight_quant.fake_quantize`) and every other
weight left in float32; the score is ``E_x ||f_l(x) - f(x)||`` (higher = more sensitive). One
onnxruntime session serves every layer: the weights are graph inputs that each run swaps. The
agreement of a criterion with the oracle is the Spearman correlation of their layer scores.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from onnxslice.console import progress
from onnxslice.errors import DataError
from onnxslice.model import Model
from onnxslice.record import Recorder, as_feed, make_session, runtime_proto, validate_inputs
from onnxslice.rewrite.precision import check_precision, quantizable_layers
from onnxslice.rewrite.weight_quant import fake_quantize
from onnxslice.scores import LayerScores

__all__ = ["quantization_oracle", "spearman"]


def quantization_oracle(
    model: Model,
    data: Any,
    precision: str = "int4",
    *,
    layers: Iterable[str] | None = None,
    samples: int = 256,
    batch_size: int = 64,
    block_size: int = 32,
    use_matmul_nbits: bool = True,
    show_progress: bool = False,
    optimize: bool = True,
) -> LayerScores:
    """Measure, layer by layer, the output error of quantizing that layer alone to ``precision``.

    Args:
        model: the float model.
        data: samples (mapping, array or ``Dataset``); at most ``samples`` are used.
        precision: ``int4``, ``int8`` or ``fp16``.
        layers: which layers (default: every quantizable layer).
        samples: cap on the samples used.
        batch_size: onnxruntime batch size.
        block_size: int4 block size (as :func:`onnxslice.rewrite.quantize` will use).
        use_matmul_nbits: quantize eligible MatMul weights as MatMulNBits does (as ``quantize`` will).
        show_progress: a progress bar on stderr.
        optimize: run with onnxruntime's graph optimizations on (the weights stay graph inputs); off:
            the recorder's unoptimized session.

    Returns:
        ``LayerScores`` with criterion ``oracle:<precision>`` (mean L2 output error; higher = more
        sensitive) and ``meta`` holding the sample count and the error of every layer at once.
    """
    check_precision(precision)
    qlayers = {x.name: x for x in quantizable_layers(model)}
    names = list(qlayers) if layers is None else list(layers)
    unknown = [n for n in names if n not in qlayers]
    if unknown:
        raise DataError(f"not quantizable layer(s) {', '.join(unknown[:5])}; choose among {', '.join(qlayers)}")
    feed = validate_inputs(model, as_feed(model, data))
    feed = {k: v[:samples] for k, v in feed.items()}
    weights = list(dict.fromkeys(qlayers[n].weight for n in names))
    base = {k: np.asarray(model.initializer(k)) for k in weights}
    if optimize:  # one optimized session, the swapped weights fed as inputs
        sess = make_session(runtime_proto(model.proto, (), weights), "cpu", optimize=True)
        n_all = len(next(iter(feed.values())))

        def outputs(swap: dict[str, np.ndarray]) -> np.ndarray:
            w = {**base, **swap}
            parts = []
            for s in range(0, n_all, batch_size):
                res = sess.run(model.output_names, {**{k: v[s : s + batch_size] for k, v in feed.items()}, **w})
                parts.append(np.concatenate([r.reshape(len(r), -1) for r in res], axis=1))
            return np.concatenate(parts).astype(np.float64)
    else:
        outputs = _recorder_outputs(model, feed, weights, batch_size)
    fq = {
        n: fake_quantize(model, qlayers[n], precision, block_size=block_size, use_matmul_nbits=use_matmul_nbits)
        for n in names
    }

    ref = outputs({})
    scores: dict[str, float] = {}
    it = progress(names, len(names), "oracle") if show_progress else names
    for n in it:
        scores[n] = float(np.linalg.norm(outputs({qlayers[n].weight: fq[n]}) - ref, axis=1).mean())
    joint = float(np.linalg.norm(outputs({qlayers[n].weight: fq[n] for n in names}) - ref, axis=1).mean())
    meta = {"samples": len(ref), "precision": precision, "block_size": block_size, "all_layers_error": joint,
            "optimized": optimize}
    return LayerScores(scores, f"oracle:{precision}", "", meta)


def _recorder_outputs(model: Model, feed: dict[str, np.ndarray], weights: list[str], batch_size: int) -> Any:
    rec = Recorder(model, None, "cpu", weight_inputs=weights)

    def outputs(swap: dict[str, np.ndarray]) -> np.ndarray:
        parts = []
        for k, _, res in rec.iter_batches(feed, batch_size, weights=swap):
            parts.append(np.concatenate([res[o].reshape(k, -1) for o in model.output_names], axis=1))
        return np.concatenate(parts).astype(np.float64)

    return outputs


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    for v in np.unique(x):  # average ranks over ties
        tie = x == v
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(a: LayerScores, b: LayerScores, *, per_parameter: Model | None = None) -> float:
    """Spearman rank correlation of two score sets over the layers they share.

    Args:
        a: scores.
        b: scores.
        per_parameter: when given, both scores are divided by each layer's weight count first (the
            quantity ``plan_bits`` ranks by).

    Returns:
        The correlation in [-1, 1] (nan when fewer than 2 layers are shared or one side is constant).
    """
    names = [n for n in a.scores if n in b.scores]
    if len(names) < 2:
        return float("nan")
    x = np.array([a.scores[n] for n in names], dtype=np.float64)
    y = np.array([b.scores[n] for n in names], dtype=np.float64)
    if per_parameter is not None:
        sizes = {layer.name: layer.params for layer in per_parameter.layers}
        k = np.array([sizes[n] for n in names], dtype=np.float64)
        x, y = x / k, y / k
    rx, ry = _ranks(x), _ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])
