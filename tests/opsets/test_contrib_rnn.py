"""LSTM/GRU/RNN ``contributions`` against a naive per-neuron reference written from docs/rules.md.

The reference builds, for every sample, the unrolled cell as an explicit list of scalar neurons (hidden
units, cell states, gate pre-activations, GRU products), each with its value, its inputs, their local
weights and synapses, in topological order; deltas are the profiled ones for ``X``, ``Y`` and
``initial_h``, first-order (the sum of the terms) for the rest. It then runs NNSlicer's rule neuron by
neuron with Python loops (theta by sorting each neuron's terms) and must give the vectorised rule's
integer tables.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from onnx import helper
from onnxslice.opsets.ops.rnn_cell import Cell, decode, replay

from onnxslice.errors import UnsupportedOpError
from onnxslice.model import load
from onnxslice.profile import Profile
from onnxslice.record import Recorder
from onnxslice.slicing import BackwardOptions, backward, deltas
from onnxslice.testing import make_model

THETA = 0.3
H, I, T, B = 3, 4, 4, 2
Key = tuple[Any, ...]


def _model(op: str, attrs: dict[str, Any], bidi: bool, lens: bool, h0: bool, peep: bool, rng: np.random.Generator):
    d = 2 if bidi else 1
    t = d if h0 else T  # the recorder wants every input to share its leading axis
    g = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    inits = {
        "W": rng.standard_normal((d, g * H, I)).astype(np.float32),
        "R": rng.standard_normal((d, g * H, H)).astype(np.float32),
        "B": (0.3 * rng.standard_normal((d, 2 * g * H))).astype(np.float32),
    }
    names = ["x", "W", "R", "B", "", ""]
    inputs: dict[str, Any] = {"x": (np.float32, [t, B, I])}
    if lens:
        inits["lens"] = np.array([t, t - 1], np.int32)[:B]
        names[4] = "lens"
    if h0:
        names[5] = "h0"
        inputs["h0"] = (np.float32, [d, B, H])
    if op == "LSTM":
        names += ["c0" if h0 else ""]
        if h0:
            inputs["c0"] = (np.float32, [d, B, H])
        if peep:
            inits["P"] = rng.standard_normal((d, 3 * H)).astype(np.float32)
            names.append("P")
    while names and names[-1] == "":
        names.pop()
    outs = {"y": (np.float32, [t, d, B, H]), "yh": (np.float32, [d, B, H])}
    if op == "LSTM":
        outs["yc"] = (np.float32, [d, B, H])
    node = helper.make_node(
        op, names, list(outs), hidden_size=H, direction="bidirectional" if bidi else "forward", **attrs
    )
    return load(make_model([node], inputs, outs, inits)), inputs


class _Unrolled:
    """The scalar neurons of one sample and direction, in topological order."""

    def __init__(self) -> None:
        self.order: list[Key] = []
        self.val: dict[Key, float] = {}
        self.dlt: dict[Key, float] = {}
        self.links: dict[Key, list[tuple[Key, float, tuple[str, tuple[int, ...]] | None]]] = {}
        self.theta_on: dict[Key, bool] = {}

    def add(self, key: Key, value: float, ins_: list, theta_: bool = True, delta: float | None = None) -> None:
        """A neuron; its delta is the sum of its terms unless given (profiled)."""
        self.order.append(key)
        self.val[key] = value
        self.links[key] = ins_
        self.theta_on[key] = theta_
        self.dlt[key] = delta if delta is not None else sum(wt * self.dlt[src] for src, wt, _ in ins_)


def _wsum(w: np.ndarray, dd: int, t: int, gate: int, j: int, rec: list[Key], rec_w: list[float], extra: list) -> list:
    """The links of gate pre-activation ``z_gate[j]``: inputs (W), recurrent sources (R), extras."""
    row = gate * H + j
    out = [(("x", t, i), float(w[dd, row, i]), ("W", (dd, row, i))) for i in range(I)]
    out += [(rec[k], float(rec_w[k]), ("R", (dd, row, k))) for k in range(H)]
    return out + extra


def _naive(model, values, d_all, seeds, theta: float = THETA) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    node = model.nodes[0]
    spec = decode(node)
    ins = [values.get(n) if n in values else (model.initializer(n) if n else None) for n in node.inputs]
    cell = Cell.from_inputs(spec, ins)
    w, r = cell.w, cell.r
    p = cell.p
    runs = [replay(spec, cell, dd) for dd in range(len(spec.directions))]
    x_tab = np.zeros(cell.x.shape, np.int64)
    h0_tab = np.zeros(cell.h0.shape, np.int64)
    c0_tab = np.zeros(cell.h0.shape, np.int64)
    syn = {"W": np.zeros(w.shape, np.int64), "R": np.zeros(r.shape, np.int64)}
    if p is not None:
        syn["P"] = np.zeros(p.shape, np.int64)
    dx = d_all["x"].astype(np.float64)
    dy = d_all["y"].astype(np.float64)
    dh0 = d_all["h0"].astype(np.float64) if "h0" in d_all else np.zeros(cell.h0.shape)
    dc0 = d_all["c0"].astype(np.float64) if "c0" in d_all else np.zeros(cell.h0.shape)
    for b in range(B):
        for dd, steps in enumerate(runs):
            acts = spec.directions[dd].acts
            gr = _Unrolled()
            order, val, dlt, links, theta_on, add = gr.order, gr.val, gr.dlt, gr.links, gr.theta_on, gr.add
            prev_h: list[Key] = [("h0", k) for k in range(H)]
            prev_c: list[Key] = [("c0", k) for k in range(H)]
            for k in range(H):
                dlt[("h0", k)], dlt[("c0", k)] = dh0[dd, b, k], dc0[dd, b, k]
            last_h, last_c = prev_h, prev_c

            for s, st in enumerate(steps):
                if not st.valid[b]:
                    continue
                t = int(st.t[b])
                for i in range(I):
                    dlt[("x", t, i)] = dx[t, b, i]
                z, a, live = st.z[b], st.a[b], st.live[b]
                cur_h = [("h", s, j) for j in range(H)]
                if spec.op == "RNN":
                    for j in range(H):
                        add(("z", s, j), z[0, j], _wsum(w, dd, t, 0, j, prev_h, list(r[dd, j]), []))
                        fd = float(acts[0].grad(z[0, j], a[0, j]) * live[0, j])
                        add(cur_h[j], st.h[b, j], [(("z", s, j), fd, None)], False, dy[t, dd, b, j])
                elif spec.op == "GRU":
                    f_act, g_act = acts
                    fz = f_act.grad(z[0], a[0]) * live[0]
                    fr = f_act.grad(z[1], a[1]) * live[1]
                    gh = g_act.grad(z[2], a[2]) * live[2]
                    for j in range(H):
                        add(("zz", s, j), z[0, j], _wsum(w, dd, t, 0, j, prev_h, list(r[dd, j]), []))
                        add(("zr", s, j), z[1, j], _wsum(w, dd, t, 1, j, prev_h, list(r[dd, H + j]), []))
                    if spec.linear_before_reset:
                        for j in range(H):
                            rw = [float(a[1, j] * r[dd, 2 * H + j, k]) for k in range(H)]
                            extra = [(("zr", s, j), float(st.extra[b, j] * fr[j]), None)]
                            add(("zh", s, j), z[2, j], _wsum(w, dd, t, 2, j, prev_h, rw, extra))
                    else:
                        for m in range(H):
                            add(
                                ("rh", s, m),
                                st.extra[b, m],
                                [
                                    (("zr", s, m), float(st.h_prev[b, m] * fr[m]), None),
                                    (prev_h[m], float(a[1, m]), None),
                                ],
                            )
                        for j in range(H):
                            add(
                                ("zh", s, j),
                                z[2, j],
                                _wsum(w, dd, t, 2, j, [("rh", s, m) for m in range(H)], list(r[dd, 2 * H + j]), []),
                            )
                    for j in range(H):
                        ins_ = [
                            (("zz", s, j), float((st.h_prev[b, j] - a[2, j]) * fz[j]), None),
                            (("zh", s, j), float((1 - a[0, j]) * gh[j]), None),
                            (prev_h[j], float(a[0, j]), None),
                        ]
                        add(cur_h[j], st.h[b, j], ins_, True, dy[t, dd, b, j])
                else:
                    f_act, g_act, h_act = acts
                    fg = [
                        f_act.grad(z[k], a[k]) * live[k] if k < 3 else g_act.grad(z[k], a[k]) * live[k]
                        for k in range(4)
                    ]
                    pi, po, pf = p[dd].reshape(3, H) if p is not None else np.zeros((3, H))
                    for gate, peep in ((0, pi), (2, pf)):
                        for j in range(H):
                            extra = (
                                [(prev_c[j], float(peep[j]), ("P", (dd, (0 if gate == 0 else 2) * H + j)))]
                                if p is not None
                                else []
                            )
                            add(
                                ("z", gate, s, j),
                                z[gate, j],
                                _wsum(w, dd, t, gate, j, prev_h, list(r[dd, gate * H + j]), extra),
                            )
                    for j in range(H):
                        add(("z", 3, s, j), z[3, j], _wsum(w, dd, t, 3, j, prev_h, list(r[dd, 3 * H + j]), []))
                    cur_c = [("c", s, j) for j in range(H)]
                    for j in range(H):
                        ins_ = [
                            (("z", 2, s, j), float(st.c_prev[b, j] * fg[2][j]), None),
                            (prev_c[j], float(a[2, j]), None),
                            (("z", 0, s, j), float(a[3, j] * fg[0][j]), None),
                            (("z", 3, s, j), float(a[0, j] * fg[3][j]), None),
                        ]
                        add(cur_c[j], st.c[b, j], ins_)
                    for j in range(H):
                        extra = [(cur_c[j], float(po[j]), ("P", (dd, H + j)))] if p is not None else []
                        add(("z", 1, s, j), z[1, j], _wsum(w, dd, t, 1, j, prev_h, list(r[dd, H + j]), extra))
                    for j in range(H):
                        hc = float(st.hc[b, j])
                        ins_ = [
                            (("z", 1, s, j), float(hc * fg[1][j]), None),
                            (cur_c[j], float(a[1, j] * h_act.grad(st.c[b, j], hc)), None),
                        ]
                        add(cur_h[j], st.h[b, j], ins_, True, dy[t, dd, b, j])
                    prev_c = cur_c
                    last_c = cur_c
                prev_h = cur_h
                last_h = cur_h
            # seeds
            contrib: dict[Key, int] = {}
            for s, st in enumerate(steps):
                if st.valid[b]:
                    t = int(st.t[b])
                    for j in range(H):
                        contrib[("h", s, j)] = contrib.get(("h", s, j), 0) + int(seeds["y"][t, dd, b, j])
            for j in range(H):
                contrib[last_h[j]] = contrib.get(last_h[j], 0) + int(seeds["yh"][dd, b, j])
                if "yc" in seeds:
                    contrib[last_c[j]] = contrib.get(last_c[j], 0) + int(seeds["yc"][dd, b, j])
            for key in reversed(order):
                c = contrib.get(key, 0)
                if c == 0:
                    continue
                terms = [wt * dlt[src] for src, wt, _ in links[key]]
                keep = [True] * len(terms)
                if theta_on[key] and abs(val[key]) >= 1e-12:
                    acc = 0.0
                    for q in sorted(range(len(terms)), key=lambda q: abs(terms[q])):
                        acc += terms[q]
                        if abs(acc) < theta * abs(val[key]):
                            keep[q] = False
                        else:
                            break
                for (src, _, sy), tv, k in zip(links[key], terms, keep, strict=True):
                    if not k:
                        continue
                    sg = int(np.sign(c) * np.sign(dlt[key]) * np.sign(np.float32(tv)))
                    if sg == 0:
                        continue
                    contrib[src] = contrib.get(src, 0) + sg
                    if sy is not None:
                        syn[sy[0]][sy[1]] += sg
            for key, c in contrib.items():
                if key[0] == "x":
                    x_tab[key[1], b, key[2]] += c
                elif key[0] == "h0":
                    h0_tab[dd, b, key[1]] += c
                elif key[0] == "c0":
                    c0_tab[dd, b, key[1]] += c
    return {"x": x_tab, "h0": h0_tab, "c0": c0_tab}, syn


CASES = [
    ("RNN", {}, False, False, False, False),
    ("RNN", {"activations": ["Relu", "Tanh"]}, True, True, True, False),
    ("GRU", {}, True, False, True, False),
    ("GRU", {"linear_before_reset": 1}, True, True, False, False),
    ("LSTM", {}, False, False, False, False),
    ("LSTM", {"clip": 1.5}, True, True, True, True),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{'-'.join(str(v) for v in c[1:])}")
def test_rnn_contrib_matches_naive_reference(case) -> None:
    op, attrs, bidi, lens, h0, peep = case
    rng = np.random.default_rng(7)
    model, inputs = _model(op, attrs, bidi, lens, h0, peep, rng)
    feed = {
        k: rng.standard_normal([B if s == "N" else s for s in shape]).astype(np.float32)
        for k, (_, shape) in inputs.items()
    }
    values = Recorder(model, "all", "cpu").run(feed)
    values.update(feed)
    prof = Profile(
        {k: (0.5 * rng.standard_normal(v.shape[1:])).astype(np.float32) for k, v in values.items()},
        1,
        model.fingerprint,
    )
    d_all = deltas(prof, values)
    outs = model.nodes[0].outputs
    seeds = {o: rng.integers(-2, 3, size=values[o].shape).astype(np.int32) for o in outs}
    neurons, synapses = backward(model, values, d_all, seeds, BackwardOptions(theta=THETA))
    ref_in, ref_syn = _naive(model, values, d_all, seeds)
    assert np.abs(ref_in["x"]).sum() > 0, "degenerate case: nothing reached the input"
    np.testing.assert_array_equal(neurons["x"], ref_in["x"].sum(axis=0))
    if h0:
        np.testing.assert_array_equal(neurons["h0"], ref_in["h0"].sum(axis=0))
        if op == "LSTM":
            np.testing.assert_array_equal(neurons["c0"], ref_in["c0"].sum(axis=0))
    for k, v in ref_syn.items():
        np.testing.assert_array_equal(synapses[k], v, err_msg=k)


def test_rnn_contrib_channel_granularity_refused() -> None:
    rng = np.random.default_rng(0)
    model, _ = _model("GRU", {}, False, False, False, False, rng)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    values = Recorder(model, "all", "cpu").run({"x": x})
    values["x"] = x
    prof = Profile({k: np.zeros(v.shape[1:], np.float32) for k, v in values.items()}, 1, model.fingerprint)
    seeds = {"y": np.ones(values["y"].shape, np.int32)}
    with pytest.raises(UnsupportedOpError, match="granularity='channel' is undefined for GRU"):
        backward(model, values, deltas(prof, values), seeds, BackwardOptions(granularity="channel"))
