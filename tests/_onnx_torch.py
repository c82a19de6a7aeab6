"""A torch module that runs an ONNX graph with torch ops, its weights loaded from the ONNX initializers.

The reference for the end-to-end gradient tests on the real model files: its forward is checked
against onnxruntime, and torch autograd then gives the gradients onnxslice must match. Only the ops
of the reference models are covered; anything else raises ``NotImplementedError``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from onnxslice.model import Model, Node

_DTYPES = {1: torch.float32, 6: torch.int32, 7: torch.int64, 9: torch.bool, 11: torch.float64}


def _pads_2d(node: Node, rank: int) -> list[int]:
    """ONNX pads [b1, b2, e1, e2] as F.pad's [b2, e2, b1, e1] (last axis first)."""
    pads = list(node.attr("pads", [0] * (2 * rank)))
    if node.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise NotImplementedError("auto_pad SAME in the torch reference")
    out: list[int] = []
    for i in reversed(range(rank)):
        out += [pads[i], pads[i + rank]]
    return out


class OnnxTorch(nn.Module):
    """``model``'s graph in torch; every float initializer is a parameter (``param(name)``)."""

    def __init__(self, model: Model) -> None:
        super().__init__()
        self.model = model
        self.params = nn.ParameterDict()
        self.keys: dict[str, str] = {}
        self.consts: dict[str, torch.Tensor] = {}
        for i, name in enumerate(model.initializer_names):
            arr = np.array(model.initializer(name))
            if np.issubdtype(arr.dtype, np.floating):
                key = f"p{i}"
                self.keys[name] = key
                self.params[key] = nn.Parameter(torch.from_numpy(arr))
            else:
                self.consts[name] = torch.from_numpy(arr)

    def param(self, name: str) -> nn.Parameter:
        return self.params[self.keys[name]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env: dict[str, Any] = {self.model.input_names[0]: x}
        for name, key in self.keys.items():
            env[name] = self.params[key]
        env.update(self.consts)
        for node in self.model.nodes:
            ins = [env[i] if i else None for i in node.inputs]
            outs = self._run(node, ins)
            for o, v in zip(node.outputs, outs, strict=False):
                env[o] = v
        return env[self.model.output_names[0]]

    def _run(self, node: Node, ins: list[Any]) -> list[Any]:
        op, a = node.op_type, node.attr
        x = ins[0]
        if op == "Conv":
            r = x.dim() - 2
            x = F.pad(x, _pads_2d(node, r))
            conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[r]
            return [conv(x, ins[1], ins[2] if len(ins) > 2 else None, list(a("strides", [1] * r)), 0,
                         list(a("dilations", [1] * r)), int(a("group", 1)))]  # fmt: skip
        if op == "BatchNormalization":
            # written out (not F.batch_norm) so that the statistics get gradients too
            shape = (1, -1) + (1,) * (x.dim() - 2)
            scale, bias, mean, var = (t.reshape(shape) for t in ins[1:5])
            return [(x - mean) / torch.sqrt(var + float(a("epsilon", 1e-5))) * scale + bias]
        if op == "Relu":
            return [torch.relu(x)]
        if op == "Tanh":
            return [torch.tanh(x)]
        if op == "Sigmoid":
            return [torch.sigmoid(x)]
        if op == "Clip":
            lo = ins[1] if len(ins) > 1 and ins[1] is not None else None
            hi = ins[2] if len(ins) > 2 and ins[2] is not None else None
            return [torch.clamp(x, lo, hi)]
        if op in ("MaxPool", "AveragePool"):
            r = x.dim() - 2
            k, s = list(a("kernel_shape")), list(a("strides", [1] * r))
            fill = -float("inf") if op == "MaxPool" else 0.0
            if any(a("pads", [0])) and op == "AveragePool" and not a("count_include_pad", 0):
                raise NotImplementedError("AveragePool excluding pads in the torch reference")
            x = F.pad(x, _pads_2d(node, r), value=fill)
            pool = F.max_pool2d if op == "MaxPool" else F.avg_pool2d
            return [pool(x, k, s, 0, ceil_mode=bool(a("ceil_mode", 0)))]
        if op == "GlobalAveragePool":
            return [x.mean(dim=tuple(range(2, x.dim())), keepdim=True)]
        if op == "Flatten":
            return [torch.flatten(x, int(a("axis", 1)))]
        if op == "Gemm":
            A = ins[0].T if a("transA", 0) else ins[0]
            B = ins[1].T if a("transB", 0) else ins[1]
            y = float(a("alpha", 1.0)) * (A @ B)
            return [y + float(a("beta", 1.0)) * ins[2] if len(ins) > 2 and ins[2] is not None else y]
        if op == "MatMul":
            return [x @ ins[1]]
        if op in ("Add", "Sub", "Mul", "Div"):
            f = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}[op]
            return [f(x, ins[1])]
        if op == "Shape":
            return [torch.tensor(list(x.shape), dtype=torch.int64)]
        if op == "Gather":
            idx = ins[1].long()
            out = torch.index_select(x, int(a("axis", 0)), idx.reshape(-1))
            axis = int(a("axis", 0))
            return [out.reshape(*x.shape[:axis], *idx.shape, *x.shape[axis + 1 :])]
        if op == "Cast":
            return [x.to(_DTYPES[int(a("to"))])]
        if op == "Slice":
            starts, ends = ins[1].tolist(), ins[2].tolist()
            axes = ins[3].tolist() if len(ins) > 3 and ins[3] is not None else list(range(len(starts)))
            steps = ins[4].tolist() if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
            index = [slice(None)] * x.dim()
            for s0, e0, ax, st in zip(starts, ends, axes, steps, strict=True):
                if st != 1:
                    raise NotImplementedError("Slice steps in the torch reference")
                n = x.shape[ax]
                index[ax] = slice(max(min(s0 + n if s0 < 0 else s0, n), 0), max(min(e0 + n if e0 < 0 else e0, n), 0))
            return [x[tuple(index)]]
        if op == "Concat":
            return [torch.cat(ins, dim=int(a("axis")))]
        if op == "Unsqueeze":
            axes = ins[1].tolist() if len(ins) > 1 else list(a("axes"))
            for ax in sorted(axes):
                x = x.unsqueeze(ax)
            return [x]
        if op == "Reshape":
            shape = [int(v) for v in ins[1].tolist()]
            shape = [x.shape[i] if v == 0 and not a("allowzero", 0) else v for i, v in enumerate(shape)]
            return [x.reshape(shape)]
        if op == "Transpose":
            return [x.permute(*a("perm"))]
        if op == "Softmax":
            return [torch.softmax(x, int(a("axis", -1)))]
        raise NotImplementedError(f"{op} in the torch reference")
