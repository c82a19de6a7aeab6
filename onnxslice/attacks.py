"""Adversarial examples computed from the ONNX graph itself: gradient, optimisation, score and spatial attacks.

Every attack is batched and runs on any ONNX classifier with one float input, without its training
code: the gradient attacks differentiate the model with onnxslice's own VJP rules
(:class:`~onnxslice.grad.GradientEngine`), the others only run it in onnxruntime. Each has a bound
and a step count; inputs stay in the valid box ``clip`` (``[0, 1]`` images by default). Nothing here
changes the model.

============  =========================================================  ===================================
attack        what it does                                               bound / steps
============  =========================================================  ===================================
``fgsm``      one signed-gradient step of the cross-entropy              L-inf ``epsilon``; 1 step
``bim``       iterated FGSM from ``x`` (Kurakin et al., 2017)            L-inf ``epsilon``; ``steps``
``pgd``       projected gradient ascent, random start (Madry et al.)     L-inf or L2 ``epsilon``; ``steps``
``deepfool``  linearised minimal step to the nearest class boundary      L2 ``epsilon`` (cap); ``steps``
``cw_l2``     Carlini-Wagner L2, tanh box, Adam, binary search over c    L2 ``epsilon`` (cap); ``steps`` x
                                                                         ``search_steps`` (5)
``square``    random square updates of the margin loss (no gradient)     L-inf ``epsilon``; ``steps`` queries
``noise``     additive uniform (L-inf) or Gaussian noise: a control     L-inf ``epsilon`` (uniform); 1
``spatial``   worst rotation/translation on a grid (no gradient)         ``max_angle`` deg, ``max_shift`` px
============  =========================================================  ===================================

:data:`ATTACKS` maps each name to its function and :data:`STRENGTHS` to the documented strength the
tests and the detection benchmark use on ``[0, 1]`` MNIST images; :func:`run_attack` applies one by
name. The logit attacks (DeepFool, CW) read the first output as logits; when it comes out of a
Softmax they read its logarithm, which differs from the logits by one constant per sample, so every
logit difference they use is exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from onnxslice.errors import DataError
from onnxslice.grad import GradientEngine
from onnxslice.grad.engine import logits_value
from onnxslice.model import Model, load
from onnxslice.record import Recorder
from onnxslice.targets import default_output

__all__ = [
    "ATTACKS",
    "STRENGTHS",
    "accuracy",
    "bim",
    "cw_l2",
    "deepfool",
    "fgsm",
    "noise",
    "pgd",
    "predict",
    "run_attack",
    "spatial",
    "square",
]

Box = tuple[float, float] | None
Labels = Sequence[int] | np.ndarray


# -- shared helpers ---------------------------------------------------------------------------------
def _model(model: Model | Any) -> Model:
    return model if isinstance(model, Model) else load(model)


def _check_input(model: Model, x: np.ndarray, attack: str) -> str:
    """The name of the model's one float input, or a one-line DataError."""
    if len(model.inputs) != 1:
        raise DataError(f"{attack} perturbs one float input; the model has inputs {', '.join(model.input_names)}")
    vi = model.inputs[0]
    if vi.dtype is None or not np.issubdtype(vi.dtype, np.floating):
        raise DataError(
            f"{attack} cannot perturb input '{vi.name}' ({vi.describe()}): attacks need a float input, "
            "an integer input has no small perturbations"
        )
    if not np.issubdtype(np.asarray(x).dtype, np.floating):
        raise DataError(f"{attack} got {np.asarray(x).dtype} data for input '{vi.name}'; pass float data")
    return vi.name


def _engine(model: Model | Any, engine: GradientEngine | None, kind: str = "loss") -> GradientEngine:
    if engine is not None:
        if engine.target.kind != kind:
            raise DataError(f"this attack needs an engine with target='{kind}', not '{engine.target.spec}'")
        return engine
    return GradientEngine(_model(model), kind, weights=[], device="auto")


def _loss_grad(engine: GradientEngine, x: np.ndarray, labels: np.ndarray, batch_size: int | None) -> np.ndarray:
    name = _check_input(engine.model, x, "the attack")
    return engine(x, labels=labels, batch_size=batch_size).inputs[name]


