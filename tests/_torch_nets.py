"""Small PyTorch modules equivalent to the reference models, exported to ONNX in the tests.

LeNet-5, a small ResNet (conv/bn/relu, residual blocks with 1x1 projection shortcuts, global average
pooling, fc) and an EfficientNet-Lite-style network (stem, MBConv blocks with depthwise convolutions
and ReLU6, head, dropout, fc). Modules are registered in the order they run, so the ONNX nodes of each
kind line up with the torch modules of that kind (see :func:`load_onnx_weights`).
"""

from __future__ import annotations

import io

import numpy as np
import onnx
import torch
from torch import nn

from models._resnet import BasicBlock  # the reference ResNets' block
from onnxslice.model import Model


class LeNet5(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class SmallResNet(nn.Module):
    def __init__(self, cin: int = 3, classes: int = 10, widths: tuple[int, ...] = (16, 32, 64)) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, widths[0], 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(widths[0])
        blocks = []
        prev = widths[0]
        for i, w in enumerate(widths):
            blocks.append(BasicBlock(prev, w, 1 if i == 0 else 2))
            prev = w
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(prev, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(torch.relu(self.bn(self.conv(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6())
        self.dw = nn.Sequential(
            nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU6()
        )
        self.project = nn.Sequential(nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.dw(self.expand(x)))
        return out + x if self.residual else out


class EfficientLite(nn.Module):
    """EfficientNet-Lite-style: ReLU6 activations, no squeeze-excitation (as in the Lite variants)."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.blocks = nn.Sequential(MBConv(16, 16, 4, 3, 1), MBConv(16, 24, 4, 5, 2), MBConv(24, 24, 4, 3, 1))
        self.head = nn.Sequential(nn.Conv2d(24, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU6())
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(self.drop(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)))


def randomize_bn(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give BatchNorm layers non-trivial statistics and affine parameters (fresh ones are identities)."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return module.eval()


def export(module: nn.Module, sample: torch.Tensor) -> onnx.ModelProto:
    """Export with the TorchScript exporter, BatchNorm kept (no constant folding), dynamic batch."""
    f = io.BytesIO()
    torch.onnx.export(
        module.eval(),
        (sample,),
        f,
        dynamo=False,
        do_constant_folding=False,
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}},
        opset_version=17,
    )
    return onnx.load_from_string(f.getvalue())


#: ONNX op -> (torch module type, the node inputs that hold the module's tensors, in this order)
_PARAMS: dict[str, tuple[type, tuple[str, ...]]] = {
    "Conv": (nn.Conv2d, ("weight", "bias")),
    "Gemm": (nn.Linear, ("weight", "bias")),
    "BatchNormalization": (nn.BatchNorm2d, ("weight", "bias", "running_mean", "running_var")),
}


def onnx_param_map(model: Model, module: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """ONNX initializer name -> (torch module, attribute), pairing nodes and modules of each kind in order."""
    out: dict[str, tuple[nn.Module, str]] = {}
    for op, (kind, attrs) in _PARAMS.items():
        nodes = [n for n in model.nodes if n.op_type == op]
        mods = [m for m in module.modules() if isinstance(m, kind)]
        assert len(nodes) == len(mods), f"{op}: {len(nodes)} nodes, {len(mods)} modules"
        for node, mod in zip(nodes, mods, strict=True):
            for i, attr in enumerate(attrs, start=1):
                name = node.input(i)
                if name and model.is_initializer(name):
                    out[name] = (mod, attr)
    return out


def load_onnx_weights(model: Model, module: nn.Module) -> nn.Module:
    """Copy every weight of the ONNX model into ``module`` (a fresh instance of the exported class)."""
    with torch.no_grad():
        for name, (mod, attr) in onnx_param_map(model, module).items():
            getattr(mod, attr).copy_(torch.from_numpy(np.array(model.initializer(name))))
    return module.eval()
