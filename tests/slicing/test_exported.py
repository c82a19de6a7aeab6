"""Slicing models as exporters emit them: torch's TorchScript exporter, unfused BatchNorm, ReLU6, depthwise
convolutions, residual Add, GlobalAveragePool and a ``view(N, -1)`` shape subgraph (Shape/Gather/Unsqueeze/
Concat/Reshape), the op mix of EfficientNet-Lite0 and the CIFAR ResNets."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest

from onnxslice.model import load
from onnxslice.profile import profile
from onnxslice.rewrite import slice_to_model
from onnxslice.slicing import slice
from onnxslice.testing import run_ort

torch = pytest.importorskip("torch")
nn = torch.nn


class _MBBlock(nn.Module):
    """Inverted residual: expand 1x1, depthwise 3x3, project 1x1, with BN and ReLU6."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(c, 2 * c, 1, bias=False), nn.BatchNorm2d(2 * c), nn.ReLU6())
        self.dw = nn.Sequential(
            nn.Conv2d(2 * c, 2 * c, 3, 1, 1, groups=2 * c, bias=False), nn.BatchNorm2d(2 * c), nn.ReLU6()
        )
        self.project = nn.Sequential(nn.Conv2d(2 * c, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.project(self.dw(self.expand(x)))


class _TinyLite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.block = _MBBlock(8)
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(8, 6))

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.block(self.stem(x)), 1)
        return self.head(x.view(x.size(0), -1))


def _export(module, x: np.ndarray) -> bytes:
    torch.manual_seed(0)
    module.train()
    with torch.no_grad():
        module(torch.from_numpy(x))  # BatchNorm statistics from the data
    module.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            torch.from_numpy(x[:1]),
            buf,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}},
            opset_version=17,
            dynamo=False,
            do_constant_folding=False,
            training=torch.onnx.TrainingMode.PRESERVE,
        )
    return buf.getvalue()


@pytest.mark.slow
def test_exported_mobile_block_slices_and_sliced_model_runs():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = (rng.random((32, 3, 16, 16)) * rng.uniform(0.2, 2, (32, 1, 1, 1))).astype(np.float32)
    model = load(_export(_TinyLite(), x))
    ops = set(model.op_histogram())
    assert {"Conv", "BatchNormalization", "Clip", "Add", "GlobalAveragePool", "Shape", "Reshape", "Gemm"} <= ops
    prof = profile(model, x, 16)
    s = slice(model, prof, x, "pred", 0.3, theta_denominator="delta", samples="0:6", workers=1)
    dw = next(layer for layer in model.layers if model.initializer(layer.weight).shape[1] == 1)
    assert (s.synapses[dw.weight] != 0).any(), "CONTRIB did not reach the depthwise convolution"
    assert (s.neurons["x"] != 0).any(), "CONTRIB did not reach the input"
    out = run_ort(slice_to_model(s, model), {"x": x[:6]})[0]
    assert out.shape == (6, 6) and np.isfinite(out).all()
    c = slice(model, prof, x, "pred", 0.3, theta_denominator="delta", samples="0:6", granularity="channel", workers=1)
    assert c.neurons["x"].shape == (3,)
