"""phi: weight-relevance criteria, and the registry that names them.

A criterion maps a :class:`~onnxslice.sensitivity.context.Context` to one relevance array per layer
(``relevance(ctx, weights=None) -> {layer: array}``); ``weights`` evaluates it at substituted weights,
which is how :class:`~onnxslice.sensitivity.gradient.NoiseTunnel` (SmoothGrad, VarGrad) wraps a
gradient criterion instead of copying it. This module holds the black-box criteria, which need only
onnxruntime:

- ``weight``: ``|w|`` (data-free);
- ``fd``: finite-difference sensitivity of ``f`` to one layer's weights (see :class:`FiniteDifference`);
- ``hsic``: HSIC between random channel keep-masks and the change of ``f`` (see :class:`Hsic`).

The gradient criteria (``grad``, ``wgrad``, ``gradcampp``, ``ig``, ``gig``, ``idgi``, ``smoothgrad``,
``vargrad``) live in ``gradient.py`` and ``paths.py`` and register themselves here when the gradient
engine (``onnxslice.grad``) is part of the build.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import numpy as np

from onnxslice.errors import DataError
from onnxslice.sensitivity.common import channel_axis
from onnxslice.sensitivity.context import Context
from onnxslice.sensitivity.reductions import UnknownNameError, check_name

__all__ = [
    "CRITERIA",
    "GRADIENT_CRITERIA",
    "Criterion",
    "FiniteDifference",
    "Hsic",
    "Weight",
    "get_criterion",
    "hsic_bandwidth",
    "hsic_scores",
    "load_gradient_criteria",
    "register",
]


@runtime_checkable
class Criterion(Protocol):
    """A weight-relevance criterion phi."""

    name: str
    #: whether it needs reverse-mode gradients (``onnxslice.grad``)
    needs_gradients: bool

    def relevance(self, ctx: Context, weights: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """One relevance array per layer of ``ctx.layers`` (higher |value| = more relevant)."""
        ...


#: The criteria built on reverse-mode gradients (registered only when ``onnxslice.grad`` exists).
GRADIENT_CRITERIA = ("grad", "wgrad", "gradcampp", "ig", "gig", "idgi", "smoothgrad", "vargrad")

#: name -> criterion; gradient criteria are added by ``gradient.py``/``paths.py``.
CRITERIA: dict[str, Criterion] = {}


def register(criterion: Criterion) -> Criterion:
    """Add a criterion to :data:`CRITERIA` under its name."""
    CRITERIA[criterion.name] = criterion
    return criterion


def get_criterion(name: str | Criterion) -> Criterion:
    """The criterion called ``name`` (a Criterion object passes through).

    Raises:
        UnknownNameError: the name is unknown (the message lists the valid ones).
    """
    if not isinstance(name, str):
        return name
    load_gradient_criteria()
    if name in GRADIENT_CRITERIA and name not in CRITERIA:
        raise UnknownNameError(
            f"criterion '{name}' needs the gradient engine (onnxslice.grad), which is not part of this build; "
            f"available criteria are: {', '.join(CRITERIA)}"
        )
    return CRITERIA[check_name("criterion", name, list(CRITERIA), "criteria")]


class Weight:
    """``|w|`` per weight: data-free, ignores inter-layer relations (SAfER eq. 4)."""

    name = "weight"
    needs_gradients = False

    def relevance(self, ctx: Context, weights: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        return {
            x.name: np.abs(np.asarray((weights or {}).get(x.weight, ctx.model.initializer(x.weight)), np.float64))
            for x in ctx.layers
        }


class FiniteDifference:
    """``fd``: black-box sensitivity of ``f`` to one layer's weights, through onnxruntime alone.

    ``mode="scale"`` (default): ``E_x |f(w_l (1 + h)) - f(w_l (1 - h))| / (2 h)``, the size of the
    directional derivative of ``f`` along ``w_l`` (it approaches ``E_x |sum(w_l * df/dw_l)|``).
    ``mode="noise"``: the same along ``noise_samples`` random directions ``u ~ N(0, std(w_l)^2)``,
    averaged. ``granularity="layer"`` (default) gives one number per layer (relevance shape ``[1]``;
    2 suffix runs per layer in scale mode); ``"channel"`` scales each output channel separately and
    gives one number per channel (``2 * channels`` suffix runs per layer), for per-channel reuse.
    Works on any model onnxruntime runs: no VJP rule is needed. Options: ``fd_h`` (default 1e-2),
    ``fd_mode``, ``fd_granularity``.
    """

    name = "fd"
    needs_gradients = False

    def relevance(self, ctx: Context, weights: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        if weights:
            raise DataError("criterion 'fd' is evaluated at the model's own weights only")
        h = float(ctx.option("fd_h", 1e-2))
        mode = check_name("fd mode", ctx.option("fd_mode", "scale"), ("scale", "noise"))
        gran = check_name("fd granularity", ctx.option("fd_granularity", "layer"), ("layer", "channel"))
        out: dict[str, np.ndarray] = {}
        for li, layer in ctx.iter_layers():
            w = np.asarray(ctx.model.initializer(layer.weight), np.float64)
            if gran == "layer":
                dirs = [w] if mode == "scale" else [
                    ctx.rng(li, k).normal(0.0, float(w.std()) or 1.0, w.shape) for k in range(ctx.noise_samples)
                ]
                vals = [self._diff(ctx, layer, w, d, h) for d in dirs]
                out[layer.name] = np.array([np.mean(vals)])
            else:
                axis = channel_axis(ctx.model, layer)
                res = []
                for c in range(w.shape[axis]):
                    d = np.zeros_like(w)
                    idx = [slice(None)] * w.ndim
                    idx[axis] = slice(c, c + 1)
                    d[tuple(idx)] = w[tuple(idx)]
                    res.append(self._diff(ctx, layer, w, d, h))
                out[layer.name] = np.array(res)
        return out

    @staticmethod
    def _diff(ctx: Context, layer: object, w: np.ndarray, d: np.ndarray, h: float) -> float:
        dtype = ctx.model.initializer(layer.weight).dtype  # type: ignore[attr-defined]
        fp = ctx.f_suffix(layer, (w + h * d).astype(dtype))  # type: ignore[arg-type]
        fm = ctx.f_suffix(layer, (w - h * d).astype(dtype))  # type: ignore[arg-type]
        return float(np.mean(np.abs(fp - fm)) / (2.0 * h))


class Hsic:
    """``hsic``: HSIC between per-channel keep-masks and the change of ``f`` (Novello et al. 2022).

    Weights are grouped per output channel. For each layer, ``masks`` (option ``hsic_masks``,
    default 64) random binary keep-masks ``m_j`` (keep probability ``1 - hsic_drop``, default 0.5) zero
    the dropped channels; ``Y_j(x) = f^{m_j}(x)``. With a Dirac kernel on each channel's mask bit,
    ``K_c[i, j] = [m_ic == m_jc]``, and an RBF kernel on the outputs per sample,
    ``L_x[i, j] = exp(-(Y_i(x) - Y_j(x))^2 / (2 s_x^2))``, the score of channel c is
    ``E_x[tr(K_c H L_x H)] / (p - 1)^2`` (linear in ``L``, so ``L`` is averaged over the samples first).

    Every layer is measured with the same kernel, so the scores compare across layers: ``s_x`` is the
    largest of the layers' median pairwise output distances for sample x (:func:`hsic_bandwidth`). A
    per-layer median (option ``hsic_bandwidth="layer"``, kept for comparison) rescales each layer's
    output changes to the same size and erases the difference between a layer whose masks barely move
    ``f`` and one whose masks destroy it: on the moons models it made ``hsic`` anti-correlated with the
    ground truth (Spearman -0.23 against +0.64 with the shared kernel, linf, 5 models, U/N/D on weights).
    Relevance shape: ``[channels]``. Cost: ``masks`` suffix runs per layer.
    """

    name = "hsic"
    needs_gradients = False

    def relevance(self, ctx: Context, weights: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        if weights:
            raise DataError("criterion 'hsic' is evaluated at the model's own weights only")
        p = int(ctx.option("hsic_masks", 64))
        drop = float(ctx.option("hsic_drop", 0.5))
        bandwidth = check_name("hsic bandwidth", ctx.option("hsic_bandwidth", "shared"), ("shared", "layer"))
        if p < 2 or not 0.0 < drop < 1.0:
            raise DataError(f"hsic needs at least 2 masks and a drop probability in (0, 1); got {p}, {drop}")
        runs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for li, layer in ctx.iter_layers():
            w = np.asarray(ctx.model.initializer(layer.weight))
            axis = channel_axis(ctx.model, layer)
            masks = (ctx.rng(li, 7919).random((p, w.shape[axis])) >= drop).astype(np.float64)
            shape = [1] * w.ndim
            shape[axis] = w.shape[axis]
            ys = np.stack([ctx.f_suffix(layer, (w * m.reshape(shape)).astype(w.dtype)) for m in masks])
            runs[layer.name] = (masks, ys)
        sigma = hsic_bandwidth([ys for _, ys in runs.values()]) if bandwidth == "shared" else None
        return {name: hsic_scores(masks, ys, sigma) for name, (masks, ys) in runs.items()}


def hsic_bandwidth(ys_list: list[np.ndarray]) -> np.ndarray:
    """Per-sample RBF bandwidth shared by several layers: the largest of their median heuristics.

    Each ``ys [p, N]`` gives, per sample, the median of its non-zero pairwise output distances
    ``|Y_i(x) - Y_j(x)|`` (1 where no pair differs); the bandwidth is the maximum over ``ys_list``.
    Taking the largest scale keeps the kernel of the layer with the biggest output changes out of
    saturation (a pooled median would sit at the scale of the weak layers and flatten the strong one's
    kernel to the identity, inverting the order); layers with smaller changes then score lower.
    """
    meds = []
    for ys in ys_list:
        iu = np.triu_indices(ys.shape[0], 1)
        pairs = np.abs(ys[:, None, :] - ys[None, :, :])[iu]  # [P, N]
        tol = 1e-6 * (np.abs(ys).max(axis=0) + 1e-12)  # float32 round-off is not a difference
        meds.append([np.median(col[col > t]) if np.any(col > t) else 0.0 for col, t in zip(pairs.T, tol, strict=True)])
    sigma = np.max(np.array(meds), axis=0)
    return np.where(sigma > 0, sigma, 1.0)


def hsic_scores(masks: np.ndarray, ys: np.ndarray, sigma: np.ndarray | None = None) -> np.ndarray:
    """Per-channel HSIC from ``masks [p, C]`` (0/1) and outputs ``ys [p, N]`` (see :class:`Hsic`).

    ``sigma [N]``: the per-sample RBF bandwidth (default: :func:`hsic_bandwidth` of ``ys`` alone).
    """
    p = masks.shape[0]
    d = np.abs(ys[:, None, :] - ys[None, :, :])  # [p, p, N]
    if sigma is None:
        sigma = hsic_bandwidth([ys])
    lbar = np.exp(-(d**2) / (2.0 * sigma[None, None, :] ** 2)).mean(axis=2)
    h = np.eye(p) - 1.0 / p
    mm = h @ lbar @ h
    a = masks
    b = 1.0 - masks
    return (np.einsum("ic,ij,jc->c", a, mm, a) + np.einsum("ic,ij,jc->c", b, mm, b)) / (p - 1) ** 2


def load_gradient_criteria() -> bool:
    """Register the gradient criteria when the gradient engine is part of this build."""
    import importlib
    import importlib.util

    if importlib.util.find_spec("onnxslice.grad") is None:
        return False
    for mod in ("onnxslice.sensitivity.gradient", "onnxslice.sensitivity.paths"):
        if importlib.util.find_spec(mod) is not None:
            importlib.import_module(mod)
    return True


register(Weight())
register(FiniteDifference())
register(Hsic())
