"""Shared torch helpers of the build scripts: seeding, training, and a clean ONNX export.

The export uses torch's TorchScript exporter (``dynamo=False``) with ``TrainingMode.PRESERVE`` on a
module in eval mode. That keeps BatchNormalization as its own node (the ``EVAL`` mode and the dynamo
exporter's optimizer both fold it into the preceding Conv, which onnxslice must not see) while still
exporting inference-mode BatchNormalization, and names nodes after the module path
(``/layer1/layer1.0/conv1/Conv``). The batch axis is dynamic; the IR version is set to
:data:`IR_VERSION` so that every supported onnxruntime accepts the file. Only build scripts import this.
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from torch import nn

#: IR version of every exported file (onnx 1.23 writes 14 by default; onnxruntime 1.31 reads at most 13).
IR_VERSION = 10
OPSET = 17


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch, and cap torch to 2 threads (the build machine is shared)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)


def train_classifier(
    net: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    lr: float,
    batch_size: int = 64,
    weight_decay: float = 0.0,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> None:
    """Train ``net`` with Adam and a cosine learning-rate schedule on (x, y); deterministic for a seed."""
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        net.train()
        t0, total, correct, loss_sum = time.time(), 0, 0, 0.0
        for idx in torch.randperm(len(x), generator=gen).split(batch_size):
            xb, yb = xt[idx], yt[idx]
            if augment is not None:
                xb = augment(xb, gen)
            opt.zero_grad()
            out = net(xb)
            loss = loss_fn(out, yb)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            correct += int((out.argmax(1) == yb).sum())
            total += len(idx)
        log(f"epoch {epoch + 1}/{epochs}: loss {loss_sum / total:.4f}, train acc {correct / total:.4f} "
            f"({time.time() - t0:.1f}s)")


def random_shift(max_shift: int) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """Augmentation: shift each image by up to ``max_shift`` pixels (zero fill)."""

    def shift(xb: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        h, w = xb.shape[-2:]
        padded = nn.functional.pad(xb, (max_shift,) * 4)
        out = torch.empty_like(xb)
        offs = torch.randint(0, 2 * max_shift + 1, (len(xb), 2), generator=gen)
        for i, (dy, dx) in enumerate(offs.tolist()):
            out[i] = padded[i, :, dy : dy + h, dx : dx + w]
        return out

    return shift


def _inline_identities(proto: onnx.ModelProto) -> int:
    """Replace ``Identity(initializer)`` nodes by a copy of the initializer under the output name.

    The TorchScript exporter deduplicates equal parameters (e.g. untrained BatchNormalization
    statistics equal to its weight) and reads the copies through Identity nodes; a weight should be an
    initializer the node reads directly.
    """
    g = proto.graph
    inits = {t.name: t for t in g.initializer}
    outputs = {o.name for o in g.output}
    keep, n = [], 0
    for node in g.node:
        if node.op_type == "Identity" and node.input[0] in inits and node.output[0] not in outputs:
            t = onnx.TensorProto()
            t.CopyFrom(inits[node.input[0]])
            t.name = node.output[0]
            g.initializer.append(t)
            n += 1
        else:
            keep.append(node)
    del g.node[:]
    g.node.extend(keep)
    return n


def _fold_constants(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Evaluate constant-only subgraphs with onnx-graphsurgeon (shape arithmetic the exporter left).

    The TorchScript exporter leaves e.g. the pads of ``F.pad`` as a chain of Constant, ConstantOfShape,
    Concat, Slice, Transpose and Cast nodes; folding turns them into initializers. Folding evaluates
    constants only: BatchNormalization is never fused into Conv here.
    """
    if not any(n.op_type == "Constant" for n in proto.graph.node):
        return proto
    import onnx_graphsurgeon as gs

    meta = list(proto.metadata_props)
    graph = gs.import_onnx(proto)
    graph.fold_constants().cleanup()
    out = gs.export_onnx(graph)
    out.ir_version = proto.ir_version
    del out.opset_import[:]
    out.opset_import.extend(proto.opset_import)
    out.metadata_props.extend(meta)
    out.producer_name, out.producer_version = proto.producer_name, proto.producer_version
    return out