def _clip(x: np.ndarray, box: Box) -> np.ndarray:
    return np.clip(x, box[0], box[1]) if box is not None else x


def _flat_norm(a: np.ndarray) -> np.ndarray:
    """Per-sample L2 norm, shaped ``[N, 1, 1, ...]`` to broadcast against ``a``."""
    n = np.sqrt((a.reshape(len(a), -1).astype(np.float64) ** 2).sum(axis=1))
    return n.reshape((len(a),) + (1,) * (a.ndim - 1))


def _project_l2(delta: np.ndarray, epsilon: float) -> np.ndarray:
    norm = _flat_norm(delta)
    return (delta * np.minimum(1.0, epsilon / np.maximum(norm, 1e-12))).astype(delta.dtype)


class _Logits:
    """Forward logits and logit-difference gradients of one model (see the module docstring)."""

    def __init__(self, model: Model | Any, attack: str, device: str = "auto") -> None:
        self.model = _model(model)
        self.name = self.model.input_names[0] if self.model.inputs else ""
        self.attack = attack
        out = default_output(self.model)
        self.log = logits_value(self.model, out) != out  # a Softmax output: use log-probabilities
        self.rec = Recorder(self.model, None, device)  # type: ignore[arg-type]
        self.out = out
        self._eng: GradientEngine | None = None
        self._shape: tuple[int, ...] | None = None

    def __call__(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        parts = []
        for s in range(0, len(x), batch_size):
            y = self.rec.run({self.name: x[s : s + batch_size]})[self.out]
            parts.append(y.reshape(len(y), -1).astype(np.float64))
        z = np.concatenate(parts) if parts else np.zeros((0, 0))
        return np.log(np.maximum(z, 1e-30)) if self.log else z

    def grad(self, x: np.ndarray, cot: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """``d <cot, logits> / d x`` per sample."""
        if self._eng is None:
            self._eng = GradientEngine(self.model, "cotangent", weights=[], device="auto")
        if self._shape is None:
            self._shape = tuple(self._eng.recorder.run({self.name: x[:1]})[self.out].shape[1:])
        shape = self._shape
        c = cot
        if self.log:  # d/dp <c, log p> = c / p
            c = c / np.maximum(np.exp(self(x)), 1e-30)
        g = self._eng(x, cotangent=c.reshape((len(x), *shape)).astype(np.float32), batch_size=batch_size)
        return g.inputs[self.name]


def predict(model: Model | Any, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The class (argmax of the first output) of every sample."""
    m = _model(model)
    _check_input(m, x, "predict")
    return _Logits(m, "predict")(x, batch_size).argmax(axis=1)


def accuracy(model: Model | Any, x: np.ndarray, labels: Labels, batch_size: int = 256) -> float:
    """Top-1 accuracy of a classifier (argmax of its first output) on ``x``."""
    return float((predict(model, x, batch_size) == np.asarray(labels)).mean())


# -- gradient attacks --------------------------------------------------------------------------------
def fgsm(
    model: Model | Any,
    x: np.ndarray,
    labels: Labels,
    epsilon: float = 0.1,
    *,
    clip: Box = (0.0, 1.0),
    engine: GradientEngine | None = None,
    batch_size: int | None = None,
) -> np.ndarray:
    """Fast Gradient Sign Method (Goodfellow et al., 2015): ``x + epsilon * sign(d loss / d x)``.

    Args:
        model: a Model, path or ModelProto (a classifier with one float input).
        x: inputs ``[N, ...]``.
        labels: true class per sample.
        epsilon: the L-infinity budget.
        clip: the valid input box (None: unbounded).
        engine: a prepared ``GradientEngine(model, "loss")`` to reuse.
        batch_size: samples per gradient pass.

    Returns:
        The adversarial inputs, same shape and dtype as ``x``.

    Raises:
        DataError: an integer input, or an engine with another target.
    """
    m = engine.model if engine is not None else _model(model)
    _check_input(m, x, "fgsm")
    eng = _engine(m, engine)
    g = _loss_grad(eng, x, np.asarray(labels), batch_size)
    return _clip(x + epsilon * np.sign(g), clip).astype(x.dtype)


def pgd(
    model: Model | Any,
    x: np.ndarray,
    labels: Labels,
    epsilon: float = 0.1,
    *,
    steps: int = 10,
    step_size: float | None = None,
    norm: str = "inf",
    random_start: bool = True,
    seed: int = 0,
    clip: Box = (0.0, 1.0),
    engine: GradientEngine | None = None,
    batch_size: int | None = None,
) -> np.ndarray:
    """Projected gradient ascent on the cross-entropy (Madry et al., 2018) in an L-inf or L2 ball.

    L-inf steps add ``step_size * sign(g)``; L2 steps add ``step_size * g / ||g||``. After each step the
    perturbation is projected back onto the ball and the input onto ``clip``. The random start is
    uniform in the L-inf ball, or uniform in the L2 ball (Gaussian direction, radius ``epsilon * u^(1/d)``).

    Args:
        model: a Model, path or ModelProto.
        x: inputs ``[N, ...]``.
        labels: true class per sample.
        epsilon: the budget (radius of the ball).
        steps: gradient steps.
        step_size: size of each step (default ``2.5 * epsilon / steps``).
        norm: ``"inf"`` or ``"2"``.
        random_start: start from a uniform point of the ball (seeded by ``seed``); False gives BIM.
        seed: random seed of the start.
        clip: the valid input box (None: unbounded).
        engine: a prepared ``GradientEngine(model, "loss")`` to reuse.
        batch_size: samples per gradient pass.

    Returns:
        The adversarial inputs, within ``epsilon`` of ``x`` (in ``norm``) and inside ``clip``.

    Raises:
        DataError: ``steps < 1``, an unknown norm, an integer input.
    """
    if steps < 1:
        raise DataError(f"pgd needs steps >= 1, got {steps}")
    if norm not in ("inf", "2"):
        raise DataError(f"pgd norm must be 'inf' or '2', got '{norm}'")
    m = engine.model if engine is not None else _model(model)
    _check_input(m, x, "pgd")
    eng = _engine(m, engine)
    lab = np.asarray(labels)
    alpha = step_size if step_size is not None else 2.5 * epsilon / steps
    rng = np.random.default_rng(seed)
    if not random_start:
        adv = x.copy()
    elif norm == "inf":
        adv = x + rng.uniform(-epsilon, epsilon, x.shape)
    else:
        d = rng.standard_normal(x.shape)
        dim = int(np.prod(x.shape[1:]))
        radius = epsilon * rng.uniform(0, 1, (len(x),) + (1,) * (x.ndim - 1)) ** (1.0 / dim)
        adv = x + d / np.maximum(_flat_norm(d), 1e-12) * radius
    adv = _clip(adv, clip).astype(x.dtype)
    for _ in range(steps):
        g = _loss_grad(eng, adv, lab, batch_size)
        if norm == "inf":
            adv = np.clip(adv + alpha * np.sign(g), x - epsilon, x + epsilon)
        else:
            step = alpha * g / np.maximum(_flat_norm(g), 1e-12)
            adv = x + _project_l2((adv + step - x).astype(x.dtype), epsilon)
        adv = _clip(adv, clip).astype(x.dtype)
    return adv


def bim(
    model: Model | Any,
    x: np.ndarray,
    labels: Labels,
    epsilon: float = 0.1,
    *,
    steps: int = 10,
    step_size: float | None = None,
    clip: Box = (0.0, 1.0),
    engine: GradientEngine | None = None,
    batch_size: int | None = None,
) -> np.ndarray:
    """Basic Iterative Method (Kurakin et al., 2017): L-inf PGD from ``x`` itself (no random start).

    Args and returns as :func:`pgd` (``step_size`` defaults to ``2.5 * epsilon / steps``).
    """
    return pgd(
        model,
        x,
        labels,
        epsilon,
        steps=steps,
        step_size=step_size,
        norm="inf",
        random_start=False,
        clip=clip,
        engine=engine,
        batch_size=batch_size,
    )


def deepfool(
    model: Model | Any,
    x: np.ndarray,
    labels: Labels | None = None,
    epsilon: float | None = None,
    *,
    steps: int = 50,
    overshoot: float = 0.02,
    candidates: int = 10,
    clip: Box = (0.0, 1.0),
    batch_size: int | None = None,
) -> np.ndarray:
    """DeepFool (Moosavi-Dezfooli et al., 2016): repeated minimal L2 steps to the linearised nearest boundary.

    At each step, for every sample still classified as its original class ``k0``, and for each of
    the ``candidates - 1`` next most likely classes ``k``: ``w_k = grad(z_k - z_k0)``,
    ``f_k = z_k - z_k0``; the step goes to the closest linearised boundary,
    ``r = (|f_k| + 1e-4) / ||w_k||^2 * w_k``. The total perturbation is scaled by ``1 + overshoot``.
    One gradient pass per candidate class and step (onnxslice's ``cotangent`` target).

    Args:
        model: a Model, path or ModelProto.
        x: inputs ``[N, ...]``.
        labels: unused (DeepFool starts from the model's own prediction); accepted for a uniform API.
        epsilon: optional L2 cap on the final perturbation (None: uncapped).
        steps: the most linearisation steps.
        overshoot: the final scaling of the perturbation beyond the boundary.
        candidates: how many top classes to consider (the original one included).
        clip: the valid input box.
        batch_size: samples per gradient pass.

    Returns:
        The adversarial inputs (samples that did not flip within ``steps`` keep their last iterate).
    """
    if steps < 1:
        raise DataError(f"deepfool needs steps >= 1, got {steps}")
    m = _model(model)
    _check_input(m, x, "deepfool")
    lg = _Logits(m, "deepfool")
    z0 = lg(x)
    k0 = z0.argmax(axis=1)
    n, classes = z0.shape
    cand = np.argsort(-z0, axis=1)[:, 1 : max(2, min(candidates, classes))]
    r_tot = np.zeros_like(x, dtype=np.float64)
    adv = x.copy()
    active = np.arange(n)
    for _ in range(steps):
        if active.size == 0:
            break
        xa = adv[active]
        z = lg(xa)
        best = np.full(active.size, np.inf)
        best_r = np.zeros_like(xa, dtype=np.float64)
        for j in range(cand.shape[1]):
            k = cand[active, j]
            cot = np.zeros_like(z)
            cot[np.arange(active.size), k] = 1.0
            cot[np.arange(active.size), k0[active]] -= 1.0
            w = lg.grad(xa, cot, batch_size).astype(np.float64)
            f = z[np.arange(active.size), k] - z[np.arange(active.size), k0[active]]
            wn = _flat_norm(w).reshape(-1)
            dist = np.abs(f) / np.maximum(wn, 1e-12)
            better = dist < best
            best = np.where(better, dist, best)
            coef = ((np.abs(f) + 1e-4) / np.maximum(wn**2, 1e-24)).reshape((-1,) + (1,) * (x.ndim - 1))
            best_r[better] = (coef * w)[better]
        r_tot[active] += best_r
        pert = (1 + overshoot) * r_tot[active]
        if epsilon is not None:
            pert = _project_l2(pert, epsilon)
        adv[active] = _clip(x[active] + pert, clip).astype(x.dtype)
        still = lg(adv[active]).argmax(axis=1) == k0[active]
        active = active[still]
    return adv


def cw_l2(
    model: Model | Any,
    x: np.ndarray,
    labels: Labels,
    epsilon: float | None = None,
    *,
    steps: int = 100,
    search_steps: int = 5,
    c_init: float = 1.0,
    confidence: float = 0.0,
    lr: float = 0.05,
    clip: tuple[float, float] = (0.0, 1.0),
    batch_size: int | None = None,
) -> np.ndarray:
    """Carlini-Wagner L2 (2017), untargeted: minimise ``||x' - x||^2 + c * max(z_y - max_{j!=y} z_j, -kappa)``.

    ``x'`` lives in tanh space (``x' = lo + (hi - lo) * (tanh(w) + 1) / 2``), so it stays in ``clip``
    without projection; ``w`` follows Adam (``lr``) for ``steps`` iterations per value of ``c``. The
    constant ``c`` is set by a binary search of a fixed ``search_steps`` rounds (default 5), starting
    at ``c_init``: up (x10 while no upper bound is known) where the attack failed, down (bisection)
    where it succeeded. Each sample keeps its smallest successful perturbation; the gradient of the
    margin term comes from the model's own VJP rules (``cotangent`` target on the logits).

    Args:
        model: a Model, path or ModelProto.
        x: inputs ``[N, ...]`` inside ``clip``.
        labels: true class per sample.
        epsilon: optional L2 cap: a successful perturbation larger than this is not kept.
        steps: Adam iterations per binary-search round.
        search_steps: binary-search rounds over ``c`` (fixed).
        c_init: the first ``c``.
        confidence: the margin ``kappa``.
        lr: Adam learning rate (in tanh space).
        clip: the valid input box (required: it defines the tanh change of variables).
        batch_size: samples per gradient pass.

    Returns:
        The adversarial inputs; samples for which no perturbation succeeded (within ``epsilon``) are ``x``.
    """
    if steps < 1 or search_steps < 1:
        raise DataError(f"cw_l2 needs steps >= 1 and search_steps >= 1, got {steps} and {search_steps}")
    m = _model(model)
    _check_input(m, x, "cw_l2")
    lg = _Logits(m, "cw_l2")
    lab = np.asarray(labels)
    lo, hi = clip
    n = len(x)
    x64 = x.astype(np.float64)
    w0 = np.arctanh(np.clip((x64 - lo) / (hi - lo) * 2 - 1, -1 + 1e-6, 1 - 1e-6))
    c = np.full(n, float(c_init))
    c_lo = np.zeros(n)
    c_hi = np.full(n, np.inf)
    best_l2 = np.full(n, np.inf)
    best = x.copy()
    rows = np.arange(n)
    for _ in range(search_steps):
        w = w0.copy()
        mom = np.zeros_like(w)
        v = np.zeros_like(w)
        ok = np.zeros(n, bool)
        for t in range(1, steps + 1):
            xa = lo + (hi - lo) * (np.tanh(w) + 1) / 2
            xa32 = xa.astype(x.dtype)
            z = lg(xa32)
            other = z.copy()
            other[rows, lab] = -np.inf
            j = other.argmax(axis=1)
            margin = z[rows, lab] - z[rows, j]
            l2 = ((xa - x64) ** 2).reshape(n, -1).sum(axis=1)
            hit = (margin < 0) & (z.argmax(axis=1) != lab)
            improve = hit & (l2 < best_l2)
            if epsilon is not None:
                improve &= np.sqrt(l2) <= epsilon
            best_l2 = np.where(improve, l2, best_l2)
            best[improve] = xa32[improve]
            ok |= hit
            act = margin > -confidence
            cot = np.zeros_like(z)
            cot[rows, lab] = c * act
            cot[rows, j] -= c * act
            gz = lg.grad(xa32, cot, batch_size).astype(np.float64) if act.any() else np.zeros_like(xa)
            gx = 2 * (xa - x64) + gz
            gw = gx * (hi - lo) / 2 * (1 - np.tanh(w) ** 2)
            mom = 0.9 * mom + 0.1 * gw
            v = 0.999 * v + 0.001 * gw * gw
            w -= lr * (mom / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
        c_hi = np.where(ok, np.minimum(c_hi, c), c_hi)
        c_lo = np.where(ok, c_lo, np.maximum(c_lo, c))
        c = np.where(np.isfinite(c_hi), (c_lo + c_hi) / 2, c * 10)
    return best


# -- score-based and random ----------------------------------------------------------------------
def square(
    model: Model | Any,
    x: np.ndarray,
    labels: Labels,
    epsilon: float = 0.3,
    *,
    steps: int = 300,
    p_init: float = 0.3,
    seed: int = 0,
    clip: Box = (0.0, 1.0),
    batch_size: int = 256,
) -> np.ndarray:
    """Square Attack, L-inf (Andriushchenko et al., 2020): random search with only forward passes.

    Starts from vertical stripes of ``+-epsilon``; each of ``steps`` queries redraws one random square
    window (side ``sqrt(p * H * W)``, ``p`` halving on the paper's schedule from ``p_init``) to
    ``+-epsilon`` per channel, and keeps it where it lowers the margin ``z_y - max_{j!=y} z_j``.
    Samples already misclassified stop being queried.

    Args:
        model: a Model, path or ModelProto (images ``[N, C, H, W]``).
        x: inputs.
        labels: true class per sample.
        epsilon: the L-inf budget.
        steps: the most queries per sample.
        p_init: initial fraction of pixels a square covers.
        seed: random seed.
        clip: the valid input box.
        batch_size: samples per forward pass.

    Returns:
        The adversarial inputs, within ``epsilon`` of ``x`` (L-inf) and inside ``clip``.
    """
    m = _model(model)
    _check_input(m, x, "square")
    if x.ndim != 4:
        raise DataError(f"square needs images [N, C, H, W]; got shape {list(x.shape)}")
    if steps < 1:
        raise DataError(f"square needs steps >= 1, got {steps}")
    lg = _Logits(m, "square")
    lab = np.asarray(labels)
    rng = np.random.default_rng(seed)
    n, ch, h, w = x.shape

    def margin(xa: np.ndarray, idx: np.ndarray) -> np.ndarray:
        z = lg(xa, batch_size)
        r = np.arange(len(idx))
        y = lab[idx]
        other = z.copy()
        other[r, y] = -np.inf
        return z[r, y] - other.max(axis=1)

    stripes = rng.choice([-epsilon, epsilon], size=(n, ch, 1, w))
    adv = _clip(x + stripes, clip).astype(x.dtype)
    loss = margin(adv, np.arange(n))
    for i in range(steps):
        act = np.nonzero(loss > 0)[0]
        if act.size == 0:
            break
        frac = p_init / 2 ** sum(i >= t for t in (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000))
        s = max(1, min(h - 1, round(math.sqrt(frac * h * w))))
        cand = adv[act].copy()
        for k, idx in enumerate(act):
            r0 = rng.integers(0, h - s + 1)
            c0 = rng.integers(0, w - s + 1)
            val = rng.choice([-epsilon, epsilon], size=(ch, 1, 1))
            cand[k, :, r0 : r0 + s, c0 : c0 + s] = x[idx, :, r0 : r0 + s, c0 : c0 + s] + val
        cand = _clip(np.clip(cand, x[act] - epsilon, x[act] + epsilon), clip).astype(x.dtype)
        new = margin(cand, act)
        better = new < loss[act]
        adv[act[better]] = cand[better]
        loss[act[better]] = new[better]
    return adv


def noise(
    model: Model | Any,
    x: np.ndarray,
    labels: Labels | None = None,
    epsilon: float = 0.3,
    *,
    distribution: str = "uniform",
    seed: int = 0,
    clip: Box = (0.0, 1.0),
) -> np.ndarray:
    """Additive random noise, the negative control: it should barely hurt a model a real attack breaks.

    ``uniform``: ``U(-epsilon, epsilon)`` per element (L-inf bound ``epsilon``); ``gaussian``:
    ``N(0, epsilon^2)`` per element, clipped to the box only. ``model`` and ``labels`` are accepted
    for a uniform API (the input is checked to be float).
    """
    _check_input(_model(model), x, "noise")
    rng = np.random.default_rng(seed)
    if distribution == "uniform":
        d = rng.uniform(-epsilon, epsilon, x.shape)
    elif distribution == "gaussian":
        d = rng.normal(0.0, epsilon, x.shape)
    else:
        raise DataError(f"noise distribution must be 'uniform' or 'gaussian', got '{distribution}'")
    return _clip(x + d, clip).astype(x.dtype)


# -- spatial ---------------------------------------------------------------------------------------
def _warp(x: np.ndarray, angle: float, dx: float, dy: float) -> np.ndarray:
    """Rotate ``x`` [N, C, H, W] by ``angle`` degrees about its centre and shift by (dx, dy) pixels.

    Bilinear sampling, zero outside the image (MNIST's background).
    """
    h, w = x.shape[2:]
    t = math.radians(angle)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    # inverse map: output pixel -> source pixel
    yo, xo = yy - cy - dy, xx - cx - dx
    sx = math.cos(t) * xo + math.sin(t) * yo + cx
    sy = -math.sin(t) * xo + math.cos(t) * yo + cy
    x0, y0 = np.floor(sx).astype(int), np.floor(sy).astype(int)
    fx, fy = sx - x0, sy - y0
    out = np.zeros_like(x, dtype=np.float64)
    for oy, ox, wt in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        yi, xi = y0 + oy, x0 + ox
        ok = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
        vals = x[:, :, np.clip(yi, 0, h - 1), np.clip(xi, 0, w - 1)]
        out += vals * (wt * ok)
    return out.astype(x.dtype)


def spatial(
    model: Model | Any,
    x: np.ndarray,
    labels: Labels,
    max_angle: float = 30.0,
    max_shift: int = 3,
    *,
    angles: int = 7,
    return_params: bool = False,
    batch_size: int = 256,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Worst-of-grid rotation and translation (Engstrom et al., 2019): no gradient, forward passes only.

    Tries every rotation in ``linspace(-max_angle, max_angle, angles)`` combined with every integer
    shift in ``[-max_shift, max_shift]`` on both axes, and keeps per sample the transform with the
    largest cross-entropy of the true label (the first that misclassifies, in grid order, when
    several do).

    Args:
        model: a Model, path or ModelProto (images ``[N, C, H, W]``).
        x: inputs.
        labels: true class per sample.
        max_angle: the largest rotation, degrees.
        max_shift: the largest translation, pixels.
        angles: rotations tried (odd keeps 0).
        return_params: also return ``[N, 3]`` (angle, dx, dy) of the chosen transform.
        batch_size: samples per forward pass.

    Returns:
        The transformed inputs (and the parameters when asked).
    """
    m = _model(model)
    _check_input(m, x, "spatial")
    if x.ndim != 4:
        raise DataError(f"spatial needs images [N, C, H, W]; got shape {list(x.shape)}")
    lg = _Logits(m, "spatial")
    lab = np.asarray(labels)
    rows = np.arange(len(x))
    best = x.copy()
    best_loss = np.full(len(x), -np.inf)
    params = np.zeros((len(x), 3))
    shifts = range(-int(max_shift), int(max_shift) + 1)
    for a in np.linspace(-max_angle, max_angle, max(1, angles)):
        for dx in shifts:
            for dy in shifts:
                xt = _warp(x, float(a), dx, dy)
                z = lg(xt, batch_size)
                zmax = z.max(axis=1)
                ce = np.log(np.exp(z - zmax[:, None]).sum(axis=1)) + zmax - z[rows, lab]
                wrong = z.argmax(axis=1) != lab
                ce = np.where(wrong, ce + 1e6, ce)  # any misclassification beats a larger loss
                upd = ce > best_loss
                best[upd] = xt[upd]
                best_loss[upd] = ce[upd]
                params[upd] = (a, dx, dy)
    return (best, params) if return_params else best


# -- registry ------------------------------------------------------------------------------------
ATTACKS: dict[str, Callable[..., Any]] = {
    "fgsm": fgsm,
    "bim": bim,
    "pgd": pgd,
    "pgd-l2": lambda *a, **k: pgd(*a, norm="2", **k),
    "deepfool": deepfool,
    "cw-l2": cw_l2,
    "square": square,
    "noise-uniform": noise,
    "noise-gaussian": lambda *a, **k: noise(*a, distribution="gaussian", **k),
    "spatial": spatial,
}

#: The documented strength of each attack on ``[0, 1]`` 28x28 MNIST images (keyword arguments).
STRENGTHS: dict[str, dict[str, Any]] = {
    "fgsm": {"epsilon": 0.2},
    "bim": {"epsilon": 0.15, "steps": 10},
    "pgd": {"epsilon": 0.2, "steps": 10},
    "pgd-l2": {"epsilon": 2.0, "steps": 10},
    "deepfool": {"epsilon": 4.0, "steps": 50},
    "cw-l2": {"epsilon": 4.0, "steps": 50, "search_steps": 5},
    "square": {"epsilon": 0.3, "steps": 300},
    "noise-uniform": {"epsilon": 0.2},
    "noise-gaussian": {"epsilon": 0.2},
    "spatial": {"max_angle": 30.0, "max_shift": 3},
}


def run_attack(name: str, model: Model | Any, x: np.ndarray, labels: Labels, **kwargs: Any) -> np.ndarray:
    """Apply the attack ``name`` (a key of :data:`ATTACKS`) at its documented strength, overridden by ``kwargs``.

    Raises:
        DataError: an unknown attack name, or the attack's own errors (an integer input...).
    """
    if name not in ATTACKS:
        raise DataError(f"unknown attack '{name}'; known: {', '.join(ATTACKS)}")
    opts = {**STRENGTHS.get(name, {}), **kwargs}
    out = ATTACKS[name](model, x, labels, **opts)
    return out[0] if isinstance(out, tuple) else out
