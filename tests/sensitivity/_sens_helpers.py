"""Tiny models with hand-computable forward passes for the sensitivity tests."""

from __future__ import annotations

import itertools

import numpy as np
from onnx import helper

from onnxslice.model import Model, load
from onnxslice.testing import make_model


def mlp_weights(seed: int = 0, widths: tuple[int, ...] = (3, 5, 4, 2)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        out[f"W{i}"] = (rng.normal(size=(a, b)) / np.sqrt(a)).astype(np.float32)
        out[f"b{i}"] = (0.1 * rng.normal(size=b)).astype(np.float32)
    return out


def build_mlp(weights: dict[str, np.ndarray]) -> Model:
    """x[N, in] -> (Gemm -> Relu) * (k-1) -> Gemm -> logits; layers named L0, L1, ..."""
    k = len(weights) // 2
    nodes = []
    cur = "x"
    for i in range(k):
        out = "logits" if i == k - 1 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [cur, f"W{i}", f"b{i}"], [out], name=f"L{i}"))
        if i < k - 1:
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"], name=f"relu{i}"))
            cur = f"r{i}"
    n_in = weights["W0"].shape[0]
    n_out = weights[f"W{k - 1}"].shape[1]
    return load(make_model(nodes, {"x": (np.float32, ["N", n_in])}, {"logits": (np.float32, ["N", n_out])}, weights))


def forward(weights: dict[str, np.ndarray], x: np.ndarray, act: dict[int, np.ndarray] | None = None) -> np.ndarray:
    """numpy reference forward (float64); ``act[i]`` replaces the output of layer i (pre-ReLU)."""
    k = len(weights) // 2
    h = x.astype(np.float64)
    for i in range(k):
        h = h @ weights[f"W{i}"].astype(np.float64) + weights[f"b{i}"].astype(np.float64)
        if act and i in act:
            h = act[i](h)
        if i < k - 1:
            h = np.maximum(h, 0.0)
    return h


def fd_grads(
    weights: dict[str, np.ndarray], x: np.ndarray, classes: np.ndarray, eps: float = 1e-5
) -> dict[str, np.ndarray]:
    """Per-sample d logit[class] / d W_i by central finite differences in float64: ``{W_i: [N, *shape]}``."""
    base = {k: v.astype(np.float64) for k, v in weights.items()}
    out: dict[str, np.ndarray] = {}
    rows = np.arange(len(x))
    for name in [k for k in base if k.startswith("W")]:
        g = np.zeros((len(x), *base[name].shape))
        for idx in np.ndindex(*base[name].shape):
            wp, wm = dict(base), dict(base)
            wp[name] = base[name].copy()
            wm[name] = base[name].copy()
            wp[name][idx] += eps
            wm[name][idx] -= eps
            g[(slice(None), *idx)] = (forward(wp, x)[rows, classes] - forward(wm, x)[rows, classes]) / (2 * eps)
        out[name] = g
    return out
