"""Train a torch classifier on built-in MNIST and export it (shared by ``lenet5`` and ``resnet8_mnist``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from torch import nn

from models import _torch
from onnxslice.data import load_data

SEED = 0
TRAIN, TEST = "builtin:mnist?split=train", "builtin:mnist?split=test"


def train_and_export(
    name: str, make: Callable[[], nn.Module], dest: Path, *, epochs: int, lr: float, weight_decay: float = 0.0
) -> dict[str, float]:
    """Seed, build with ``make``, train on the MNIST train split, export, and measure with onnxruntime.

    Returns:
        ``test_accuracy`` (ONNX model, onnxruntime) and ``max_abs_diff`` (torch vs onnxruntime).
    """
    _torch.seed_everything(SEED)
    train, test = load_data(TRAIN), load_data(TEST)
    assert train.labels is not None and test.labels is not None
    net = make()
    _torch.train_classifier(net, train.x, train.labels, epochs=epochs, lr=lr, weight_decay=weight_decay,
                            augment=_torch.random_shift(2), seed=SEED)
    proto = _torch.export(net, (1, 28, 28), metadata={"onnxslice.model": name, "seed": str(SEED),
                                                      "train_data": TRAIN, "build": _torch.command_line()})
    diff = _torch.check_fidelity(net, proto, test.x[:256])
    acc = float(np.mean(_torch.ort_outputs(proto, test.x).argmax(1) == test.labels))
    meta = proto.metadata_props.add()
    meta.key, meta.value = "test_accuracy", f"{acc:.4f} on {TEST} ({len(test)} images, onnxruntime)"
    _torch.save(proto, dest)
    print(f"{name}: test accuracy {acc:.4f} on {TEST} ({len(test)} images); torch vs onnxruntime max |diff| "
          f"{diff:.2e}; {_torch.num_params(proto):,} params; ops: {_torch.op_summary(proto)}")
    return {"test_accuracy": acc, "max_abs_diff": diff}
