"""End to end: onnxslice gradients match PyTorch autograd on the same weights (float32, rel. error <= 1e-4).

Each torch module is exported to ONNX; a *fresh* instance of the module then gets the ONNX
initializers copied in (so both sides compute with the ONNX file's weights), and the weight and input
gradients of the same scalar target are compared per tensor: ``||g_onnx - g_torch|| / ||g_torch||``.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from _torch_nets import EfficientLite, LeNet5, SmallResNet, export, load_onnx_weights, onnx_param_map, randomize_bn  # noqa: E402

from onnxslice.grad import GradientEngine  # noqa: E402
from onnxslice.model import load  # noqa: E402

RTOL = 1e-4

MODELS = {
    "lenet5": (LeNet5, (1, 28, 28)),
    "resnet": (lambda: SmallResNet(3, 10), (3, 32, 32)),
    "efficientnet-lite": (EfficientLite, (3, 32, 32)),
}


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _setup(name: str, seed: int = 0):
    factory, shape = MODELS[name]
    torch.manual_seed(seed)
    src = randomize_bn(factory(), seed)
    proto = export(src, torch.randn(2, *shape))
    model = load(proto)
    torch.manual_seed(seed + 1)  # a differently initialized module: every weight must come from the ONNX file
    mod = load_onnx_weights(model, randomize_bn(factory(), seed + 1))
    x = np.random.default_rng(seed).standard_normal((4, *shape)).astype(np.float32)
    return model, mod, x


def _torch_grads(mod, x: np.ndarray, target: str, labels: np.ndarray | None = None):
    xt = torch.from_numpy(x).requires_grad_(True)
    mod.zero_grad()
    logits = mod(xt)
    if target == "pred":
        f = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
    elif target.startswith("class:"):
        f = logits[:, int(target[6:])].sum()
    else:
        f = torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels), reduction="sum")
    f.backward()
    return xt.grad.numpy(), logits.detach().numpy()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("target", ["pred", "loss"])
def test_gradients_match_torch_autograd(name: str, target: str) -> None:
    model, mod, x = _setup(name)
    labels = np.arange(len(x)) % 10
    gx, logits = _torch_grads(mod, x, target, labels)
    g = GradientEngine(model, target, device="cpu")(x, labels=labels)
    if target == "pred":
        want = logits.max(1)
    else:
        z = logits.astype(np.float64)
        want = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1) - z[np.arange(len(z)), labels]
    np.testing.assert_allclose(g.target_values, want, rtol=1e-5, atol=1e-5)
    assert _rel(g.inputs["x"], gx) <= RTOL, f"input gradient: rel. error {_rel(g.inputs['x'], gx):.2e}"
    pairs = onnx_param_map(model, mod)
    checked = 0
    for w, (m, attr) in pairs.items():
        tg = getattr(m, attr).grad
        if tg is None:  # BatchNorm running statistics are buffers: torch gives them no gradient
            continue
        err = _rel(g.weights[w], tg.numpy())
        assert err <= RTOL, f"{w} ({type(m).__name__}.{attr}): rel. error {err:.2e}"
        checked += 1
    assert checked >= len([p for p in mod.parameters()])


@pytest.mark.slow
def test_per_sample_gradients_match_torch_per_sample() -> None:
    model, mod, x = _setup("efficientnet-lite", seed=3)
    g = GradientEngine(model, "pred", device="cpu")(x, per_sample=True)
    pairs = onnx_param_map(model, mod)
    for i in range(len(x)):
        _torch_grads(mod, x[i : i + 1], "pred")
        for w, (m, attr) in pairs.items():
            tg = getattr(m, attr).grad
            if tg is not None:
                err = _rel(g.weights[w][i], tg.numpy())
                assert err <= RTOL, f"sample {i}, {w}: rel. error {err:.2e}"
