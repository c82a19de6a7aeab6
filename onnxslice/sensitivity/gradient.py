"""Gradient criteria (``grad``, ``wgrad``, ``gradcampp``) and the :class:`NoiseTunnel` that wraps them
into ``smoothgrad`` and ``vargrad``.

All use :class:`onnxslice.grad.GradientEngine` through the :class:`~onnxslice.sensitivity.context.Context`:
one engine per context, the layers' weights swappable, so evaluations at substituted weights (noise,
paths) reuse one onnxruntime session. For ``pred``/``class:K`` targets the class of every sample is
fixed by the unperturbed model (an explicit one-hot output cotangent), so noisy or shifted weights
score the same class.

- ``grad``: ``E_x[df/dw]``; ``wgrad``: ``w * E_x[df/dw]`` (SAfER eqs. 5, 6): one engine pass (summed
  over samples).
- ``gradcampp``: ``E_x[g^2 / (2 g^2 + w g^3)]``, ``g = df/dw`` per sample, as printed in SAfER eq. 7
  (0/0 and a zero denominator give 0): per-sample gradients, chunk by chunk.
- ``smoothgrad`` = ``NoiseTunnel(grad, "smooth")``: ``E_{x,n}[df/dw at w + n]``; ``vargrad`` =
  ``NoiseTunnel(grad, "var")``: ``V_{x,n}[df/dw at w + n]`` (variance over samples and noise, SAfER
  eq. 10). Every draw adds ``n ~ N(0, (sigma * (max w_l - min w_l))^2)`` to every layer at once (option
  ``sigma``, default 0.1, SmoothGrad's 10% of the range), so one pass per draw serves all layers:
  ``noise_samples`` passes (per-sample ones for ``vargrad``), several draws per engine call
  (:meth:`~onnxslice.sensitivity.context.Context.grad_chunks_many`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from onnxslice.sensitivity.context import Context
from onnxslice.sensitivity.criteria import Criterion, register
from onnxslice.sensitivity.reductions import check_name
from onnxslice.sensitivity.stacked import Points

__all__ = ["GradCriterion", "NoiseTunnel", "gradcampp_fn"]

PerSample = Callable[[np.ndarray, np.ndarray], np.ndarray]


def gradcampp_fn(g: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``g^2 / (2 g^2 + w g^3)`` elementwise, 0 where the denominator is 0."""
    num = g * g
    den = 2.0 * num + w * num * g
    out = np.zeros_like(num)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _weights_of(ctx: Context, weights: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    return {x.weight: np.asarray((weights or {}).get(x.weight, ctx.model.initializer(x.weight)), np.float64)
            for x in ctx.layers}


class GradCriterion:
    """``E_x[fn(df/dw, w)]`` per weight.

    Args:
        name: registry name.
        fn: per-sample map of ``(g, w)``; None means linear in ``g`` (``g`` itself, or ``w * g`` with
            ``times_weight``), computed from the sum over samples in one pass.
        times_weight: multiply the mean gradient by ``w`` (``wgrad``).
    """

    needs_gradients = True

    def __init__(self, name: str, fn: PerSample | None = None, times_weight: bool = False) -> None:
        self.name, self.fn, self.times_weight = name, fn, times_weight

    def _per_sample(self, g: np.ndarray, w: np.ndarray) -> np.ndarray:
        if self.fn is not None:
            return self.fn(g, w)
        return w * g if self.times_weight else g

    def relevance(self, ctx: Context, weights: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        return self.relevance_many(ctx, [weights])[0]

    def relevance_many(
        self, ctx: Context, points: Sequence[Mapping[str, np.ndarray] | None], desc: str = ""
    ) -> list[dict[str, np.ndarray]]:
        """:meth:`relevance` at every point of ``points``, several points per engine call."""
        if self.fn is None:
            out = []
            for weights, (mean, _) in zip(points, ctx.mean_grads_many(points, desc=desc), strict=True):
                ws = _weights_of(ctx, weights) if self.times_weight else {}
                out.append({x.name: (ws[x.weight] * mean[x.weight] if self.times_weight else mean[x.weight])
                            for x in ctx.layers})
            return out
        return [{k: v[0] for k, v in mom.items()} for mom in self.moments_many(ctx, points, desc=desc)]

    def moments(
        self, ctx: Context, weights: Mapping[str, np.ndarray] | None = None
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per layer: ``(E_x[r], E_x[r^2])`` of the per-sample relevance ``r`` (for variances)."""
        return self.moments_many(ctx, [weights])[0]

    def moments_many(
        self, ctx: Context, points: Sequence[Mapping[str, np.ndarray] | None], desc: str = ""
    ) -> list[dict[str, tuple[np.ndarray, np.ndarray]]]:
        """:meth:`moments` at every point, several points per engine call (per-sample gradients)."""
        cal = ctx.need_data(self.name)
        s1: list[dict[str, np.ndarray]] = [{} for _ in points]
        s2: list[dict[str, np.ndarray]] = [{} for _ in points]
        chunk = int(ctx.option("per_sample_chunk", 32))
        ws: dict[str, np.ndarray] = {}
        at = -1
        for i, _, gw, _ in ctx.grad_chunks_many(points, per_sample=True, chunk=chunk, desc=desc):
            if i != at and (self.fn is not None or self.times_weight):
                ws, at = _weights_of(ctx, points[i]), i
            for x in ctx.layers:
                g = np.asarray(gw[x.weight], np.float64)
                r = self._per_sample(g, ws[x.weight][None]) if ws else g
                a, b = r.sum(axis=0), (r * r).sum(axis=0)
                s1[i][x.name] = s1[i][x.name] + a if x.name in s1[i] else a
                s2[i][x.name] = s2[i][x.name] + b if x.name in s2[i] else b
        n = len(cal)
        return [{k: (p1[k] / n, p2[k] / n) for k in p1} for p1, p2 in zip(s1, s2, strict=True)]


class NoiseTunnel:
    """SmoothGrad / VarGrad around any per-sample gradient criterion (composition, as Captum's NoiseTunnel).

    Args:
        base: the wrapped criterion (needs ``moments`` for ``kind="var"``).
        kind: ``smooth`` (mean over noise draws) or ``var`` (variance over samples and draws).
        name: registry name (default ``smooth<base>``/``var<base>``).
    """

    needs_gradients = True

    def __init__(self, base: Criterion, kind: str = "smooth", name: str | None = None) -> None:
        self.base = base
        self.kind = check_name("noise tunnel kind", kind, ("smooth", "var"))
        self.name = name or f"{kind}{base.name}"

    def noisy_weights(self, ctx: Context, draw: int) -> dict[str, np.ndarray]:
        """Every layer's weight plus its noise for ``draw``."""
        sigma = float(ctx.option("sigma", 0.1))
        out = {}
        for li, x in ctx.iter_layers():
            w = ctx.model.initializer(x.weight)
            span = float(w.max() - w.min()) or 1.0
            noise = ctx.rng(li, draw, 104729).normal(0.0, sigma * span, w.shape)
            out[x.weight] = (w + noise).astype(w.dtype)
        return out

    def relevance(self, ctx: Context, weights: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        draws = ctx.noise_samples
        points = Points(draws, lambda d: self.noisy_weights(ctx, d))
        desc = f"{self.name}: {draws} noise draws"
        if self.kind == "smooth":
            many = getattr(self.base, "relevance_many", None)
            rels = (many(ctx, points, desc=desc) if many is not None
                    else (self.base.relevance(ctx, points[d]) for d in range(draws)))
            acc: dict[str, np.ndarray] = {}
            for rel in rels:
                for k, v in rel.items():
                    acc[k] = acc[k] + v if k in acc else np.asarray(v, np.float64)
            return {k: v / draws for k, v in acc.items()}
        moments_many = getattr(self.base, "moments_many", None)
        if moments_many is None:
            raise TypeError(f"VarGrad needs per-sample moments; criterion '{self.base.name}' has none")
        m1: dict[str, np.ndarray] = {}
        m2: dict[str, np.ndarray] = {}
        for mom in moments_many(ctx, points, desc=desc):
            for k, (a, b) in mom.items():
                m1[k] = m1[k] + a if k in m1 else a
                m2[k] = m2[k] + b if k in m2 else b
        return {k: np.maximum(m2[k] / draws - (m1[k] / draws) ** 2, 0.0) for k in m1}


GRAD = register(GradCriterion("grad"))
register(GradCriterion("wgrad", times_weight=True))
register(GradCriterion("gradcampp", gradcampp_fn))
register(NoiseTunnel(GRAD, "smooth", "smoothgrad"))
register(NoiseTunnel(GRAD, "var", "vargrad"))
