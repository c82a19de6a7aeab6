"""LeNet-5 on built-in MNIST: ``python -m models.lenet5`` writes ``models/lenet5.onnx``.

Conv(6, 5x5, pad 2)-ReLU-MaxPool, Conv(16, 5x5)-ReLU-MaxPool, Gemm 400-120-84-10 with ReLU; the
classic LeNet-5 shape with ReLU and max pooling. Trained with Adam (one-cycle schedule) and random
2-pixel shifts on the 4,000-image train split, seed 0; accuracy is measured on the exported ONNX file.
"""

from __future__ import annotations

import sys
from pathlib import Path

from torch import Tensor, nn

if __package__ in (None, ""):  # run as `python models/lenet5.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import _mnist, zoo


class LeNet5(nn.Module):
    """LeNet-5 for 1x28x28 input."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        x = x.flatten(1)
        x = self.relu(self.fc1(x))
        x = self.relu(self.fc2(x))
        return self.fc3(x)


def build(name: str = "lenet5", dest: Path | None = None) -> dict[str, float]:
    """Train and export LeNet-5 to ``dest`` (default: its zoo file)."""
    return _mnist.train_and_export(name, LeNet5, dest or zoo.get(name).file, epochs=30, lr=3e-3)


if __name__ == "__main__":
    build()
