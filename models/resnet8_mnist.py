"""ResNet-8 on built-in MNIST: ``python -m models.resnet8_mnist`` writes ``models/resnet8_mnist.onnx``.

Conv3x3(16)-BN-ReLU stem, three stages of one BasicBlock each (16, 32, 64 channels; stride 1, 2, 2;
1x1 Conv-BN projection shortcuts where the shape changes), global average pooling and a Gemm to 10
classes: 8 weighted layers on the main path. BatchNormalization stays a node in the ONNX file.
Trained like LeNet-5 (Adam, one-cycle, 2-pixel shifts, seed 0).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python models/resnet8_mnist.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import _mnist, zoo
from models._resnet import ResNet


def resnet8(num_classes: int = 10) -> ResNet:
    """ResNet-8 for 1x28x28 input."""
    return ResNet(1, (16, 32, 64), (1, 1, 1), num_classes)


def build(name: str = "resnet8_mnist", dest: Path | None = None) -> dict[str, float]:
    """Train and export ResNet-8 to ``dest`` (default: its zoo file)."""
    return _mnist.train_and_export(name, resnet8, dest or zoo.get(name).file, epochs=15, lr=3e-3,
                                   weight_decay=1e-4)


if __name__ == "__main__":
    build()
