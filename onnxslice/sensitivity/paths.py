"""Path criteria: integrated gradients (``ig``), guided IG (``gig``) and IDGI (``idgi``).

A path moves a *subject* (a set of layer weights) from the model's weights ``w`` toward 0; every point
is one gradient-engine pass over the calibration set (``E_x[df/dw]`` and ``E_x[f]``) with the subject's
weights substituted in the engine's single session.

Two paths (option ``path``):

- ``layer`` (default, SAfER's definition): only layer ``l`` is scaled (``lambda * w_l``), the other
  layers stay fixed; every layer has its own path. Cost: ``L * steps`` engine passes (``L * (steps + 1)``
  for ``idgi``).
- ``global``: every layer is scaled together (``lambda * w`` for all layers); one path gives every
  layer its attribution. Cost: ``steps`` passes (``steps + 1`` for ``idgi``), ``L`` times cheaper, but a
  layer's attribution then also reflects the other layers shrinking with it.

Definitions (``g(lambda)`` = ``E_x[df/dw]`` at the point, ``steps`` = ``m``):

- ``ig``: ``w * mean_k g(lambda_k)``, ``lambda_k = (k + 1/2) / m`` (midpoint rule); option
  ``ig_times_weight=False`` drops the ``w`` factor as SAfER eq. 8 prints it.
- ``idgi`` (Yang et al. 2023): points ``lambda_j = j / m``, ``j = 0..m``, with gradients ``g_j`` and mean
  targets ``f_j``: ``sum_{j<m} g_j^2 / sum(g_j^2) * (f_{j+1} - f_j)`` elementwise (the sum in the
  denominator runs over the subject's weights; the last gradient is not used).
- ``gig`` (Kapishnikov et al. 2021, the reference algorithm of the PAIR implementation): start at ``w``,
  at each of the ``m`` steps move the fraction ``gig_fraction`` (0.25) of the subject's weights with the
  smallest ``|gradient|`` toward 0, never farther than ``gig_max_dist`` (0.02) in lambda from the
  straight path; accumulate ``(w_new - w_old) * gradient``; the relevance is minus that sum (so it
  adds up to about ``f(w) - f(0)``, like IG).

Every path point is independent of the others except along one GIG path, so the points of all paths
(IG, IDGI) or step ``k`` of every path (GIG) go to the engine together, several per call, stacked along
the batch axis (:meth:`~onnxslice.sensitivity.context.Context.mean_grads_many`): the same numbers as
one call per point, fewer calls.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Mapping

import numpy as np

from onnxslice.console import progress_bar
from onnxslice.errors import DataError
from onnxslice.model import Layer
from onnxslice.sensitivity.context import Context
from onnxslice.sensitivity.criteria import register
from onnxslice.sensitivity.reductions import check_name
from onnxslice.sensitivity.stacked import Points

__all__ = ["PathCriterion", "guided_path", "guided_walk"]


def _subjects(ctx: Context) -> list[list[Layer]]:
    path = check_name("path", ctx.option("path", "layer"), ("layer", "global"))
    return [[x] for x in ctx.layers] if path == "layer" else [list(ctx.layers)]


def _at(ctx: Context, subject: list[Layer], scale: float) -> dict[str, np.ndarray]:
    return {x.weight: (ctx.model.initializer(x.weight) * scale).astype(ctx.model.initializer(x.weight).dtype)
            for x in subject}


class PathCriterion:
    """``ig``, ``gig`` or ``idgi`` over per-layer or global paths (see the module docstring)."""

    needs_gradients = True

    def __init__(self, name: str) -> None:
        self.name = check_name("path criterion", name, ("ig", "gig", "idgi"))

    def relevance(self, ctx: Context, weights: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        if weights:
            raise DataError(f"criterion '{self.name}' integrates from the model's own weights only")
        return dict(getattr(self, f"_{self.name}")(ctx, _subjects(ctx)))

    def _ig(self, ctx: Context, subjects: list[list[Layer]]) -> dict[str, np.ndarray]:
        m = ctx.steps
        points = Points(len(subjects) * m, lambda i: _at(ctx, subjects[i // m], (i % m + 0.5) / m))
        means = ctx.mean_grads_many(points, desc=f"ig: {len(subjects)} path(s) x {m} steps",
                                    subjects=_one_layer(subjects, m))
        times_w = bool(ctx.option("ig_times_weight", True))
        out = {}
        for s, subject in enumerate(subjects):
            for x in subject:
                acc = np.zeros(ctx.model.initializer(x.weight).shape)
                for k in range(m):
                    acc += means[s * m + k][0][x.weight]
                out[x.name] = (acc / m) * (np.asarray(ctx.model.initializer(x.weight), np.float64)
                                           if times_w else 1.0)
        return out

    def _idgi(self, ctx: Context, subjects: list[list[Layer]]) -> dict[str, np.ndarray]:
        m = ctx.steps
        points = Points(len(subjects) * (m + 1), lambda i: _at(ctx, subjects[i // (m + 1)], (i % (m + 1)) / m))
        means = ctx.mean_grads_many(points, desc=f"idgi: {len(subjects)} path(s) x {m + 1} points",
                                    subjects=_one_layer(subjects, m + 1))
        out = {}
        for s, subject in enumerate(subjects):
            path = means[s * (m + 1) : (s + 1) * (m + 1)]
            acc = {x.weight: np.zeros(ctx.model.initializer(x.weight).shape) for x in subject}
            for j in range(m):
                g, f0 = path[j]
                f1 = path[j + 1][1]
                norm = sum(float((g[x.weight] ** 2).sum()) for x in subject)
                if norm == 0.0:
                    continue
                for x in subject:
                    acc[x.weight] += g[x.weight] ** 2 / norm * (f1 - f0)
            out.update({x.name: acc[x.weight] for x in subject})
        return out

    def _gig(self, ctx: Context, subjects: list[list[Layer]]) -> dict[str, np.ndarray]:
        """Guided IG, every subject's path in lockstep: step ``k`` of all paths is one batch of points."""
        fraction, max_dist = float(ctx.option("gig_fraction", 0.25)), float(ctx.option("gig_max_dist", 0.02))
        shapes = [[ctx.model.initializer(x.weight).shape for x in subject] for subject in subjects]

        def split(v: np.ndarray, s: int) -> list[np.ndarray]:
            sizes = [int(np.prod(sh)) for sh in shapes[s]]
            return [p.reshape(sh) for p, sh in zip(np.split(v, np.cumsum(sizes)[:-1]), shapes[s], strict=True)]

        if len(subjects) > 1 and _one_layer(subjects, 1) is not None:
            return self._gig_by_layer(ctx, subjects, fraction, max_dist)
        walks = []
        xs: list[np.ndarray] = []
        attrs: list[np.ndarray | None] = [None] * len(subjects)
        live = []
        for s, subject in enumerate(subjects):
            start = np.concatenate([np.asarray(ctx.model.initializer(x.weight), np.float64).ravel() for x in subject])
            walk = guided_walk(start, np.zeros_like(start), ctx.steps, fraction, max_dist)
            walks.append(walk)
            try:
                xs.append(next(walk))
                live.append(s)
            except StopIteration as done:  # nothing to walk (all-zero weights)
                xs.append(start)
                attrs[s] = done.value
        while live:
            points = [{x.weight: p.astype(ctx.model.initializer(x.weight).dtype)
                       for x, p in zip(subjects[s], split(xs[s], s), strict=True)} for s in live]
            means = ctx.mean_grads_many(points, desc=f"gig: {len(live)} path(s), one step")
            still = []
            for s, (g, _) in zip(live, means, strict=True):
                try:
                    xs[s] = walks[s].send(np.concatenate([g[x.weight].ravel() for x in subjects[s]]))
                    still.append(s)
                except StopIteration as done:
                    attrs[s] = done.value
            live = still
        out = {}
        for s, subject in enumerate(subjects):
            attr = attrs[s]
            assert attr is not None
            out.update({x.name: -p for x, p in zip(subject, split(attr, s), strict=True)})
        return out

    def _gig_by_layer(
        self, ctx: Context, subjects: list[list[Layer]], fraction: float, max_dist: float
    ) -> dict[str, np.ndarray]:
        """Per-layer guided paths one layer at a time: each step runs only the graph below the layer."""
        out = {}
        with progress_bar(len(subjects) * ctx.steps, f"gig: {len(subjects)} paths x {ctx.steps} steps") as advance:
            for subject in subjects:
                (x,) = subject
                w = ctx.model.initializer(x.weight)
                start = np.asarray(w, np.float64).ravel()

                def grad_fn(v: np.ndarray, x: Layer = x, w: np.ndarray = w) -> np.ndarray:
                    ((g, _),) = ctx.mean_grads_many([{x.weight: v.reshape(w.shape).astype(w.dtype)}], subjects=[x])
                    advance(x.name)
                    return np.asarray(g[x.weight]).ravel()

                attr = guided_path(grad_fn, start, np.zeros_like(start), ctx.steps, fraction, max_dist)
                out[x.name] = -attr.reshape(w.shape)
        return out


