"""A small transformer encoder for the deployment benchmark: MNIST rows as 28 tokens, trained briefly.

``encoder_model()`` trains it with torch (1 thread, a few hundred steps, seed 0) on the first 10,000
``builtin:mnist?split=train`` digits and exports it to ONNX (opset 17) under the onnxslice cache
folder, so later runs reuse it. Not a reference model: a stand-in with the MatMul/LayerNorm/Softmax
structure of an encoder, for the quantization formats.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np

from onnxslice.latency import cache_dir


def encoder_model(steps: int = 300, seed: int = 0) -> Path:
    """Path of the exported encoder (trained and exported on first use)."""
    path = cache_dir() / "models" / f"mnist_encoder_s{steps}_seed{seed}.onnx"
    if path.is_file():
        return path
    import torch
    from torch import nn

    import onnxslice as osl

    torch.manual_seed(seed)
    torch.set_num_threads(1)

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(28, 64)
            self.pos = nn.Parameter(torch.zeros(1, 28, 64))
            layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.encoder(self.embed(x.reshape(-1, 28, 28)) + self.pos)
            return self.head(h.mean(1))

    train = osl.load_data("builtin:mnist?split=train")
    x = torch.tensor(np.asarray(train.x[:10000], dtype=np.float32))
    y = torch.tensor(np.asarray(train.labels[:10000], dtype=np.int64))
    net = Encoder()
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=gen)
        loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x[:1],), buf, input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}}, opset_version=17, dynamo=False)
    import onnx

    proto = onnx.load_from_string(buf.getvalue())
    proto.ir_version = 10
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return path
