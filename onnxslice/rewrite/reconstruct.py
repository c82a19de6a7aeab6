"""Recovery without backpropagation: BN re-estimation and layer-wise least-squares reconstruction.

After structured pruning, the layers that *consume* the pruned channels (a Conv, Gemm or MatMul whose
weight lost input columns) see fewer inputs and, through everything upstream, slightly different ones.
The standard cheap repair of channel pruning (He et al., ICCV 2017; ThiNet, Luo et al. 2017) re-fits
each consumer's weight so that its output matches the *original* layer's output, by linear least
squares on recorded feature maps, one layer at a time in topological order (so that each layer is
fitted on the inputs the already-repaired layers before it produce):

    W' = argmin_W ||X' W - Y||^2 + lambda ||W - W_0||^2,   lambda = ridge * tr(X'^T X') / d

``X'`` are the pruned model's inputs of the layer (im2col patches of a Conv at ``positions`` sampled
output positions per sample), ``Y`` the original layer's outputs at the same positions (restricted to
the kept output channels), ``W_0`` the pruned weight. The ridge pulls towards ``W_0`` rather than zero,
so a layer with fewer rows than columns (a Gemm on few samples) stays close to where it was, and the
fitted objective is never worse than ``W_0``'s. An intercept is fitted too: into the layer's bias, or,
for a bias-free Conv whose only consumer is a BatchNormalization, into that BN's running mean.

``bn`` re-estimates every BatchNormalization's running mean and variance from its inputs in the pruned
model (again in topological order, each BN after the ones before it), without any weight change.

Only forward runs in onnxruntime are needed (one pass over the calibration samples per repaired layer),
no gradients. Grouped/depthwise Convs, Convs with ``auto_pad`` SAME_* and Gemms with ``transA`` or
scaled ``alpha``/``beta`` are left as they are and listed with the reason, and so is a layer with fewer
than twice as many least-squares rows as unknowns per output (the fit would interpolate the calibration
data: a classifier Gemm on a few dozen samples).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnxslice.console import progress
from onnxslice.errors import PlanError
from onnxslice.model import Layer, Model, Node
from onnxslice.record import as_feed, make_session, runtime_proto, validate_inputs
from onnxslice.rewrite.passes import PassManager, ReplaceInitializers
from onnxslice.rewrite.prune import resolve_channels

__all__ = ["METHODS", "LayerFit", "ReconstructResult", "conv_patches", "reconstruct"]

#: Recovery methods: ``bn`` (BN statistics only), ``lsq`` (least squares), ``lsq+bn`` (both, in this order).
METHODS = ("bn", "lsq", "lsq+bn")


@dataclass
class LayerFit:
    """One re-fitted layer.

    Attributes:
        layer: node name.
        rows: least-squares rows (samples x positions).
        columns: unknowns per output channel (input patch size, plus one for the intercept).
        error_before: relative squared error ``||X' W_0 + b_0 - Y||^2 / ||Y||^2`` on those rows.
        error_after: the same with the fitted weight.
        intercept: where the intercept went: ``bias``, ``bn-mean`` or ``none``.
    """

    layer: str
    rows: int
    columns: int
    error_before: float
    error_after: float
    intercept: str


@dataclass
class ReconstructResult:
    """The repaired model and what was done.

    Attributes:
        model: the repaired model (checked, runs in onnxruntime; provenance in ``metadata_props``).
        method: ``bn``, ``lsq`` or ``lsq+bn``.
        layers: the re-fitted layers (``lsq``).
        bn: the BatchNormalization nodes whose statistics were re-estimated (``bn``).
        skipped: layer -> why it was left as it is.
        samples: calibration samples used.
        seconds: wall time.
    """

    model: Model
    method: str
    layers: list[LayerFit] = field(default_factory=list)
    bn: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    samples: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the model)."""
        return {"method": self.method, "samples": self.samples, "seconds": round(self.seconds, 2),
                "layers": [vars(f) for f in self.layers], "bn": self.bn, "skipped": self.skipped}


