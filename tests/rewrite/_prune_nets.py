"""Small torch modules exported to ONNX for the pruning tests (residual, concat, depthwise, flatten->gemm, MLP)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import torch
from torch import nn


def export(net: nn.Module, shape: tuple[int, ...], seed: int = 0) -> onnx.ModelProto:
    """Export ``net`` (random weights, BN statistics randomised) with a dynamic batch axis, opset 17."""
    torch.manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    net.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.zeros(1, *shape),),
            buf,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "N"}, "y": {0: "N"}},
            opset_version=17,
            dynamo=False,
            training=torch.onnx.TrainingMode.PRESERVE,
        )
    proto = onnx.load_from_string(buf.getvalue())
    proto.ir_version = 10
    return proto


def block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


class Residual(nn.Module):
    """stem -> two residual blocks (Add couples stem, b1 and b2 outputs) -> GAP -> fc."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = block(3, 8)
        self.b1 = nn.Sequential(block(8, 12), nn.Conv2d(12, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.b2 = nn.Sequential(block(8, 12), nn.Conv2d(12, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.b1(x))
        x = torch.relu(x + self.b2(x))
        return self.fc(x.mean((2, 3)))


class ConcatNet(nn.Module):
    """Two branches concatenated on channels, then a conv, then flatten -> Linear (C*H*W features)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = block(3, 6)
        self.b = block(3, 10)
        self.c = block(16, 8)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.a(x), self.b(x)], 1)
        x = self.pool(self.c(x))
        return self.fc(torch.flatten(x, 1))


class Depthwise(nn.Module):
    """MobileNet-style: expand 1x1 -> depthwise 3x3 -> project 1x1 (+ a grouped conv) -> GAP -> fc."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = block(3, 12)
        self.dw = nn.Sequential(nn.Conv2d(12, 12, 3, padding=1, groups=12), nn.BatchNorm2d(12), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(12, 8, 1), nn.BatchNorm2d(8))
        self.grouped = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.ReLU())
        self.head = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.grouped(self.project(self.dw(self.expand(x))))
        return self.fc(self.head(x).mean((2, 3)))


class FlatGemm(nn.Module):
    """LeNet-like: conv -> pool -> conv -> pool -> view(-1, C*H*W) (a Reshape) -> fc -> fc."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 6, 5)
        self.c2 = nn.Conv2d(6, 16, 5)
        self.f1 = nn.Linear(16 * 4 * 4, 32)
        self.f2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.c1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.c2(x)), 2)
        x = x.reshape(-1, 16 * 4 * 4)
        return self.f2(torch.relu(self.f1(x)))


class MLPBlock(nn.Module):
    """Transformer MLP on tokens: x + W2 gelu(W1 LN(x)), then a head on the mean token."""

    def __init__(self, d: int = 8, h: int = 24) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.w1 = nn.Linear(d, h)
        self.w2 = nn.Linear(h, d)
        self.head = nn.Linear(d, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.w2(nn.functional.gelu(self.w1(self.ln(x))))
        return self.head(x.mean(1))


NETS = {
    "residual": (Residual, (3, 8, 8)),
    "concat": (ConcatNet, (3, 8, 8)),
    "depthwise": (Depthwise, (3, 8, 8)),
    "flatgemm": (FlatGemm, (1, 28, 28)),
    "mlp": (MLPBlock, (5, 8)),
}


def build(name: str, seed: int = 0) -> tuple[onnx.ModelProto, np.ndarray]:
    """The exported model ``name`` and a random input batch of 4."""
    cls, shape = NETS[name]
    torch.manual_seed(seed)
    proto = export(cls(), shape, seed)
    x = np.random.default_rng(seed).standard_normal((4, *shape)).astype(np.float32)
    return proto, x
