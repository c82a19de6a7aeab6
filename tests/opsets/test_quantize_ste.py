"""Quantize/dequantize VJPs: the straight-through estimator through the engine, against torch's fake-quantize."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from onnxslice.grad import GradientEngine
from onnxslice.model import load
from onnxslice.testing import make_model

torch = pytest.importorskip("torch")


def _qdq_model(scale: float, zp: int, per_axis: bool = False):
    s = np.array([scale, 2 * scale, scale / 2], np.float32) if per_axis else np.array(scale, np.float32)
    z = np.array([zp, zp, zp], np.uint8) if per_axis else np.array(zp, np.uint8)
    w = np.random.default_rng(0).standard_normal((3, 2)).astype(np.float32)
    attrs = {"axis": 1} if per_axis else {}
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], **attrs),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"], **attrs),
        helper.make_node("MatMul", ["dq", "w"], ["y"]),
    ]
    return (
        load(make_model(nodes, {"x": (np.float32, ["N", 3])}, {"y": (np.float32, ["N", 2])}, {"s": s, "z": z, "w": w})),
        s,
        w,
    )


@pytest.mark.parametrize("per_axis", [False, True])
def test_qdq_gradient_is_torch_fake_quantize_ste(per_axis: bool) -> None:
    model, s, w = _qdq_model(0.05, 128, per_axis)
    x = (np.random.default_rng(1).standard_normal((16, 3)) * 4).astype(np.float32)  # some saturate
    cot = np.random.default_rng(2).standard_normal((16, 2)).astype(np.float32)
    eng = GradientEngine(model, "cotangent", weights=["w"], exact=True, device="cpu")
    g = eng(x, cotangent=cot)
    xt = torch.tensor(x, requires_grad=True)
    if per_axis:
        fq = torch.fake_quantize_per_channel_affine(
            xt, torch.tensor(s), torch.full((3,), 128, dtype=torch.int32), 1, 0, 255
        )
    else:
        fq = torch.fake_quantize_per_tensor_affine(xt, float(s), 128, 0, 255)
    ((fq @ torch.tensor(w)) * torch.tensor(cot)).sum().backward()
    np.testing.assert_allclose(g.inputs["x"], xt.grad.numpy(), rtol=1e-5, atol=1e-6)
    saturated = (np.abs(xt.grad.numpy()) == 0).sum()
    assert 0 < saturated < x.size  # both regimes are exercised
    np.testing.assert_allclose(g.weights["w"], (fq.detach().numpy().T @ cot), rtol=1e-4, atol=1e-5)


def test_dynamic_quantize_linear_ste_passes_gradient() -> None:
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "qs", "qz"]),
        helper.make_node("DequantizeLinear", ["q", "qs", "qz"], ["y"]),
    ]
    model = load(make_model(nodes, {"x": (np.float32, ["N", 4])}, {"y": (np.float32, ["N", 4])}))
    x = np.random.default_rng(3).standard_normal((5, 4)).astype(np.float32)
    cot = np.random.default_rng(4).standard_normal((5, 4)).astype(np.float32)
    g = GradientEngine(model, "cotangent", weights=[], exact=True, device="cpu")(x, cotangent=cot)
    np.testing.assert_allclose(g.inputs["x"], cot, rtol=1e-5)  # q/s then *s: the identity
