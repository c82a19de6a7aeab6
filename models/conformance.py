"""The conformance set: ONNX models nobody on the team designed, built on demand into a cache folder.

Each entry of :data:`ENTRIES` names where the model comes from, its licence, its data (random inputs
of the right shape, or a built-in data set) and whether it is small enough for CI. :func:`build`
writes ``<name>.onnx`` and ``<name>.npz`` (inputs keyed by input name) under :data:`CACHE`
(``models/build/conformance/``, git-ignored) the first time and reuses them afterwards.

Sources:

- the onnx package's ``light_*`` models (``onnx/backend/test/data/light``; Apache-2.0): real
  architectures exported long ago (IR 3, opset 9, batch fixed to 1, initializers listed as graph
  inputs) whose weights are ``ConstantOfShape`` constants;
- torch exports (``torch.onnx.export``, TorchScript exporter) of small modules defined here in the
  shapes that users bring (a CRNN text recognizer with a bidirectional LSTM and a time-first CTC head, a
  segmentation net with ConvTranspose and Resize, a BERT-style encoder, a ViT-style classifier, a GRU
  text classifier, a CNN with the batch fixed to 1 and to 4) with **seeded random weights** (untrained);
- onnxruntime's quantization tool (``quantize_dynamic``, ``quantize_static`` in QDQ and QOperator
  formats) applied to some of them, and ``onnx.version_converter`` down to opset 8;
- the committed Keras (tf2onnx) and scikit-learn (skl2onnx) models of ``models/``.

Torch is needed only to build the torch entries; the others build without it.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent
CACHE = ROOT / "build" / "conformance"
LIGHT = "onnx/backend/test/data/light"

__all__ = ["CACHE", "ENTRIES", "Entry", "build", "names"]


@dataclass(frozen=True)
class Entry:
    """One model of the set.

    Attributes:
        name: file stem under :data:`CACHE`.
        source: where the model comes from (package, exporter, converter).
        licence: its licence.
        kind: what it exercises (output kind, ops, export quirks).
        small: cheap enough for the CI test.
        data: ``builtin:...`` spec, or empty for the random inputs written beside the model.
        target: the ``--target`` the matrix passes (empty: the verbs' default).
        output: the ``--output`` the matrix passes (empty: first output).
        rewrite_args: extra arguments of ``prune`` and ``quantize`` (``--dequantize`` for pre-quantized models,
            which these verbs refuse without it).
    """

    name: str
    source: str
    licence: str
    kind: str
    small: bool = True
    data: str = ""
    target: str = ""
    output: str = ""
    rewrite_args: tuple[str, ...] = ()


def _light_dir() -> Path:
    import onnx as _onnx

    return Path(_onnx.__file__).parent / "backend" / "test" / "data" / "light"


ENTRIES: list[Entry] = [
    Entry("light_squeezenet", f"onnx package, {LIGHT}/light_squeezenet.onnx", "Apache-2.0",
          "IR 3 / opset 9, batch 1, output [1,1000,1,1] after Softmax"),
    Entry("light_shufflenet", f"onnx package, {LIGHT}/light_shufflenet.onnx", "Apache-2.0",
          "IR 3 / opset 9, batch 1, grouped conv + channel shuffle (Transpose)", small=False),
    Entry("light_inception_v1", f"onnx package, {LIGHT}/light_inception_v1.onnx", "Apache-2.0",
          "IR 3 / opset 9, batch 1, LRN, Concat branches", small=False),
    Entry("light_densenet121", f"onnx package, {LIGHT}/light_densenet121.onnx", "Apache-2.0",
          "IR 3 / opset 9, batch 1, output [1,1000,1,1] (no Softmax)", small=False),
    Entry("light_resnet50", f"onnx package, {LIGHT}/light_resnet50.onnx", "Apache-2.0",
          "IR 3 / opset 9, batch 1, Sum residuals", small=False),
    Entry("keras_mnist", "models/keras_mnist.onnx (Keras, tf2onnx)", "this repository",
          "tf2onnx export, NHWC-transposed convs", data="builtin:mnist?n=64"),
    Entry("mlp_digits", "models/mlp_digits.onnx (scikit-learn MLPClassifier, skl2onnx)", "this repository",
          "ai.onnx.ml domain, label + probabilities outputs", data="builtin:digits?n=64", output="probabilities"),
    Entry("crnn_ctc", "torch.onnx.export of a CRNN defined here (random weights)", "this repository",
          "conv + bidirectional LSTM, time-first [T,N,C] CTC head"),
    Entry("segnet", "torch.onnx.export of a small segmenter defined here (random weights)", "this repository",
          "ConvTranspose + Resize (bilinear), dense [N,C,H,W] output"),
    Entry("heatmap", "torch.onnx.export of a keypoint-style net defined here (random weights)", "this repository",
          "single-channel dense map [N,1,H,W] (Resize nearest)"),
    Entry("bert_tiny", "torch.onnx.export of a BERT-style encoder defined here (random weights)", "this repository",
          "token ids, attention (MatMul of two activations), LayerNorm, GELU, [N,C] from [CLS]"),
    Entry("vit_tiny", "torch.onnx.export of a ViT-style classifier defined here (random weights)", "this repository",
          "patch conv, class token, attention, LayerNorm"),
    Entry("gru_text", "torch.onnx.export of a GRU text classifier defined here (random weights)", "this repository",
          "Gather embedding + GRU, [N,C]"),
    Entry("seq_tagger", "torch.onnx.export of a conv sequence tagger defined here (random weights)", "this repository",
          "sequence output [N,T,C]"),
    Entry("cnn", "torch.onnx.export of a small CNN defined here, dynamic batch (random weights)",
          "this repository", "the float net behind the fixed-batch, opset-8 and quantized variants"),
    Entry("cnn_batch1", "torch.onnx.export of a small CNN defined here, batch fixed to 1 (random weights)",
          "this repository", "static batch 1"),
    Entry("cnn_batch4", "torch.onnx.export of the same CNN, batch fixed to 4 (random weights)",
          "this repository", "static batch 4"),
    Entry("cnn_opset8", "the same CNN converted by onnx.version_converter to opset 8, IR 3 inputs",
          "this repository", "old export: opset 8, initializers listed as graph inputs"),
    Entry("vit_tiny_qdyn", "onnxruntime.quantization.quantize_dynamic(vit_tiny)", "this repository (MIT tool)",
          "DynamicQuantizeLinear + MatMulInteger", rewrite_args=("--dequantize",)),
    Entry("crnn_ctc_qdyn", "onnxruntime.quantization.quantize_dynamic(crnn_ctc)", "this repository (MIT tool)",
          "ConvInteger + DynamicQuantizeLSTM", rewrite_args=("--dequantize",)),
    Entry("cnn_qdq", "onnxruntime.quantization.quantize_static(cnn, QDQ)", "this repository (MIT tool)",
          "QDQ format: QuantizeLinear/DequantizeLinear around Conv/Gemm", rewrite_args=("--dequantize",)),
    Entry("cnn_qop", "onnxruntime.quantization.quantize_static(cnn, QOperator)", "this repository (MIT tool)",
          "QLinearConv, QLinearMatMul/QGemm", rewrite_args=("--dequantize",)),
]


def names(small_only: bool = False) -> list[str]:
    """Names of the set (only the CI-sized ones with ``small_only``)."""
    return [e.name for e in ENTRIES if e.small or not small_only]


def entry(name: str) -> Entry:
    """The entry called ``name``."""
    for e in ENTRIES:
        if e.name == name:
            return e
    raise KeyError(f"no conformance model '{name}'; known: {', '.join(names())}")


# -- helpers ---------------------------------------------------------------------------------------

def _shape(vi: onnx.ValueInfoProto, batch: int) -> list[int]:
    dims = []
    for i, d in enumerate(vi.type.tensor_type.shape.dim):
        dims.append(d.dim_value if d.dim_value > 0 else (batch if i == 0 else 8))
    return dims


def _random_inputs(proto: onnx.ModelProto, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` samples of seeded inputs for every real input (int inputs: token ids in [0, 50))."""
    rng = np.random.default_rng(seed)
    inits = {t.name for t in proto.graph.initializer}
    out: dict[str, np.ndarray] = {}
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        shape = _shape(vi, n)
        shape[0] = n
        elem = vi.type.tensor_type.elem_type
        if elem in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
            dt = np.int64 if elem == onnx.TensorProto.INT64 else np.int32
            out[vi.name] = rng.integers(0, 50, size=shape).astype(dt)
        else:
            out[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return out


def _save(proto: onnx.ModelProto, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    onnx.save_model(proto, str(tmp))
    os.replace(tmp, dest)


def _save_data(arrays: dict[str, np.ndarray], dest: Path) -> None:
    tmp = dest.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)  # type: ignore[arg-type]
    os.replace(tmp, dest)


def _torch_export(net: object, example: tuple[object, ...], input_names: list[str], output_names: list[str],
                  dynamic: dict[str, dict[int, str]] | None, opset: int = 17) -> onnx.ModelProto:
    import torch

    net.eval()  # type: ignore[attr-defined]
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f = Path(tmp) / "m.onnx"
        torch.onnx.export(net, example, str(f), dynamo=False, opset_version=opset, input_names=input_names,
                          output_names=output_names, dynamic_axes=dynamic, do_constant_folding=True)
        proto = onnx.load(str(f))
    proto.ir_version = min(proto.ir_version, 10)
    return proto


# -- torch modules ---------------------------------------------------------------------------------

def _nets() -> dict[str, Callable[[], tuple[object, tuple[object, ...]]]]:
    import torch
    from torch import nn

    torch.manual_seed(0)

    class CRNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2))
            self.rnn = nn.LSTM(16 * 4, 24, bidirectional=True)
            self.head = nn.Linear(48, 11)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = self.conv(x)  # [N, 16, 4, T]
            n, c, h, t = f.shape
            seq = f.reshape(n, c * h, t).permute(2, 0, 1)  # [T, N, F]
            out, _ = self.rnn(seq)
            return self.head(out).log_softmax(-1)  # [T, N, C]

    class Seg(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                     nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
            self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
            self.head = nn.Conv2d(8, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.up(self.enc(x)))
            y = nn.functional.interpolate(y, scale_factor=2.0, mode="bilinear", align_corners=False)
            return self.head(y)

    class Heat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return nn.functional.interpolate(self.body(x), scale_factor=2.0, mode="nearest")

    class Block(nn.Module):
        def __init__(self, d: int, heads: int) -> None:
            super().__init__()
            self.h, self.d = heads, d
            self.qkv = nn.Linear(d, 3 * d)
            self.proj = nn.Linear(d, d)
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            n, t, d = x.shape
            q, k, v = self.qkv(self.ln1(x)).reshape(n, t, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
            a = (q @ k.transpose(-1, -2) / (d // self.h) ** 0.5).softmax(-1)
            x = x + self.proj((a @ v).transpose(1, 2).reshape(n, t, d))
            return x + self.ff(self.ln2(x))

    class Bert(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tok = nn.Embedding(50, 32)
            self.pos = nn.Parameter(torch.randn(1, 12, 32) * 0.1)
            self.blocks = nn.Sequential(Block(32, 4), Block(32, 4))
            self.ln = nn.LayerNorm(32)
            self.cls = nn.Linear(32, 3)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.cls(self.ln(self.blocks(self.tok(ids) + self.pos))[:, 0])

    class ViT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.patch = nn.Conv2d(3, 32, 8, stride=8)
            self.cls_tok = nn.Parameter(torch.randn(1, 1, 32) * 0.1)
            self.pos = nn.Parameter(torch.randn(1, 17, 32) * 0.1)
            self.blocks = nn.Sequential(Block(32, 4), Block(32, 4))
            self.ln = nn.LayerNorm(32)
            self.head = nn.Linear(32, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            p = self.patch(x).flatten(2).transpose(1, 2)
            p = torch.cat([self.cls_tok.expand(p.shape[0], -1, -1), p], 1) + self.pos
            return self.head(self.ln(self.blocks(p))[:, 0])

    class GRUText(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(50, 16)
            self.rnn = nn.GRU(16, 32, batch_first=True)
            self.fc = nn.Linear(32, 4)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            _, h = self.rnn(self.emb(ids))
            return self.fc(h[-1])

    class Tagger(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = nn.Conv1d(8, 16, 3, padding=1)
            self.c2 = nn.Conv1d(16, 5, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [N, 8, T]
            return self.c2(torch.relu(self.c1(x))).transpose(1, 2)  # [N, T, 5]

    class CNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.f = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                                   nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                   nn.Linear(16, 6))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.f(x)

    def seeded(cls: Callable[[], nn.Module]) -> nn.Module:
        torch.manual_seed(0)
        net = cls()
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics, as a trained net has
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
        return net.eval()

    ids = torch.zeros(2, 12, dtype=torch.int64)
    return {
        "crnn_ctc": lambda: (seeded(CRNN), (torch.zeros(2, 1, 16, 32),)),
        "segnet": lambda: (seeded(Seg), (torch.zeros(2, 3, 32, 32),)),
        "heatmap": lambda: (seeded(Heat), (torch.zeros(2, 3, 32, 32),)),
        "bert_tiny": lambda: (seeded(Bert), (ids,)),
        "vit_tiny": lambda: (seeded(ViT), (torch.zeros(2, 3, 32, 32),)),
        "gru_text": lambda: (seeded(GRUText), (torch.zeros(2, 10, dtype=torch.int64),)),
        "seq_tagger": lambda: (seeded(Tagger), (torch.zeros(2, 8, 12),)),
        "cnn": lambda: (seeded(CNN), (torch.zeros(2, 3, 16, 16),)),
    }


def _export_named(name: str, *, batch: int | None = None, opset: int = 17) -> onnx.ModelProto:
    import torch

    net, example = _nets()[name]()
    in_name = "ids" if name in ("bert_tiny", "gru_text") else "x"
    if batch is not None:
        example = tuple(torch.zeros((batch, *e.shape[1:]), dtype=e.dtype) for e in example)  # type: ignore[attr-defined]
        return _torch_export(net, example, [in_name], ["y"], None)
    out_axis = 1 if name == "crnn_ctc" else 0
    dyn = {in_name: {0: "batch"}, "y": {out_axis: "batch"}}
    return _torch_export(net, example, [in_name], ["y"], dyn, opset)


# -- builders --------------------------------------------------------------------------------------

def _calibration_reader(proto: onnx.ModelProto) -> object:
    from onnxruntime.quantization import CalibrationDataReader

    feeds = [_random_inputs(proto, 1, seed=s) for s in range(8)]

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    return Reader()


def _quantized(name: str, base: str, static: str | None) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    src = _build_proto(base)
    with tempfile.TemporaryDirectory() as tmp:
        fin, fout = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save_model(src, str(fin))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if static is None:
                quantize_dynamic(str(fin), str(fout), weight_type=QuantType.QInt8)
            else:
                fmt = QuantFormat.QDQ if static == "qdq" else QuantFormat.QOperator
                quantize_static(str(fin), str(fout), _calibration_reader(src), quant_format=fmt,  # type: ignore[arg-type]
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        out = onnx.load(str(fout))
    out.ir_version = min(out.ir_version, 10)
    return out


def _opset8() -> onnx.ModelProto:
    from onnx import version_converter

    src = _export_named("cnn", opset=9)
    old = version_converter.convert_version(src, 8)
    old.ir_version = 3  # IR 3: every initializer is also a graph input
    declared = {i.name for i in old.graph.input}
    for t in old.graph.initializer:
        if t.name not in declared:
            old.graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return old


def _build_proto(name: str) -> onnx.ModelProto:
    if name.startswith("light_"):
        return onnx.load(str(_light_dir() / f"{name}.onnx"))
    if name in ("keras_mnist", "mlp_digits"):
        return onnx.load(str(ROOT / f"{name}.onnx"))
    if name == "cnn_batch1":
        return _export_named("cnn", batch=1)
    if name == "cnn_batch4":
        return _export_named("cnn", batch=4)
    if name == "cnn_opset8":
        return _opset8()
    if name == "vit_tiny_qdyn":
        return _quantized(name, "vit_tiny", None)
    if name == "crnn_ctc_qdyn":
        return _quantized(name, "crnn_ctc", None)
    if name == "cnn_qdq":
        return _quantized(name, "cnn", "qdq")
    if name == "cnn_qop":
        return _quantized(name, "cnn", "qop")
    if name == "cnn":
        return _export_named("cnn")
    return _export_named(name)


def build(name: str, *, samples: int = 8, cache: Path | None = None) -> tuple[Path, str]:
    """Build (or reuse) model ``name`` and its data; returns ``(model path, data spec)``.

    The data spec is the entry's built-in set, or ``<name>.npz`` with ``samples`` seeded random inputs
    (the same for every model with the same input; a fixed-batch model gets a multiple of its batch plus
    a remainder, so that streaming with padding is exercised).
    """
    e = entry(name)
    folder = cache or CACHE
    dest = folder / f"{name}.onnx"
    if not dest.exists():
        _save(_build_proto(name), dest)
    if e.data:
        return dest, e.data
    data = folder / f"{name}.npz"
    if not data.exists():
        proto = onnx.load(str(dest))
        _save_data(_random_inputs(proto, samples), data)
    return dest, str(data)


if __name__ == "__main__":
    for n in names():
        path, spec = build(n)
        print(f"{n:20s} {path.stat().st_size / 1e3:9.1f} kB  data {spec}")