def _one_layer(subjects: list[list[Layer]], per: int) -> list[Layer | None] | None:
    """The subject layer of each of ``per`` consecutive points per subject, when subjects are single layers."""
    if any(len(s) != 1 for s in subjects):
        return None
    return [s[0] for s in subjects for _ in range(per)]


def guided_path(
    grad_fn: Callable[[np.ndarray], np.ndarray], start: np.ndarray, end: np.ndarray, steps: int,
    fraction: float = 0.25, max_dist: float = 0.02,
) -> np.ndarray:
    """Guided IG from ``start`` to ``end``: ``sum (x_new - x_old) * grad`` along the guided path.

    The loop follows the reference implementation (PAIR ``guided_ig``): at step ``k`` the features
    behind ``alpha - max_dist`` are pulled up to it, then the ``fraction`` of the remaining features with
    the smallest ``|grad|`` move toward ``alpha + max_dist`` until the L1 distance left to ``end`` equals
    ``(1 - alpha)`` of the total. The result sums to about ``f(end) - f(start)``.
    """
    walk = guided_walk(start, end, steps, fraction, max_dist)
    try:
        x = next(walk)
        while True:
            x = walk.send(grad_fn(x))
    except StopIteration as done:
        return np.asarray(done.value)


def guided_walk(
    start: np.ndarray, end: np.ndarray, steps: int, fraction: float = 0.25, max_dist: float = 0.02,
) -> Generator[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`guided_path` as a generator: yields each point, is sent its gradient, returns the attribution.

    Lets several paths advance in lockstep, their points evaluated in one batch.
    """
    x = start.astype(np.float64).copy()
    diff = end - start
    total = float(np.abs(diff).sum())
    attr = np.zeros_like(x)
    if total == 0.0 or steps < 1:
        return attr
    for step in range(steps):
        g_actual = yield x.copy()
        with np.errstate(divide="ignore", invalid="ignore"):
            _guided_step(x, g_actual, start, end, diff, total, step, steps, fraction, max_dist, attr)
    return attr


def _guided_step(
    x: np.ndarray, g_actual: np.ndarray, start: np.ndarray, end: np.ndarray, diff: np.ndarray, total: float,
    step: int, steps: int, fraction: float, max_dist: float, attr: np.ndarray,
) -> None:
    """One step of the guided path: moves ``x`` and adds to ``attr`` in place."""
    g = np.array(g_actual, dtype=np.float64)
    alpha = (step + 1.0) / steps
    a_min, a_max = max(alpha - max_dist, 0.0), min(alpha + max_dist, 1.0)
    x_min, x_max = start + diff * a_min, start + diff * a_max
    l1_target = total * (1.0 - alpha)
    gamma = math.inf
    while gamma > 1.0:
        x_old = x.copy()
        x_alpha = (x - start) / diff
        x_alpha[np.isnan(x_alpha)] = a_max
        behind = x_alpha < a_min
        x[behind] = x_min[behind]
        l1_current = float(np.abs(x - end).sum())
        if math.isclose(l1_target, l1_current, rel_tol=1e-9, abs_tol=1e-9 * total):
            attr += (x - x_old) * g_actual
            return
        g[x == x_max] = np.inf
        finite = np.abs(g)[np.isfinite(g)]
        if finite.size == 0:
            attr += (x - x_old) * g_actual
            return
        threshold = np.quantile(finite, fraction, method="lower")
        s = (np.abs(g) <= threshold) & np.isfinite(g)
        l1_s = float((np.abs(x - x_max) * s).sum())
        gamma = (l1_current - l1_target) / l1_s if l1_s > 0 else math.inf
        if gamma > 1.0:
            x[s] = x_max[s]
        else:
            x[s] = (x + (x_max - x) * gamma)[s]
        attr += (x - x_old) * g_actual


register(PathCriterion("ig"))
register(PathCriterion("gig"))
register(PathCriterion("idgi"))
