"""LSTM, GRU and RNN rules against their torch twins (float64), per-sample mode, and the layer metadata.

The VJP rule runs on forward values computed by torch (its replay must agree with them, or it refuses),
and its cotangents of X, W, R, B, initial_h and initial_c must equal torch autograd's. Weights are mapped
from torch's gate order (LSTM ``i f g o``, GRU ``r z n``) to ONNX's (``i o f c``, ``z r h``).
Finite-difference checks of the same rules on onnxruntime (sequence_lens, clip, peepholes, activations)
are in ``_vjp_cases_extra.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from onnxslice.opsets import REGISTRY  # noqa: E402
from onnxslice.opsets.capabilities.vjp import VjpContext  # noqa: E402

from onnxslice.errors import UnsupportedOpError  # noqa: E402
from onnxslice.model import Node, load  # noqa: E402

_ORDER = {"LSTM": [0, 3, 1, 2], "GRU": [1, 0, 2], "RNN": [0]}  # ONNX gate k = torch block _ORDER[k]


def _reorder(w: np.ndarray, op: str, h: int) -> np.ndarray:
    return np.concatenate([w[k * h : (k + 1) * h] for k in _ORDER[op]], axis=0)


def _twin(op: str, bidi: bool, layout: int, nonlin: str = "tanh", seed: int = 0) -> dict[str, Any]:
    """A torch net, its forward on random data, autograd cotangents and the equivalent ONNX node inputs."""
    torch.manual_seed(seed)
    t, b, i, h = 5, 3, 4, 3
    kw: dict[str, Any] = {"bidirectional": bidi, "batch_first": bool(layout)}
    if op == "RNN":
        kw["nonlinearity"] = nonlin
    net = getattr(torch.nn, op)(i, h, **kw).double()
    d = 2 if bidi else 1
    x = torch.randn(*((b, t, i) if layout else (t, b, i)), dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(d, b, h, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(d, b, h, dtype=torch.float64, requires_grad=True)
    if op == "LSTM":
        y, (yh, yc) = net(x, (h0, c0))
    else:
        y, yh = net(x, h0)
        yc = None
    gen = np.random.default_rng(seed)
    cy, cyh = gen.standard_normal(tuple(y.shape)), gen.standard_normal(tuple(yh.shape))
    loss = (y * torch.from_numpy(cy)).sum() + (yh * torch.from_numpy(cyh)).sum()
    cyc = None
    if yc is not None:
        cyc = gen.standard_normal(tuple(yc.shape))
        loss = loss + (yc * torch.from_numpy(cyc)).sum()
    params = [p for p in net.parameters()]
    grads = torch.autograd.grad(loss, [x, h0, c0, *params], allow_unused=True)
    named = dict(zip([n for n, _ in net.named_parameters()], grads[3:], strict=True))
    sfx = ["", "_reverse"][:d]

    def stack(kind: str, src: dict[str, Any]) -> np.ndarray:
        return np.stack([_reorder(np.asarray(src[f"{kind}_l0{s}"].detach()), op, h) for s in sfx])

    pv = dict(net.named_parameters())
    onnx_in = {
        "W": stack("weight_ih", pv),
        "R": stack("weight_hh", pv),
        "B": np.concatenate([stack("bias_ih", pv), stack("bias_hh", pv)], axis=1),
    }
    onnx_grad = {
        "W": stack("weight_ih", named),
        "R": stack("weight_hh", named),
        "B": np.concatenate([stack("bias_ih", named), stack("bias_hh", named)], axis=1),
    }

    def state(v: Any) -> np.ndarray:
        a = np.asarray(v.detach())
        return a.transpose(1, 0, 2) if layout else a

    def y_onnx(v: Any) -> np.ndarray:  # torch [T, B, D*H] (or [B, T, D*H]) -> ONNX [T, D, B, H] (or [B, T, D, H])
        a = np.asarray(v.detach() if hasattr(v, "detach") else v)
        if layout:
            return a.reshape(b, t, d, h)
        return a.reshape(t, b, d, h).transpose(0, 2, 1, 3)

    attrs: dict[str, Any] = {"hidden_size": h, "direction": "bidirectional" if bidi else "forward"}
    if layout:
        attrs["layout"] = 1
    if op == "GRU":
        attrs["linear_before_reset"] = 1
    if op == "RNN" and nonlin == "relu":
        attrs["activations"] = ["Relu"] * d
    ins = [np.asarray(x.detach()), onnx_in["W"], onnx_in["R"], onnx_in["B"], None, state(h0)]
    outs = [y_onnx(y), state(yh)]
    gouts = [y_onnx(cy), cyh.transpose(1, 0, 2) if layout else cyh]
    if op == "LSTM":
        ins.append(state(c0))
        outs.append(state(yc))
        gouts.append(cyc.transpose(1, 0, 2) if layout else cyc)
    node = Node(
        "rnn",
        op,
        "",
        tuple(f"in{k}" if v is not None else "" for k, v in enumerate(ins)),
        tuple(f"out{k}" for k in range(len(outs))),
        attrs,
        14,
    )
    want = {0: np.asarray(grads[0]), 1: onnx_grad["W"], 2: onnx_grad["R"], 3: onnx_grad["B"], 5: state(grads[1])}
    if op == "LSTM":
        want[6] = state(grads[2])
    return {"node": node, "ins": ins, "outs": outs, "gouts": gouts, "want": want}


def _rule(op: str) -> Any:
    return REGISTRY.lookup("vjp", op, "", 14)


TWINS = [
    ("LSTM", False, 0, "tanh"),
    ("LSTM", True, 0, "tanh"),
    ("LSTM", True, 1, "tanh"),
    ("GRU", False, 0, "tanh"),
    ("GRU", True, 1, "tanh"),
    ("RNN", True, 0, "tanh"),
    ("RNN", False, 1, "relu"),
]


@pytest.mark.parametrize(("op", "bidi", "layout", "nonlin"), TWINS, ids=lambda v: str(v))
def test_rnn_vjp_matches_torch_autograd(op: str, bidi: bool, layout: int, nonlin: str) -> None:
    tw = _twin(op, bidi, layout, nonlin)
    ins = tw["ins"]
    needs = [v is not None and k != 4 for k, v in enumerate(ins)]
    got = _rule(op)(VjpContext(tw["node"], ins, tw["outs"], tw["gouts"], needs))
    for k, want in tw["want"].items():
        assert got[k] is not None, k
        np.testing.assert_allclose(got[k], want, rtol=1e-9, atol=1e-10, err_msg=f"{op} input {k}")


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_rnn_vjp_per_sample_weights_are_the_per_sample_gradients(op: str) -> None:
    tw = _twin(op, True, 0)
    ins, node = tw["ins"], tw["node"]
    needs = [v is not None and k != 4 for k, v in enumerate(ins)]
    keep = [k in (1, 2, 3, 5) for k in range(len(ins))]
    got = _rule(op)(VjpContext(node, ins, tw["outs"], tw["gouts"], needs, keep))
    b = ins[0].shape[1]
    for s in range(b):
        one = [
            ins[0][:, s : s + 1],
            ins[1],
            ins[2],
            ins[3],
            None,
            ins[5][:, s : s + 1],
            *([ins[6][:, s : s + 1]] if op == "LSTM" else []),
        ]
        outs = [tw["outs"][0][:, :, s : s + 1], *[o[:, s : s + 1] for o in tw["outs"][1:]]]
        gouts = [tw["gouts"][0][:, :, s : s + 1], *[g[:, s : s + 1] for g in tw["gouts"][1:]]]
        ref = _rule(op)(VjpContext(node, one, outs, gouts, needs))
        for k in (1, 2, 3):
            np.testing.assert_allclose(got[k][s], ref[k], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(got[5][s][:, s], ref[5][:, 0], rtol=1e-9, atol=1e-12)
        assert not np.delete(got[5][s], s, axis=1).any()


def test_rnn_replay_mismatch_refuses() -> None:
    tw = _twin("LSTM", False, 0)
    outs = [tw["outs"][0] + 0.5, *tw["outs"][1:]]
    with pytest.raises(UnsupportedOpError, match=r"at node 'rnn'.*replaying"):
        _rule("LSTM")(VjpContext(tw["node"], tw["ins"], outs, tw["gouts"], [True] * len(tw["ins"])))


def test_rnn_input_forget_refused_with_node_name() -> None:
    tw = _twin("LSTM", False, 0)
    n = tw["node"]
    node = Node(n.name, n.op_type, n.domain, n.inputs, n.outputs, {**n.attrs, "input_forget": 1}, 14)
    with pytest.raises(UnsupportedOpError, match=r"at node 'rnn'.*input_forget"):
        _rule("LSTM")(VjpContext(node, tw["ins"], tw["outs"], tw["gouts"], [True] * len(tw["ins"])))


def test_rnn_nodes_are_layers_with_gate_rows_as_channels() -> None:
    from onnx import helper

    from onnxslice.testing import make_model

    h, i = 5, 4
    rng = np.random.default_rng(0)
    proto = make_model(
        [helper.make_node("LSTM", ["x", "W", "R", "B"], ["y", "yh"], hidden_size=h, direction="bidirectional")],
        {"x": (np.float32, [6, "N", i])},
        {"y": (np.float32, [6, 2, "N", h]), "yh": (np.float32, [2, "N", h])},
        {
            "W": rng.standard_normal((2, 4 * h, i)).astype(np.float32),
            "R": rng.standard_normal((2, 4 * h, h)).astype(np.float32),
            "B": rng.standard_normal((2, 8 * h)).astype(np.float32),
        },
    )
    (layer,) = load(proto).layers
    assert (layer.op_type, layer.weight, layer.bias, layer.out_axis, layer.out_channels) == ("LSTM", "W", "B", 1, 4 * h)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_rnn_exported_by_torch_gradients_match_autograd(kind: str, tmp_path) -> None:
    """torch.onnx.export of a batch-first bidirectional recurrent net: the engine's input and weight gradients
    equal torch autograd's (weights map through the exporter's own gate reordering)."""
    from onnxslice.grad import GradientEngine

    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = getattr(torch.nn, kind)(4, 5, batch_first=True, bidirectional=True)
            self.fc = torch.nn.Linear(10, 3)

        def forward(self, x: Any) -> Any:
            y = self.rnn(x)[0]
            return self.fc(y[:, -1])

    net = Net().eval()
    x = torch.randn(3, 6, 4)
    path = tmp_path / "rnn.onnx"
    torch.onnx.export(
        net,
        (x,),
        str(path),
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "N"}, "y": {0: "N"}},
        opset_version=14,
        dynamo=False,
    )
    model = load(str(path))
    assert [layer.op_type for layer in model.layers].count(kind) == 1
    cot = np.random.default_rng(0).standard_normal((3, 3)).astype(np.float32)
    eng = GradientEngine(model, "cotangent", weights="all", exact=True, device="cpu")
    g = eng(x.numpy(), cotangent=cot)
    xt = x.clone().requires_grad_(True)
    (net(xt) * torch.from_numpy(cot)).sum().backward()
    np.testing.assert_allclose(g.inputs["x"], xt.grad.numpy(), rtol=2e-4, atol=2e-5)
    fc_w = next(k for k in g.weights if g.weights[k].shape == (10, 3) or g.weights[k].shape == (3, 10))
    got = g.weights[fc_w] if g.weights[fc_w].shape == (3, 10) else g.weights[fc_w].T
    np.testing.assert_allclose(got, net.fc.weight.grad.numpy(), rtol=2e-4, atol=2e-5)
    rnn_layer = next(layer for layer in model.layers if layer.op_type == kind)
    w = g.weights[rnn_layer.weight]
    ref = np.stack(
        [
            _reorder(net.rnn.weight_ih_l0.grad.numpy(), kind, 5),
            _reorder(net.rnn.weight_ih_l0_reverse.grad.numpy(), kind, 5),
        ]
    )
    np.testing.assert_allclose(w, ref, rtol=2e-4, atol=2e-5)