def conv_patches(x: np.ndarray, kernel: Sequence[int], strides: Sequence[int], pads: Sequence[int],
                 dilations: Sequence[int], rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """im2col patches of a 2-D Conv input at chosen output positions.

    Args:
        x: one sample's input, ``[C, H, W]``.
        kernel: ``(kh, kw)``.
        strides, dilations: the Conv's attributes.
        pads: ``(top, left, bottom, right)``.
        rows, cols: output positions (same length ``P``).

    Returns:
        ``[P, C * kh * kw]``, ordered as ``W.reshape(C_out, -1)`` so that ``patches @ W.reshape(C_out, -1).T``
        is the Conv's output (without bias) at those positions.
    """
    kh, kw = kernel
    xp = np.pad(x, ((0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    ih = rows[:, None] * strides[0] + np.arange(kh)[None, :] * dilations[0]  # [P, kh]
    iw = cols[:, None] * strides[1] + np.arange(kw)[None, :] * dilations[1]  # [P, kw]
    patch = xp[:, ih[:, :, None], iw[:, None, :]]  # [C, P, kh, kw]
    return np.ascontiguousarray(patch.transpose(1, 0, 2, 3).reshape(len(rows), -1))


@dataclass
class _Target:
    layer: Layer
    node: Node
    kind: str  # conv | gemm | matmul
    in_axis: int
    keep_out: np.ndarray  # original output channels the pruned layer keeps
    bias: str | None  # initializer receiving the intercept (bias or BN mean), or None
    intercept: str
    conv: dict[str, Any] = field(default_factory=dict)


def _conv_attrs(node: Node, w: np.ndarray) -> dict[str, Any] | str:
    if w.ndim != 4:
        return "only 2-D Convs are re-fitted"
    if int(node.attr("group", 1)) != 1:
        return "grouped/depthwise Conv (its channels are independent)"
    auto = node.attr("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto not in ("NOTSET", "VALID"):
        return f"auto_pad {auto}"
    pads = list(node.attr("pads", [0, 0, 0, 0])) if auto == "NOTSET" else [0, 0, 0, 0]
    return {"kernel": tuple(int(k) for k in w.shape[2:]), "strides": tuple(node.attr("strides", [1, 1])),
            "dilations": tuple(node.attr("dilations", [1, 1])), "pads": tuple(int(p) for p in pads)}


def _removed_out(model: Model, plan: Any) -> dict[str, set[int]]:
    """Weight initializer -> output channels (original indices) the plan removes."""
    chosen, _, groups = resolve_channels(model, plan)
    out_axis = {x.weight: x.out_axis for x in model.layers}
    removed: dict[str, set[int]] = {}
    for g in groups.prunable:
        chans = chosen.get(g.leader)
        if chans is None or chans.size == 0:
            continue
        for name, ref in g.cuts:
            if name in out_axis and ref.axis == out_axis[name]:
                removed.setdefault(name, set()).update(int(i) for i in ref.indices(chans))
    return removed


def _targets(model: Model, pruned: Model, plan: Any, skipped: dict[str, str]) -> list[_Target]:
    """The consumers of pruned channels, in topological order, with how to fit each."""
    removed = _removed_out(model, plan)
    orig = {x.name: x for x in model.layers}
    out: list[_Target] = []
    for layer in pruned.layers:
        ref = orig.get(layer.name)
        node = pruned.node(layer.name)
        if ref is None or node is None:
            continue
        w, w0 = pruned.initializer(layer.weight), model.initializer(ref.weight)
        if layer.op_type == "Conv" and layer.weight_input == 1:
            in_axis, kind = 1, "conv"
        elif layer.op_type == "Gemm" and w.ndim == 2 and layer.weight_input == 1:
            in_axis, kind = 1 - layer.out_axis, "gemm"
        elif layer.op_type == "MatMul" and w.ndim == 2 and layer.weight_input == 1:
            in_axis, kind = 0, "matmul"
        else:
            continue
        if w.shape[in_axis] == w0.shape[in_axis]:
            continue  # not a consumer of pruned channels
        conv: dict[str, Any] = {}
        if kind == "conv":
            attrs = _conv_attrs(node, w)
            if isinstance(attrs, str):
                skipped[layer.name] = attrs
                continue
            conv = attrs
        if kind == "gemm" and (int(node.attr("transA", 0)) or float(node.attr("alpha", 1.0)) != 1.0
                               or float(node.attr("beta", 1.0)) != 1.0):
            skipped[layer.name] = "Gemm with transA or alpha/beta != 1"
            continue
        keep = np.setdiff1d(np.arange(w0.shape[layer.out_axis]), sorted(removed.get(ref.weight, set())))
        if keep.size != w.shape[layer.out_axis]:
            skipped[layer.name] = "its kept output channels do not match the plan"
            continue
        bias, intercept = layer.bias, "bias" if layer.bias else "none"
        if bias is None and kind == "conv":
            cons = pruned.consumers(layer.output)
            if len(cons) == 1 and cons[0].op_type == "BatchNormalization" and pruned.is_initializer(cons[0].input(3)):
                bias, intercept = cons[0].input(3), "bn-mean"
        out.append(_Target(layer, node, kind, in_axis, keep, bias, intercept, conv))
    return out


def _batches(feed: Mapping[str, np.ndarray], n: int, batch_size: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    for s in range(0, n, batch_size):
        yield s, {k: v[s : s + batch_size] for k, v in feed.items()}


def _positions(shape: tuple[int, ...], per_sample: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Flat indices of sampled positions (all when there are at most ``per_sample``), one array per sample."""
    n, spots = shape[0], int(np.prod(shape[2:])) if len(shape) > 2 else 1
    if spots <= per_sample:
        return [np.arange(spots)] * n
    return [np.sort(rng.choice(spots, per_sample, replace=False)) for _ in range(n)]


def _rows_out(y: np.ndarray, pos: list[np.ndarray], keep: np.ndarray, kind: str) -> np.ndarray:
    """Output rows ``[sum P, C_kept]`` at the sampled positions."""
    if kind == "gemm":
        return y[:, keep].astype(np.float64)
    if kind == "matmul":
        flat = y.reshape(y.shape[0], -1, y.shape[-1])
        return np.concatenate([flat[i][p][:, keep] for i, p in enumerate(pos)]).astype(np.float64)
    flat = y.reshape(y.shape[0], y.shape[1], -1)
    return np.concatenate([flat[i][keep][:, p].T for i, p in enumerate(pos)]).astype(np.float64)


def _rows_in(x: np.ndarray, pos: list[np.ndarray], t: _Target, out_hw: tuple[int, int]) -> np.ndarray:
    """Input rows (patches) ``[sum P, d]`` matching :func:`_rows_out`."""
    if t.kind == "gemm":
        return x.reshape(x.shape[0], -1).astype(np.float64)
    if t.kind == "matmul":
        flat = x.reshape(x.shape[0], -1, x.shape[-1])
        return np.concatenate([flat[i][p] for i, p in enumerate(pos)]).astype(np.float64)
    c = t.conv
    parts = []
    for i, p in enumerate(pos):
        rows, cols = np.divmod(p, out_hw[1])
        parts.append(conv_patches(x[i], c["kernel"], c["strides"], c["pads"], c["dilations"], rows, cols))
    return np.concatenate(parts).astype(np.float64)


def _as_matrix(w: np.ndarray, t: _Target) -> np.ndarray:
    """The weight as ``[d, C_out]`` (columns of the least-squares problem)."""
    if t.kind == "conv":
        return w.reshape(w.shape[0], -1).T.astype(np.float64)
    return (w.T if t.layer.out_axis == 0 else w).astype(np.float64)


def _from_matrix(m: np.ndarray, like: np.ndarray, t: _Target) -> np.ndarray:
    if t.kind == "conv":
        return m.T.reshape(like.shape).astype(like.dtype)
    return (m.T if t.layer.out_axis == 0 else m).astype(like.dtype)


class _Runner:
    """The pruned model in one onnxruntime session, with the repaired initializers fed as inputs."""

    def __init__(self, pruned: Model, weights: dict[str, np.ndarray], extra: Sequence[str]) -> None:
        self.weights = weights
        self.sess = make_session(runtime_proto(pruned.proto, list(extra), list(weights)), "cpu", optimize=False)

    def run(self, names: Sequence[str], feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return list(self.sess.run(list(names), {**feed, **self.weights}))


def _fit(t: _Target, xtx: np.ndarray, xty: np.ndarray, w0: np.ndarray, ridge: float) -> np.ndarray:
    d = xtx.shape[0]
    lam = ridge * float(np.trace(xtx)) / d if np.trace(xtx) > 0 else ridge
    a = xtx + lam * np.eye(d)
    return np.linalg.solve(a, xty + lam * w0)


def _lsq(model: Model, pruned: Model, plan: Any, feed: Mapping[str, np.ndarray], n: int, weights: dict[str, np.ndarray],
         skipped: dict[str, str], positions: int, ridge: float, batch_size: int, seed: int,
         show_progress: bool | None, min_rows: float = 2.0) -> list[LayerFit]:
    targets = _targets(model, pruned, plan, skipped)
    if not targets:
        return []
    rng = np.random.default_rng(seed)
    # the original's outputs of every target layer, at sampled positions (recorded once)
    names = [t.layer.output for t in targets]
    orig = make_session(runtime_proto(model.proto, names), "cpu", optimize=False)
    ys: list[list[np.ndarray]] = [[] for _ in targets]
    pos: list[list[np.ndarray]] = [[] for _ in targets]
    hw: list[tuple[int, int]] = [(1, 1)] * len(targets)
    for _, batch in _batches(feed, n, batch_size):
        outs = orig.run(names, batch)
        for i, (t, y) in enumerate(zip(targets, outs, strict=True)):
            p = _positions(y.shape if t.kind == "conv" else (y.shape[0], 1, *y.shape[1:-1]), positions, rng) \
                if t.kind != "gemm" else [np.zeros(1, dtype=int)] * y.shape[0]
            if t.kind == "conv":
                hw[i] = (int(y.shape[2]), int(y.shape[3]))
            pos[i] += p
            ys[i].append(_rows_out(y, p, t.keep_out, t.kind))
    del orig
    for t in targets:
        weights.setdefault(t.layer.weight, pruned.initializer(t.layer.weight).copy())
        if t.bias is not None:
            weights.setdefault(t.bias, pruned.initializer(t.bias).copy())
    runner = _Runner(pruned, weights, [t.node.input(0) for t in targets])
    fits: list[LayerFit] = []
    for i, t in enumerate(progress(targets, len(targets), "least-squares reconstruction", show_progress)):
        y = np.concatenate(ys[i])
        w_cur = weights[t.layer.weight]
        w0 = _as_matrix(w_cur, t)
        use_b = t.bias is not None
        c0 = weights[t.bias].astype(np.float64) if t.bias is not None and t.intercept == "bias" else \
            np.zeros(y.shape[1])
        d = w0.shape[0] + int(use_b)
        if len(y) < min_rows * d:  # too few rows: the fit would interpolate the calibration data
            skipped[t.layer.name] = (f"{len(y)} calibration rows for {d} unknowns per output (needs >= {min_rows:g}x); "
                                     "give more samples")
            continue
        xtx, xty = np.zeros((d, d)), np.zeros((d, y.shape[1]))
        err0 = 0.0
        row = 0
        xs = []
        for s, batch in _batches(feed, n, batch_size):
            x = runner.run([t.node.input(0)], batch)[0]
            k = x.shape[0]
            xr = _rows_in(x, pos[i][s : s + k], t, hw[i])
            if use_b:
                xr = np.concatenate([xr, np.ones((len(xr), 1))], axis=1)
            yr = y[row : row + len(xr)]
            row += len(xr)
            xtx += xr.T @ xr
            xty += xr.T @ yr
            pred = xr[:, : w0.shape[0]] @ w0 + c0
            err0 += float(((pred - yr) ** 2).sum())
            xs.append(xr)
        wa = np.concatenate([w0, c0[None, :]]) if use_b else w0
        sol = _fit(t, xtx, xty, wa, ridge)
        x_all = np.concatenate(xs)
        err1 = float(((x_all @ sol - y) ** 2).sum())
        denom = float((y**2).sum()) or 1.0
        weights[t.layer.weight] = _from_matrix(sol[: w0.shape[0]], w_cur, t)
        if use_b and t.bias is not None:
            c = sol[-1]
            if t.intercept == "bn-mean":  # BN(y + c) with mean m == BN(y) with mean m - c
                weights[t.bias] = (pruned.initializer(t.bias).astype(np.float64) - c).astype(weights[t.bias].dtype)
            else:
                weights[t.bias] = c.astype(weights[t.bias].dtype)
        fits.append(LayerFit(t.layer.name, len(y), d, round(err0 / denom, 6), round(err1 / denom, 6), t.intercept))
    return fits


def _bn(pruned: Model, feed: Mapping[str, np.ndarray], n: int, weights: dict[str, np.ndarray], batch_size: int,
        show_progress: bool | None) -> list[str]:
    bns = [x for x in pruned.nodes if x.op_type == "BatchNormalization" and pruned.is_initializer(x.input(3))
           and pruned.is_initializer(x.input(4)) and len(x.outputs) == 1]
    if not bns:
        return []
    for b in bns:
        weights.setdefault(b.input(3), pruned.initializer(b.input(3)).copy())
        weights.setdefault(b.input(4), pruned.initializer(b.input(4)).copy())
    runner = _Runner(pruned, weights, [b.input(0) for b in bns])
    done = []
    for b in progress(bns, len(bns), "BN re-estimation", show_progress):
        s1: np.ndarray | float = 0.0
        s2: np.ndarray | float = 0.0
        count = 0
        for _, batch in _batches(feed, n, batch_size):
            x = runner.run([b.input(0)], batch)[0].astype(np.float64)
            axes = tuple(i for i in range(x.ndim) if i != 1)
            s1 = s1 + x.sum(axis=axes)
            s2 = s2 + (x**2).sum(axis=axes)
            count += int(x.size // x.shape[1])
        mean = np.asarray(s1) / count
        var = np.maximum(np.asarray(s2) / count - mean**2, 0.0)
        weights[b.input(3)] = mean.astype(weights[b.input(3)].dtype)
        weights[b.input(4)] = var.astype(weights[b.input(4)].dtype)
        done.append(b.name)
    return done


def reconstruct(
    model: Model,
    pruned: Model,
    plan: Any,
    data: Any,
    *,
    method: str = "lsq",
    samples: int = 64,
    positions: int = 64,
    ridge: float = 1e-3,
    batch_size: int = 16,
    seed: int = 0,
    show_progress: bool | None = None,
) -> ReconstructResult:
    """Repair a structurally pruned model from forward runs only (see the module docstring).

    Args:
        model: the original model.
        pruned: ``prune(model, plan)``.
        plan: the structured plan that was applied.
        data: unlabelled calibration inputs (a Dataset, mapping or array); keep evaluation data apart.
        method: ``lsq`` (least-squares re-fit of the consumers of pruned channels), ``bn`` (re-estimate
            BatchNormalization statistics) or ``lsq+bn``.
        samples: calibration samples used (the first ``samples``).
        positions: sampled output positions per sample and Conv layer (least-squares rows).
        ridge: regularisation towards the pruned weight, relative to ``tr(X^T X) / d``.
        batch_size: samples per onnxruntime run.
        seed: for the sampled positions.
        show_progress: progress bar on stderr (default: ``ONNXSLICE_PROGRESS`` / a terminal).

    Returns:
        A :class:`ReconstructResult` whose model has the same graph and shapes as ``pruned``.

    Raises:
        PlanError: an unknown method, an unstructured plan, bad ``samples``/``positions``/``ridge``, no data.
    """
    if method not in METHODS:
        raise PlanError(f"unknown recovery method '{method}'; use one of {', '.join(METHODS)}")
    if plan.meta.get("mode", "structured") != "structured":
        raise PlanError("reconstruction repairs structured pruning; the plan is unstructured")
    if samples < 1 or positions < 1 or not (ridge >= 0) or math.isinf(ridge) or batch_size < 1:
        raise PlanError(f"reconstruct needs samples >= 1, positions >= 1, batch_size >= 1 and a finite ridge >= 0 "
                        f"(got {samples}, {positions}, {batch_size}, {ridge})")
    t0 = time.perf_counter()
    feed = validate_inputs(pruned, as_feed(pruned, data))
    n = min(samples, len(next(iter(feed.values()))))
    if n < 1:
        raise PlanError("reconstruct needs at least one calibration sample")
    feed = {k: v[:n] for k, v in feed.items()}
    weights: dict[str, np.ndarray] = {}
    skipped: dict[str, str] = {}
    fits: list[LayerFit] = []
    bns: list[str] = []
    if "lsq" in method:
        fits = _lsq(model, pruned, plan, feed, n, weights, skipped, positions, ridge, batch_size, seed, show_progress)
    if "bn" in method:
        bns = _bn(pruned, feed, n, weights, batch_size, show_progress)
    result = ReconstructResult(pruned, method, fits, bns, skipped, n, 0.0)
    info = {**result.to_dict(), "source": model.fingerprint}
    info.pop("seconds")
    result.model = PassManager("reconstruct", [ReplaceInitializers(weights)]).run(pruned, extra=info).model
    result.seconds = time.perf_counter() - t0
    return result
