"""Finite-difference VJPs through onnxruntime for nodes that have no VJP rule.

The node is run alone, as a one-node model, with each element of each differentiable input moved
by ``+h`` and ``-h``: two runs per element, so the cost grows with the input size. The engine warns
once per node with that cost; ``exact=True`` refuses instead. Nothing here touches the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper

from onnxslice.errors import UnsupportedOpError
from onnxslice.opsets.capabilities.vjp import Grads, VjpContext, VjpRule
from onnxslice.record import make_session

if TYPE_CHECKING:
    import onnxruntime as ort

    from onnxslice.model import Model, Node

__all__ = ["MAX_FD_RUNS", "finite_difference_rule", "input_name", "one_node_model"]

#: Refuse a finite-difference VJP that would take more onnxruntime runs than this per call.
MAX_FD_RUNS = 200_000


def one_node_model(
    model: Model, node: Node, in_types: Sequence[np.dtype | None], out_types: Sequence[np.dtype | None]
) -> onnx.ModelProto:
    """A model holding ``node`` alone, every (present) input a graph input, every output a graph output.

    Inputs are renamed by position (:func:`input_name`), so a value that feeds two inputs of the node
    (an LSTM's initial h and c) is two graph inputs, perturbed separately.
    """
    proto = model.skeleton.graph.node
    src = onnx.NodeProto()
    src.CopyFrom(next(n for n in proto if n.name == node.name))
    for k, name in enumerate(src.input):
        if name:
            src.input[k] = input_name(k)
    ins = [
        helper.make_tensor_value_info(input_name(k), helper.np_dtype_to_tensor_dtype(dt), None)
        for k, (name, dt) in enumerate(zip(node.inputs, in_types, strict=True))
        if name and dt is not None
    ]
    outs = [
        helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(dt), None)
        for name, dt in zip(node.outputs, out_types, strict=True)
        if name and dt is not None
    ]
    graph = helper.make_graph([src], "onnxslice/fd", ins, outs)
    opsets = [helper.make_opsetid(d, v) for d, v in model.opsets.items()]
    return helper.make_model(graph, opset_imports=opsets, ir_version=min(model.skeleton.ir_version, 10))


def input_name(k: int) -> str:
    """The graph input name of the node's input ``k`` in :func:`one_node_model`."""
    return f"onnxslice_fd_in{k}"


class _FiniteDifference:
    """The VJP of one node by central differences of ``<dy, node(x)>``."""

    def __init__(self, model: Model, node: Node) -> None:
        self.model = model
        self.node = node
        self._sessions: dict[tuple[str, ...], ort.InferenceSession] = {}

    def _session(self, ctx: VjpContext) -> ort.InferenceSession:
        in_types = [v.dtype if v is not None else None for v in ctx.ins]
        out_types = [v.dtype if v is not None else None for v in ctx.outs]
        key = tuple(str(t) for t in [*in_types, *out_types])
        if key not in self._sessions:
            proto = one_node_model(self.model, self.node, in_types, out_types)
            self._sessions[key] = make_session(proto, "cpu", spin=False)  # run amid the other rules
        return self._sessions[key]

    def __call__(self, ctx: VjpContext) -> Grads:
        sess = self._session(ctx)
        names = [o.name for o in sess.get_outputs()]
        feed = {input_name(k): v for k, (n, v) in enumerate(zip(self.node.inputs, ctx.ins, strict=True))
                if n and v is not None}
        cot = {o: ctx.g(k).astype(np.float64) for k, o in enumerate(self.node.outputs) if o and o in names}
        todo = [
            i for i, v in enumerate(ctx.ins) if ctx.need(i) and v is not None and np.issubdtype(v.dtype, np.floating)
        ]
        runs = 2 * sum(int(ctx.x(i).size) for i in todo)
        if runs > MAX_FD_RUNS:
            n = self.node
            raise UnsupportedOpError.for_node(
                n,
                "vjp",
                f"a finite-difference VJP would take {runs:,} onnxruntime runs; add a VJP rule for {n.op_type}",
            )

        def phi(f: dict[str, np.ndarray]) -> float:
            out = sess.run(list(cot), f)
            return float(sum((c * r.astype(np.float64)).sum() for c, r in zip(cot.values(), out, strict=True)))

        result: Grads = [None] * len(ctx.ins)
        for i in todo:
            name = input_name(i)
            x = ctx.x(i)
            flat = x.astype(np.float64).reshape(-1)
            base = 1e-6 if x.dtype == np.float64 else 5e-3
            grad = np.zeros_like(flat)
            for j in range(flat.size):
                h = base * max(1.0, abs(flat[j]))
                plus, minus = flat.copy(), flat.copy()
                plus[j] += h
                minus[j] -= h
                fp = phi({**feed, name: plus.reshape(x.shape).astype(x.dtype)})
                fm = phi({**feed, name: minus.reshape(x.shape).astype(x.dtype)})
                grad[j] = (fp - fm) / (2 * h)
            result[i] = grad.reshape(x.shape).astype(x.dtype)
        return result


def finite_difference_rule(model: Model, node: Node) -> VjpRule:
    """A VJP rule for ``node`` by central finite differences through onnxruntime (slow; see module doc)."""
    fd = _FiniteDifference(model, node)
    return VjpRule(fd, False, f"finite_difference[{node.op_type}]")
