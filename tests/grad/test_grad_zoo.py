"""End to end on the reference model files (``models/``): onnxslice gradients vs PyTorch autograd.

The torch side is :class:`_onnx_torch.OnnxTorch`: the same ONNX graph run with torch ops, its
parameters loaded from the file's initializers. Its forward must match onnxruntime first; then the
weight and input gradients of the ``pred`` target must agree within a relative error of 1e-4
(float32), tensor by tensor.

The engine runs unfused here (``fuse=False``): torch computes each Conv, BatchNormalization and
activation separately, and only the same forward decides every ReLU/Clip kink the same way (a fused
forward moves the EfficientNet-Lite0 input gradient by 1e-3 through such kinks). The fused chains are
checked against float64 with the gates aligned in ``test_grad_float64.py`` and against these unfused
rules in ``test_grad_chains.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from _common import ROOT  # noqa: E402
from _onnx_torch import OnnxTorch  # noqa: E402

from onnxslice.grad import GradientEngine  # noqa: E402
from onnxslice.model import load  # noqa: E402
from onnxslice.testing import run_ort  # noqa: E402

RTOL = 1e-4
#: committed reference files and the batch to check them on
FILES = {"lenet5": 8, "resnet8_mnist": 8, "keras_mnist": 8, "efficientnet_lite0": 2}


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(float(np.linalg.norm(b)), 1e-30))


def _parameter_only(model, name: str) -> bool:
    """Whether every use of ``name`` is an input ONNX declares non-differentiable (Clip bounds, ...)."""
    return all(
        i in model.info(n).non_differentiable
        for n in model.consumers(name)
        for i, v in enumerate(n.inputs)
        if v == name
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FILES))
def test_zoo_model_gradients_match_torch_autograd(name: str) -> None:
    path = ROOT / "models" / f"{name}.onnx"
    if not path.exists():
        pytest.skip(f"{path} is not in this checkout")
    model = load(path)
    shape = [d if isinstance(d, int) else FILES[name] for d in model.inputs[0].shape or ()]
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    ref = OnnxTorch(model)
    xt = torch.from_numpy(x).requires_grad_(True)
    logits = ref(xt)
    np.testing.assert_allclose(logits.detach().numpy(), run_ort(model, {model.input_names[0]: x})[0], rtol=1e-4,
                               atol=1e-4 * float(logits.detach().abs().max()))  # fmt: skip
    logits.gather(1, logits.argmax(1, keepdim=True)).sum().backward()
    g = GradientEngine(model, "pred", device="cpu", fuse=False)(x)
    assert _rel(g.inputs[model.input_names[0]], xt.grad.numpy()) <= RTOL
    errors = {
        w: _rel(g.weights[w], ref.param(w).grad.numpy())
        for w in ref.keys
        if ref.param(w).grad is not None and not _parameter_only(model, w)
    }
    assert len(errors) >= len(model.layers)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= RTOL, f"{worst}: rel. error {errors[worst]:.2e}"
