"""CIFAR-style ResNet-10 and ResNet-18 (3x32x32 input, 10 classes) with seeded, untrained weights.

``python -m models.resnet_cifar [resnet10_cifar|resnet18_cifar ...]`` writes ``models/build/<name>.onnx``
(git-ignored; ``zoo.ensure(name)`` runs this on demand). They exist for the overhead benchmark, which
needs realistic shapes and op counts, not accuracy: the weights are torch's default initialization
under seed 0, and BatchNormalization statistics are set to seeded non-trivial values (running mean
N(0, 0.1), running variance U(0.5, 1.5), affine weight U(0.5, 1.5), bias N(0, 0.1)) so that no BN is an
identity and no two parameters are equal (the exporter would otherwise deduplicate them).
Architecture: Conv3x3(64)-BN-ReLU stem, four stages of BasicBlocks (64, 128, 256, 512 channels;
[1,1,1,1] blocks for ResNet-10, [2,2,2,2] for ResNet-18), global average pooling, Gemm 512->10.
At fp32 ResNet-10 is ~19 MB and ResNet-18 ~43 MB, so neither is committed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

if __package__ in (None, ""):  # run as `python models/resnet_cifar.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import _torch, zoo
from models._resnet import ResNet

SEED = 0
BLOCKS = {"resnet10_cifar": (1, 1, 1, 1), "resnet18_cifar": (2, 2, 2, 2)}


def resnet_cifar(name: str) -> ResNet:
    """The seeded, untrained CIFAR ResNet called ``name`` (``resnet10_cifar`` or ``resnet18_cifar``)."""
    _torch.seed_everything(SEED)
    net = ResNet(3, (64, 128, 256, 512), BLOCKS[name], 10)
    gen = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                c = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
                m.weight.copy_(0.5 + torch.rand(c, generator=gen))
                m.bias.copy_(0.1 * torch.randn(c, generator=gen))
    return net.eval()


def build(name: str, dest: Path | None = None) -> dict[str, float]:
    """Build and export ``name`` to ``dest`` (default: its zoo file); returns the export's fidelity."""
    net = resnet_cifar(name)
    proto = _torch.export(net, (3, 32, 32), metadata={
        "onnxslice.model": name, "seed": str(SEED), "weights": "untrained (seeded init)",
        "build": f"python -m models.resnet_cifar {name}"})
    x = np.random.default_rng(0).random((8, 3, 32, 32), dtype=np.float32)
    diff = _torch.check_fidelity(net, proto, x)
    _torch.save(proto, dest or zoo.get(name).file)
    print(f"{name}: untrained; torch vs onnxruntime max |diff| {diff:.2e}; {_torch.num_params(proto):,} params; "
          f"ops: {_torch.op_summary(proto)}")
    return {"max_abs_diff": diff}


if __name__ == "__main__":
    for arg in sys.argv[1:] or list(BLOCKS):
        build(arg)
