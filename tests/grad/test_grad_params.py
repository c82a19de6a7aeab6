"""``weights="params"``: the initializers a training framework holds as parameters (PyTorch's set).

A model exported from PyTorch with its constants kept (no folding) carries BatchNorm running statistics,
Clip bounds, epsilons and scale factors as initializers next to the parameters; ``Model.parameter_names``
must give exactly ``named_parameters()``, and the engine's ``params`` gradients must be those of ``all``
restricted to that set.
"""

from __future__ import annotations

import io
import math

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from _torch_nets import EfficientLite, LeNet5, SmallResNet, randomize_bn  # noqa: E402

from onnxslice.errors import DataError  # noqa: E402
from onnxslice.grad import GradientEngine  # noqa: E402
from onnxslice.model import load  # noqa: E402


class _Mixed(nn.Module):
    """Conv-BN-ReLU6, PReLU, a token MLP with LayerNorm, a scaled dot product, an epsilon and a power."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.prelu = nn.PReLU()
        self.norm = nn.LayerNorm(8)
        self.q = nn.Linear(8, 8)
        self.k = nn.Linear(8, 8, bias=False)
        self.pos = nn.Parameter(torch.randn(16, 8) * 0.1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.prelu(nn.functional.relu6(self.bn(self.conv(x))))  # [N, 8, 4, 4]
        t = h.flatten(2).transpose(1, 2) + self.pos  # [N, 16, 8]
        t = self.norm(t)
        att = torch.softmax(self.q(t) @ self.k(t).transpose(1, 2) / math.sqrt(8.0), dim=-1)
        t = att @ t
        t = t / (t.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()
        return self.head(t.mean(1))


def _export(module: nn.Module, shape: tuple[int, ...]) -> onnx.ModelProto:
    f = io.BytesIO()
    torch.onnx.export(module.eval(), (torch.randn(2, *shape),), f, dynamo=False, do_constant_folding=False,
                      input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "N"}}, opset_version=17)
    return onnx.load_from_string(f.getvalue())


CASES = {
    "lenet5": (LeNet5, (1, 28, 28)),
    "resnet": (lambda: SmallResNet(3, 10), (3, 32, 32)),
    "efficientnet-lite": (EfficientLite, (3, 32, 32)),
    "mixed": (_Mixed, (3, 4, 4)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_parameter_names_are_torchs_parameters(name: str) -> None:
    factory, shape = CASES[name]
    torch.manual_seed(0)
    module = randomize_bn(factory(), 0)
    model = load(_export(module, shape))
    floats = [k for k in model.initializer_names if np.issubdtype(model.initializer(k).dtype, np.floating)]
    params = model.parameter_names

    def key(a: np.ndarray) -> tuple[float, ...]:  # the exporter may store a weight transposed, renamed
        return tuple(np.sort(np.asarray(a, np.float64).ravel()).round(7))

    assert sorted(key(model.initializer(k)) for k in params) == sorted(
        key(p.detach().numpy()) for _, p in module.named_parameters())
    if name != "lenet5":  # BatchNorm statistics, Clip bounds, epsilons: the set is not "all"
        assert len(params) < len(floats)
    assert params == [k for k in model.initializer_names if k in set(params)]  # initializer order


def test_params_gradients_are_all_gradients_restricted() -> None:
    torch.manual_seed(0)
    model = load(_export(randomize_bn(_Mixed(), 0), (3, 4, 4)))
    x = np.random.default_rng(0).standard_normal((3, 3, 4, 4)).astype(np.float32)
    every = GradientEngine(model, "pred", executor="eager", weights="all")(x)
    params = GradientEngine(model, "pred", executor="eager", weights="params")(x)
    assert set(params.weights) == set(model.parameter_names) < set(every.weights)
    for k, v in params.weights.items():
        np.testing.assert_allclose(v, every.weights[k], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(params.inputs["x"], every.inputs["x"], rtol=1e-6, atol=1e-7)


def test_unknown_weight_set_names_the_choices() -> None:
    model = load(_export(LeNet5(), (1, 28, 28)))
    with pytest.raises(DataError, match="'all', 'params', 'layers'"):
        GradientEngine(model, "pred", weights="trainable")