def finalize(proto: onnx.ModelProto, metadata: Mapping[str, str]) -> onnx.ModelProto:
    """Set the IR version, record provenance in ``metadata_props``, and check the model."""
    proto.ir_version = IR_VERSION
    proto.producer_name = proto.producer_name or "onnxslice-models"
    for k, v in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, str(v)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export(
    net: nn.Module,
    sample_shape: tuple[int, ...],
    *,
    input_name: str = "x",
    output_name: str = "logits",
    metadata: Mapping[str, str] | None = None,
) -> onnx.ModelProto:
    """Export ``net`` (put in eval mode) to an ONNX proto with a dynamic batch axis, BN unfused."""
    net.eval()
    example = torch.zeros((2, *sample_shape))
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        onnx_file = Path(tmp) / "export.onnx"
        warnings.simplefilter("ignore")  # the TorchScript exporter warns that it is deprecated
        torch.onnx.export(
            net, (example,), onnx_file, dynamo=False, opset_version=OPSET, input_names=[input_name],
            output_names=[output_name], dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
            do_constant_folding=True, training=torch.onnx.TrainingMode.PRESERVE,
        )
        raw = onnx.load(str(onnx_file))
    proto = _fold_constants(raw)
    if pads := fold_pads(proto):
        print(f"folded {pads} zero Pad node(s) into their Conv's pads")
    _inline_identities(proto)
    meta = {"torch": torch.__version__, "exporter": "torch.onnx.export(dynamo=False, training=PRESERVE)"}
    return finalize(proto, {**meta, **(metadata or {})})


def ort_outputs(proto: onnx.ModelProto, x: np.ndarray, output: str | None = None) -> np.ndarray:
    """The first (or named) output of a plain onnxruntime CPU session on ``x``."""
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run([output] if output else None, {sess.get_inputs()[0].name: x})[0])


def check_fidelity(net: nn.Module, proto: onnx.ModelProto, x: np.ndarray) -> float:
    """Max |torch - onnxruntime| over ``x`` (float32 rounding is ~1e-5 relative)."""
    net.eval()
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    return float(np.max(np.abs(ref - ort_outputs(proto, x))))


def save(proto: onnx.ModelProto, dest: Path) -> Path:
    """Write ``proto`` to ``dest`` (through a temporary file) and report its size."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".onnx.tmp")
    onnx.save_model(proto, str(tmp))
    tmp.replace(dest)
    print(f"wrote {dest} ({dest.stat().st_size / 2**20:.2f} MiB, IR {proto.ir_version}, "
          f"opset {proto.opset_import[0].version}, {len(proto.graph.node)} nodes)")
    return dest


def op_summary(proto: onnx.ModelProto) -> str:
    """``Conv x5, Relu x4, ...``: the op histogram of a model."""
    hist: dict[str, int] = {}
    for n in proto.graph.node:
        hist[n.op_type] = hist.get(n.op_type, 0) + 1
    return ", ".join(f"{k} x{v}" for k, v in sorted(hist.items(), key=lambda kv: -kv[1]))


def num_params(proto: onnx.ModelProto) -> int:
    """Scalars in all initializers."""
    return int(sum(numpy_helper.to_array(t).size for t in proto.graph.initializer))


def command_line() -> str:
    """The command that ran this build (for metadata)."""
    return "python -m models." + Path(sys.argv[0]).stem + "".join(f" {a}" for a in sys.argv[1:])


def fold_pads(proto: onnx.ModelProto) -> int:
    """Fold constant zero ``Pad`` nodes on spatial axes into the ``pads`` of the Conv they feed.

    Returns the number of Pad nodes removed. A Pad is folded only when its mode is constant, its value
    is zero (or absent), it pads no batch or channel axis, and its only consumer is a Conv.
    """
    g = proto.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in g.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    removed: list[onnx.NodeProto] = []
    for node in g.node:
        if node.op_type != "Pad" or node.input[1] not in inits:
            continue
        mode = next((a.s.decode() for a in node.attribute if a.name == "mode"), "constant")
        value = inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        users = consumers.get(node.output[0], [])
        pads = inits[node.input[1]].astype(np.int64).tolist()
        rank = len(pads) // 2
        if (mode != "constant" or (value is not None and float(value) != 0.0) or len(users) != 1
                or users[0].op_type != "Conv" or (len(node.input) > 3 and node.input[3])
                or any(pads[a] or pads[a + rank] for a in (0, 1))):
            continue
        conv = users[0]
        old = next((list(a.ints) for a in conv.attribute if a.name == "pads"), [0] * (2 * (rank - 2)))
        new = [p + q for p, q in zip(old, pads[2:rank] + pads[rank + 2:], strict=True)]
        for a in list(conv.attribute):
            if a.name in ("pads", "auto_pad"):
                conv.attribute.remove(a)
        conv.attribute.append(onnx.helper.make_attribute("pads", new))
        conv.input[0] = node.input[0]
        removed.append(node)
    for node in removed:
        g.node.remove(node)
    used = {i for n in g.node for i in n.input}
    dead = [t for t in g.initializer if t.name not in used]
    for t in dead:
        g.initializer.remove(t)
    return len(removed)
