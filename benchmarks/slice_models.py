"""Torch definitions of the NNSlicer overhead models (LeNet-5, CIFAR ResNet-10/18), exported to ONNX.

Used by ``bench_slice.py`` until ``models/zoo.py`` provides them. BatchNorm statistics are calibrated
on the benchmark's images before export, so that activations vary between samples as in a trained
network (with untrained statistics every logit sits near its mean and theta prunes the walk at once).
"""

from __future__ import annotations

import io

import numpy as np


def _torch():
    import torch
    from torch import nn

    return torch, nn


def build(name: str):
    """A torch module: ``lenet5`` (1x28x28), ``resnet10`` or ``resnet18`` (3x32x32), 10 classes."""
    torch, nn = _torch()

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout, momentum=None)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout, momentum=None)
            self.short = nn.Sequential()
            if stride != 1 or cin != cout:
                self.short = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout, momentum=None)
                )

        def forward(self, x):
            out = torch.relu(self.b1(self.c1(x)))
            return torch.relu(self.b2(self.c2(out)) + self.short(x))

    class ResNet(nn.Module):
        def __init__(self, blocks: list[int]) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
            self.bn = nn.BatchNorm2d(64, momentum=None)
            layers, cin = [], 64
            for i, n in enumerate(blocks):
                cout = 64 * 2**i
                for j in range(n):
                    layers.append(Block(cin, cout, 2 if (j == 0 and i > 0) else 1))
                    cin = cout
            self.layers = nn.Sequential(*layers)
            self.fc = nn.Linear(512, 10)

        def forward(self, x):
            x = self.layers(torch.relu(self.bn(self.conv(x))))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    class LeNet5(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5)
            self.f1, self.f2, self.f3 = nn.Linear(256, 120), nn.Linear(120, 84), nn.Linear(84, 10)

        def forward(self, x):
            x = nn.functional.max_pool2d(torch.relu(self.c1(x)), 2)
            x = nn.functional.max_pool2d(torch.relu(self.c2(x)), 2)
            x = torch.flatten(x, 1)
            return self.f3(torch.relu(self.f2(torch.relu(self.f1(x)))))

    torch.manual_seed(0)
    if name == "lenet5":
        return LeNet5()
    return ResNet({"resnet10": [1, 1, 1, 1], "resnet18": [2, 2, 2, 2]}[name])


def images(name: str, n: int, seed: int = 0) -> np.ndarray:
    """Synthetic images with per-sample contrast, float32 NCHW."""
    rng = np.random.default_rng(seed)
    shape = (n, 1, 28, 28) if name == "lenet5" else (n, 3, 32, 32)
    return (rng.random(shape) * rng.uniform(0.2, 2.0, (n, 1, 1, 1))).astype(np.float32)


def export(module, x: np.ndarray, calibrate: bool = True) -> bytes:
    """ONNX bytes of ``module`` (BatchNorm calibrated on ``x`` first), dynamic batch, opset 17."""
    torch, nn = _torch()
    if calibrate and any(isinstance(m, nn.BatchNorm2d) for m in module.modules()):
        module.train()
        with torch.no_grad():
            for s in range(0, len(x), 32):
                module(torch.from_numpy(x[s : s + 32]))
    module.eval()
    buf = io.BytesIO()
    torch.onnx.export(
        module,
        torch.from_numpy(x[:1]),
        buf,
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}},
        opset_version=17,
        dynamo=False,
    )
    return buf.getvalue()
