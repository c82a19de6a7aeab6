"""LSTM, GRU and RNN: every capability of the recurrent family (the cell itself is :mod:`.rnn_cell`).

``contributions``: NNSlicer contributions through LSTM, GRU and RNN: the cell unrolled into weighted sums and local
links.

Neurons. A neuron of the node is a hidden unit at one time step, ``h_t[d, b, j]`` (an element of ``Y``;
``Y_h``/``Y_c`` are the last step's ``h``/``c``). Inside a step the rule also keeps CONTRIB for the cell's
intermediate values, each treated with the rule of the graph op it stands for:

- **gate pre-activations** ``z_g[j] = W_g[j]·x_t + R_g[j]·h_{t-1} (+ P_g[j] c) + b``: weighted sums; their
  terms ``W_g[j, i] dx_i``, ``R_g[j, k] dh_{t-1, k}`` (and the peephole's ``P_g[j] dc``) go through theta
  (denominator ``|z_g[j]|``, or ``|dz_g[j]|`` with ``theta_denominator="delta"``); ``W``, ``R`` and ``P`` are
  synapses. The gate's activation is folded into the link that reads it (its derivative is the local
  weight, as for an elementwise op).
- **the state update** (``h = o * h(c)``; ``c = f c_{t-1} + i g``; GRU ``h = (1 - z) n + z h_{t-1}``; GRU
  ``r * (...)`` products): a sum of products, like the binary ``Add``/``Mul`` rules: each input's term is
  its local derivative times its delta (the first-order expansion around the sample), and theta applies
  with the updated value as denominator. A plain RNN's ``h = f(z)`` is elementwise (no theta).

Deltas. ``dx`` and ``dh`` come from the profile (``X``, ``Y`` and an activation ``initial_h``); the delta of
every intermediate (gates, ``c``, products, and ``h`` when ``Y`` is not recorded) is its first-order delta,
the sum of its terms, propagated forward through the steps (a constant ``initial_h``/``initial_c`` has
delta 0). Elements ``h_t`` past ``sequence_lens`` hold no neuron: their state carries CONTRIB through.

Refused: ``granularity="channel"`` (a recurrent state has no channel axis), LSTM ``input_forget=1``.

``prune``: ``prune`` rule of LSTM, GRU and RNN: a sink for the features of ``X``; its own hidden units are left
alone.

Channels that arrive on the feature axis of ``X`` (the last axis, in either ``layout``) are input columns of
``W [D, G*H, I]``: they are cut from its axis 2, and the layer before the recurrent one can be pruned.

The recurrent layer itself starts no group: a hidden unit feeds back into every gate of the next step
through ``R``, and its removal would have to shrink ``W``, ``R``, ``B``, ``P``, ``initial_h``/``initial_c``,
the ``hidden_size`` attribute and every consumer of ``Y``, ``Y_h`` and ``Y_c`` together (and the layout of
``Y [T, D, B, H]`` interleaves directions with the batch). onnxslice leaves these layers whole and says so
in the plan.

``vjp``: VJPs of LSTM, GRU and RNN: backpropagation through time over a float64 replay of the recurrence.

The node is replayed in numpy (:mod:`.rnn_cell`) on its recorded inputs, the replay is
checked against the recorded outputs (a mismatch refuses rather than returning a wrong gradient), and
the cotangents of ``Y``, ``Y_h`` and ``Y_c`` run backwards through every step of every direction. Every
differentiable input gets its cotangent: ``X``, ``W``, ``R``, ``B``, ``initial_h``, ``initial_c`` and the
LSTM peepholes ``P``; ``sequence_lens`` carries none. Forward, reverse and bidirectional directions,
``sequence_lens``, ``layout`` 0 and 1, ``clip`` (no gradient where a gate pre-activation is clipped),
GRU ``linear_before_reset`` 0 and 1 and every activation of the spec (Relu, Tanh, Sigmoid, Affine,
LeakyRelu, ThresholdedRelu, ScaledTanh, HardSigmoid, Elu, Softsign, Softplus) are handled.
LSTM ``input_forget=1`` is refused.

Per-sample mode: weights' cotangents keep the batch axis of ``X`` (axis 1, or 0 with ``layout=1``) by
accumulating ``dz ⊗ x`` per batch entry; a batch-independent ``initial_h``/``initial_c`` gets
``[N, *shape]`` with sample ``n``'s cotangent in its own row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from onnxslice.errors import UnsupportedOpError

from ..capabilities.contrib import ContribContext, ContribResult, sign_terms
from ..capabilities.info import OpInfo, register_info
from ..capabilities.prune import Context, Effect, Port, Ref, blocked
from ..capabilities.vjp import Grads, VjpContext, vjp
from ..coverage import computed, refuses
from ..geometry import Attr
from ..ops.rnn_cell import Cell, Spec, Step, check_replay, decode, from_layout, replay, to_layout
from ..registry import REGISTRY

if TYPE_CHECKING:
    from onnxslice.model import Node


# -- info: static metadata ---------------------------------------------------------------------------


def recurrent_out_axis(attr: Attr, rank: int, weight_input: int) -> int:
    """``W [directions, gates * hidden, input]``: the gates' neurons are its rows, axis 1."""
    return 1


register_info(
    "LSTM GRU RNN",
    OpInfo(
        "recurrent",
        layer_weights=(1,),
        bias_input=3,
        param_inputs=(2, 7),
        non_differentiable=(4,),
        out_axis=recurrent_out_axis,
    ),
    since=7,
)

# -- vjp: gradients ----------------------------------------------------------------------------------


class _Acc:
    """A weight cotangent ``[D, ...]`` summed over the batch, or ``[B, D, ...]`` per batch entry."""

    def __init__(self, shape: tuple[int, ...], batch: int, keep: bool) -> None:
        self.keep = keep
        self.v = np.zeros(((batch,) if keep else ()) + shape)

    def outer(self, d: int, rows: slice, dz: np.ndarray, x: np.ndarray) -> None:
        """Add ``dz^T x`` (per batch entry when kept) to rows ``rows`` of direction ``d``."""
        if self.keep:
            self.v[:, d, rows] += dz[:, :, None] * x[:, None, :]
        else:
            self.v[d, rows] += dz.T @ x

    def vec(self, d: int, rows: slice, dz: np.ndarray) -> None:
        """Add ``sum_b dz`` (per batch entry when kept) to entries ``rows`` of direction ``d``."""
        if self.keep:
            self.v[:, d, rows] += dz
        else:
            self.v[d, rows] += dz.sum(axis=0)


def _lstm_back(
    spec: Spec, cell: Cell, d: int, st: Step, dh: np.ndarray, dc: np.ndarray, acc: dict[str, _Acc]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    h = cell.r.shape[2]
    f_act, g_act, h_act = spec.directions[d].acts
    i, o, f, cc = (st.a[:, k] for k in range(4))
    zi, zo, zf, zc = (st.z[:, k] for k in range(4))
    assert st.hc is not None
    do = dh * st.hc
    dct = dc + dh * o * h_act.grad(st.c, st.hc)
    dzo = do * f_act.grad(zo, o) * st.live[:, 1]
    if cell.p is not None:
        pi, po, pf = cell.p[d].reshape(3, h)
        dct = dct + dzo * po
    dzi = dct * cc * f_act.grad(zi, i) * st.live[:, 0]
    dzf = dct * st.c_prev * f_act.grad(zf, f) * st.live[:, 2]
    dzc = dct * i * g_act.grad(zc, cc) * st.live[:, 3]
    dc_prev = dct * f
    if cell.p is not None:
        dc_prev = dc_prev + dzi * pi + dzf * pf
        if "p" in acc:
            for k, (gz, s) in enumerate(((dzi, st.c_prev), (dzo, st.c), (dzf, st.c_prev))):
                acc["p"].vec(d, slice(k * h, (k + 1) * h), gz * s)
    dz = np.stack([dzi, dzo, dzf, dzc], axis=1).reshape(dh.shape[0], 4 * h)
    _weights(acc, d, slice(0, 4 * h), dz, dz, st.x, st.h_prev)
    return dz @ cell.w[d], dz @ cell.r[d], dc_prev


def _gru_back(
    spec: Spec, cell: Cell, d: int, st: Step, dh: np.ndarray, acc: dict[str, _Acc]
) -> tuple[np.ndarray, np.ndarray]:
    h = cell.r.shape[2]
    f_act, g_act = spec.directions[d].acts
    zg, rg, n = st.a[:, 0], st.a[:, 1], st.a[:, 2]
    r3 = cell.r[d].reshape(3, h, h)
    dzt = dh * (st.h_prev - n)
    dn = dh * (1.0 - zg)
    dh_prev = dh * zg
    dzh = dn * g_act.grad(st.z[:, 2], n) * st.live[:, 2]
    assert st.extra is not None
    if spec.linear_before_reset:
        dhr = dzh * rg
        dr = dzh * st.extra
        dh_prev = dh_prev + dhr @ r3[2]
        r_h, rb_h, r_src = dhr, dhr, st.h_prev
    else:
        drh = dzh @ r3[2]
        dr = drh * st.h_prev
        dh_prev = dh_prev + drh * rg
        r_h, rb_h, r_src = dzh, dzh, st.extra
    dzr = dr * f_act.grad(st.z[:, 1], rg) * st.live[:, 1]
    dzz = dzt * f_act.grad(st.z[:, 0], zg) * st.live[:, 0]
    dh_prev = dh_prev + dzz @ r3[0] + dzr @ r3[1]
    dzx = np.concatenate([dzz, dzr, dzh], axis=1)
    dzr2 = np.concatenate([dzz, dzr], axis=1)
    _weights(acc, d, slice(0, 2 * h), None, dzr2, None, st.h_prev)
    if "r" in acc:
        acc["r"].outer(d, slice(2 * h, 3 * h), r_h, r_src)
    if "rb" in acc:
        acc["rb"].vec(d, slice(2 * h, 3 * h), rb_h)
    _weights(acc, d, slice(0, 3 * h), dzx, None, st.x, None)
    return dzx @ cell.w[d], dh_prev


def _rnn_back(
    spec: Spec, cell: Cell, d: int, st: Step, dh: np.ndarray, acc: dict[str, _Acc]
) -> tuple[np.ndarray, np.ndarray]:
    (f_act,) = spec.directions[d].acts
    dz = dh * f_act.grad(st.z[:, 0], st.a[:, 0]) * st.live[:, 0]
    _weights(acc, d, slice(0, dz.shape[1]), dz, dz, st.x, st.h_prev)
    return dz @ cell.w[d], dz @ cell.r[d]


def _weights(
    acc: dict[str, _Acc],
    d: int,
    rows: slice,
    dzx: np.ndarray | None,
    dzr: np.ndarray | None,
    x: np.ndarray | None,
    h_prev: np.ndarray | None,
) -> None:
    """Accumulate W/Wb from the input-side gate cotangents and R/Rb from the recurrent-side ones."""
    if dzx is not None and x is not None:
        if "w" in acc:
            acc["w"].outer(d, rows, dzx, x)
        if "wb" in acc:
            acc["wb"].vec(d, rows, dzx)
    if dzr is not None and h_prev is not None:
        if "r" in acc:
            acc["r"].outer(d, rows, dzr, h_prev)
        if "rb" in acc:
            acc["rb"].vec(d, rows, dzr)


def _per_sample_state(g: np.ndarray, layout: int) -> np.ndarray:
    """``[N, *state]`` from a state cotangent ``[D, B, H]`` (sample ``n`` in row ``n``), in the node's layout."""
    d, b, h = g.shape
    out = np.zeros((b, d, b, h))
    out[np.arange(b), :, np.arange(b)] = g.transpose(1, 0, 2)
    return out.transpose(0, 2, 1, 3) if layout else out


@vjp(["LSTM", "GRU", "RNN"], since=7, per_sample=True)
def recurrent(ctx: VjpContext) -> Grads:
    """LSTM, GRU, RNN: backpropagation through time (see the module docstring)."""
    node = ctx.node
    out: Grads = [None] * len(ctx.ins)
    if not any(ctx.needs):
        return out
    spec = decode(node)
    cell = Cell.from_inputs(spec, ctx.ins)
    ndir = len(spec.directions)
    runs = [replay(spec, cell, d) for d in range(ndir)]
    check_replay(node, spec, cell, runs, ctx.outs)
    t_len, bsz, _ = cell.x.shape
    h = cell.r.shape[2]
    gh = cell.w.shape[1]

    def grad_of(k: int, state: bool) -> np.ndarray:
        g = ctx.out_grads[k] if k < len(ctx.out_grads) else None
        if g is None:
            return np.zeros((ndir, bsz, h) if state else (t_len, ndir, bsz, h))
        return from_layout(spec, np.asarray(g, np.float64), state)

    gy, gyh = grad_of(0, False), grad_of(1, True)
    gyc = grad_of(2, True) if spec.op == "LSTM" else np.zeros((ndir, bsz, h))
    acc: dict[str, _Acc] = {}
    if ctx.need(1):
        acc["w"] = _Acc(cell.w.shape, bsz, ctx.keep(1))
    if ctx.need(2):
        acc["r"] = _Acc(cell.r.shape, bsz, ctx.keep(2))
    if ctx.has(3) and ctx.need(3):
        acc["wb"] = _Acc((ndir, gh), bsz, ctx.keep(3))
        acc["rb"] = _Acc((ndir, gh), bsz, ctx.keep(3))
    if spec.op == "LSTM" and ctx.has(7) and ctx.need(7):
        acc["p"] = _Acc((ndir, 3 * h), bsz, ctx.keep(7))
    dx = np.zeros_like(cell.x)
    dh0 = np.zeros((ndir, bsz, h))
    dc0 = np.zeros((ndir, bsz, h))
    brange = np.arange(bsz)
    for d, steps in enumerate(runs):
        dh, dc = gyh[d].copy(), gyc[d].copy()
        for st in reversed(steps):
            v = st.valid[:, None]
            dh = dh + np.where(v, gy[st.t, d, brange], 0.0)
            dh_cell, dh_hold = np.where(v, dh, 0.0), np.where(v, 0.0, dh)
            if spec.op == "LSTM":
                dc_cell, dc_hold = np.where(v, dc, 0.0), np.where(v, 0.0, dc)
                dxs, dhp, dcp = _lstm_back(spec, cell, d, st, dh_cell, dc_cell, acc)
                dc = dc_hold + dcp
            elif spec.op == "GRU":
                dxs, dhp = _gru_back(spec, cell, d, st, dh_cell, acc)
            else:
                dxs, dhp = _rnn_back(spec, cell, d, st, dh_cell, acc)
            rows = brange[st.valid]
            dx[st.t[rows], rows] += dxs[rows]
            dh = dh_hold + dhp
        dh0[d], dc0[d] = dh, dc

    def cast(i: int, g: np.ndarray) -> np.ndarray:
        return g.astype(ctx.x(i).dtype, copy=False)

    if ctx.need(0):
        out[0] = cast(0, dx.transpose(1, 0, 2) if spec.layout else dx)
    for i, key in ((1, "w"), (2, "r"), (7, "p")):
        if key in acc:
            out[i] = cast(i, acc[key].v)
    if "wb" in acc:
        out[3] = cast(3, np.concatenate([acc["wb"].v, acc["rb"].v], axis=-1))
    for i, g in ((5, dh0), (6, dc0)):
        if ctx.has(i) and ctx.need(i) and (i == 5 or spec.op == "LSTM"):
            out[i] = cast(i, _per_sample_state(g, spec.layout) if ctx.keep(i) else to_layout(spec, g, True))
    return out


refuses("vjp", "LSTM", "input_forget=1", lambda n, m: bool(int(n.attr("input_forget", 0))))

# -- contributions: NNSlicer -------------------------------------------------------------------------


@dataclass
class _Deltas:
    """First-order deltas of one step (``[B, ...]``)."""

    x: np.ndarray
    hp: np.ndarray
    cp: np.ndarray
    z: np.ndarray  # [B, G, H]
    h: np.ndarray
    c: np.ndarray
    rh: np.ndarray | None = None  # GRU linear_before_reset=0: d(r * h_prev)


def _signs(ctx: ContribContext, terms: np.ndarray, osign: np.ndarray, denom: np.ndarray | None) -> np.ndarray:
    """``(B, H, F)`` signs of the kept terms of ``(B, H)`` neurons (theta when ``denom`` is given)."""
    out = np.zeros(terms.shape, np.int8)
    rows = osign != 0
    if rows.any():
        out[rows] = sign_terms(terms[rows], osign[rows], None if denom is None else denom[rows], ctx)
    return out


def _den(ctx: ContribContext, value: np.ndarray, delta: np.ndarray) -> np.ndarray:
    return np.abs(delta if ctx.theta_denominator == "delta" else value)


def _osign(c: np.ndarray, delta: np.ndarray, valid: np.ndarray) -> np.ndarray:
    return (np.sign(c) * np.sign(delta) * valid[:, None]).astype(np.int8)


class _Tables:
    """Per-call accumulators: input increments (time-first) and synapses."""

    def __init__(self, cell: Cell, want_p: bool) -> None:
        d, b, h = cell.h0.shape
        self.x = np.zeros(cell.x.shape, np.int64)
        self.h0 = np.zeros((d, b, h), np.int64)
        self.c0 = np.zeros((d, b, h), np.int64)
        self.w = np.zeros(cell.w.shape, np.int64)
        self.r = np.zeros(cell.r.shape, np.int64)
        self.p = np.zeros((d, 3 * h), np.int64) if want_p else None


def _gate(
    ctx: ContribContext,
    tab: _Tables,
    d: int,
    rows: slice,
    st: Step,
    dl: _Deltas,
    c_gate: np.ndarray,
    k: int,
    rec_src: np.ndarray,
    extra: list[np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted-sum gate ``k``: returns the signs of its recurrent-source terms ``(B, H, H)`` and extras."""
    w = np.asarray(ctx.x[1], np.float64)[d, rows]
    r = np.asarray(ctx.x[2], np.float64)[d, rows]
    parts = [w[None] * dl.x[:, None, :], r[None] * rec_src[:, None, :], *[e[..., None] for e in extra]]
    terms = np.concatenate(parts, axis=2)
    osg = _osign(c_gate, dl.z[:, k], st.valid)
    s = _signs(ctx, terms, osg, _den(ctx, st.z[:, k], dl.z[:, k]))
    n_in = w.shape[1]
    h = r.shape[1]
    sx, sr, se = s[..., :n_in], s[..., n_in : n_in + h], s[..., n_in + h :]
    tab.x[st.t[st.valid], np.flatnonzero(st.valid)] += sx.sum(axis=1, dtype=np.int64)[st.valid]
    tab.w[d, rows] += sx.sum(axis=0, dtype=np.int64)
    tab.r[d, rows] += sr.sum(axis=0, dtype=np.int64)
    return sr, se


def _forward_deltas(
    spec: Spec,
    cell: Cell,
    d: int,
    steps: list[Step],
    dx: np.ndarray,
    dy: np.ndarray | None,
    dh0: np.ndarray,
    dc0: np.ndarray,
) -> list[_Deltas]:
    """First-order deltas of every step of direction ``d`` (``dy`` overrides ``h``'s where recorded)."""
    h = cell.r.shape[2]
    w, r = cell.w[d], cell.r[d]
    acts = spec.directions[d].acts
    brange = np.arange(cell.x.shape[1])
    out: list[_Deltas] = []
    dhp, dcp = dh0, dc0
    for st in steps:
        v = st.valid[:, None]
        dxs = np.where(v, dx[st.t, brange], 0.0)
        lin = (dxs @ w.T).reshape(-1, spec.gates, h)
        rec = (dhp @ r.T).reshape(-1, spec.gates, h)
        dz = lin + rec
        dc, drh = dcp, None
        if spec.op == "LSTM":
            f_act, g_act, h_act = acts
            i, o, f, g = (st.a[:, k] for k in range(4))
            if cell.p is not None:
                pi, po, pf = cell.p[d].reshape(3, h)
                dz[:, 0] += pi * dcp
                dz[:, 2] += pf * dcp
            fi, ff, fg = (
                act.grad(st.z[:, k], st.a[:, k]) * st.live[:, k] for k, act in ((0, f_act), (2, f_act), (3, g_act))
            )
            dc = f * dcp + st.c_prev * ff * dz[:, 2] + g * fi * dz[:, 0] + i * fg * dz[:, 3]
            if cell.p is not None:
                dz[:, 1] += po * dc
            assert st.hc is not None
            fo = f_act.grad(st.z[:, 1], o) * st.live[:, 1]
            dh = st.hc * fo * dz[:, 1] + o * h_act.grad(st.c, st.hc) * dc
        elif spec.op == "GRU":
            f_act, g_act = acts
            zg, rg, n = st.a[:, 0], st.a[:, 1], st.a[:, 2]
            fz, fr = (f_act.grad(st.z[:, k], st.a[:, k]) * st.live[:, k] for k in (0, 1))
            dr = fr * dz[:, 1]
            assert st.extra is not None
            if spec.linear_before_reset:
                dz[:, 2] = lin[:, 2] + st.extra * dr + rg * rec[:, 2]
            else:
                drh = st.h_prev * dr + rg * dhp
                dz[:, 2] = lin[:, 2] + drh @ r.reshape(3, h, h)[2].T
            gh = g_act.grad(st.z[:, 2], n) * st.live[:, 2]
            dh = (st.h_prev - n) * fz * dz[:, 0] + (1.0 - zg) * gh * dz[:, 2] + zg * dhp
        else:
            dh = acts[0].grad(st.z[:, 0], st.a[:, 0]) * st.live[:, 0] * dz[:, 0]
        if dy is not None:
            dh = np.where(v, dy[st.t, d, brange], 0.0)
        dh, dc = np.where(v, dh, dhp), np.where(v, dc, dcp)
        out.append(_Deltas(dxs, dhp, dcp, dz, dh, dc, drh))
        dhp, dcp = dh, dc
    return out


def _lstm_step(
    ctx: ContribContext,
    spec: Spec,
    cell: Cell,
    tab: _Tables,
    d: int,
    st: Step,
    dl: _Deltas,
    ch: np.ndarray,
    cc: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    h = cell.r.shape[2]
    f_act, g_act, h_act = spec.directions[d].acts
    i, o, f, g = (st.a[:, k] for k in range(4))
    assert st.hc is not None
    fo = f_act.grad(st.z[:, 1], o) * st.live[:, 1]
    fi, ff, fg = (act.grad(st.z[:, k], st.a[:, k]) * st.live[:, k] for k, act in ((0, f_act), (2, f_act), (3, g_act)))
    # h = o * h(c): inputs z_o and c
    hterms = np.stack([st.hc * fo * dl.z[:, 1], o * h_act.grad(st.c, st.hc) * dl.c], axis=-1)
    s = _signs(ctx, hterms, _osign(ch, dl.h, st.valid), _den(ctx, st.h, dl.h))
    c_zo, cc = s[..., 0].astype(np.int64), cc + s[..., 1]
    peep = cell.p is not None
    pi, po, pf = cell.p[d].reshape(3, h) if cell.p is not None else (None, None, None)
    chp = np.zeros_like(ch)
    sr, se = _gate(ctx, tab, d, slice(h, 2 * h), st, dl, c_zo, 1, dl.hp, [po * dl.c] if peep else [])
    chp += sr.sum(axis=1)
    if peep and tab.p is not None:
        cc = cc + se[..., 0]
        tab.p[d, h : 2 * h] += se[..., 0].sum(axis=0)
    # c = f c_prev + i g: inputs z_f, c_prev, z_i, z_c
    cterms = np.stack([st.c_prev * ff * dl.z[:, 2], f * dl.cp, g * fi * dl.z[:, 0], i * fg * dl.z[:, 3]], axis=-1)
    s = _signs(ctx, cterms, _osign(cc, dl.c, st.valid), _den(ctx, st.c, dl.c))
    ccp = s[..., 1].astype(np.int64)
    for k, col, p, prow in ((2, 0, pf, 2), (0, 2, pi, 0), (3, 3, None, None)):
        extra = [p * dl.cp] if p is not None else []
        sr, se = _gate(ctx, tab, d, slice(k * h, (k + 1) * h), st, dl, s[..., col].astype(np.int64), k, dl.hp, extra)
        chp += sr.sum(axis=1)
        if p is not None and prow is not None and tab.p is not None:
            ccp += se[..., 0]
            tab.p[d, prow * h : (prow + 1) * h] += se[..., 0].sum(axis=0)
    return chp, ccp


def _gru_step(
    ctx: ContribContext, spec: Spec, cell: Cell, tab: _Tables, d: int, st: Step, dl: _Deltas, ch: np.ndarray
) -> np.ndarray:
    h = cell.r.shape[2]
    f_act, g_act = spec.directions[d].acts
    zg, rg, n = st.a[:, 0], st.a[:, 1], st.a[:, 2]
    fz, fr = (f_act.grad(st.z[:, k], st.a[:, k]) * st.live[:, k] for k in (0, 1))
    gh = g_act.grad(st.z[:, 2], n) * st.live[:, 2]
    # h = (1 - z) n + z h_prev: inputs z_z, z_h, h_prev
    hterms = np.stack([(st.h_prev - n) * fz * dl.z[:, 0], (1.0 - zg) * gh * dl.z[:, 2], zg * dl.hp], axis=-1)
    s = _signs(ctx, hterms, _osign(ch, dl.h, st.valid), _den(ctx, st.h, dl.h))
    chp = s[..., 2].astype(np.int64)
    c_zz, c_zh = s[..., 0].astype(np.int64), s[..., 1].astype(np.int64)
    assert st.extra is not None
    dr = fr * dl.z[:, 1]
    if spec.linear_before_reset:
        # z_h = W_h x + r * (R_h h_prev + Rb_h): terms W_h dx, r R_h dh_prev, (R_h h_prev + Rb_h) dr
        r3 = np.asarray(ctx.x[2], np.float64)[d].reshape(3, h, h)
        w_h = np.asarray(ctx.x[1], np.float64)[d, 2 * h :]
        terms = np.concatenate(
            [w_h[None] * dl.x[:, None, :], rg[..., None] * r3[2][None] * dl.hp[:, None, :], (st.extra * dr)[..., None]],
            axis=2,
        )
        sh = _signs(ctx, terms, _osign(c_zh, dl.z[:, 2], st.valid), _den(ctx, st.z[:, 2], dl.z[:, 2]))
        n_in = w_h.shape[1]
        tab.x[st.t[st.valid], np.flatnonzero(st.valid)] += sh[..., :n_in].sum(axis=1, dtype=np.int64)[st.valid]
        tab.w[d, 2 * h :] += sh[..., :n_in].sum(axis=0, dtype=np.int64)
        tab.r[d, 2 * h :] += sh[..., n_in : n_in + h].sum(axis=0, dtype=np.int64)
        chp += sh[..., n_in : n_in + h].sum(axis=1)
        c_zr = sh[..., -1].astype(np.int64)
    else:
        # z_h = W_h x + R_h (r * h_prev); the products rh = r * h_prev: inputs z_r and h_prev
        assert dl.rh is not None
        sr, _ = _gate(ctx, tab, d, slice(2 * h, 3 * h), st, dl, c_zh, 2, dl.rh, [])
        c_rh = sr.sum(axis=1)
        pterms = np.stack([st.h_prev * dr, rg * dl.hp], axis=-1)
        sp = _signs(ctx, pterms, _osign(c_rh, dl.rh, st.valid), _den(ctx, st.extra, dl.rh))
        c_zr = sp[..., 0].astype(np.int64)
        chp += sp[..., 1]
    for k, cg in ((0, c_zz), (1, c_zr)):
        sr, _ = _gate(ctx, tab, d, slice(k * h, (k + 1) * h), st, dl, cg, k, dl.hp, [])
        chp += sr.sum(axis=1)
    return chp


def _rnn_step(
    ctx: ContribContext, spec: Spec, cell: Cell, tab: _Tables, d: int, st: Step, dl: _Deltas, ch: np.ndarray
) -> np.ndarray:
    (f_act,) = spec.directions[d].acts
    local = f_act.grad(st.z[:, 0], st.a[:, 0]) * st.live[:, 0]
    cz = (_osign(ch, dl.h, st.valid) * np.sign(local * dl.z[:, 0])).astype(np.int64)
    sr, _ = _gate(ctx, tab, d, slice(None), st, dl, cz, 0, dl.hp, [])
    return sr.sum(axis=1, dtype=np.int64)


def recurrent_contributions(ctx: ContribContext) -> ContribResult:
    """LSTM, GRU, RNN (see the module docstring).

    Raises:
        UnsupportedOpError: channel granularity, a weight computed at run time, or a configuration the
            replay does not model.
    """
    node = ctx.node
    if ctx.channel:
        raise UnsupportedOpError.for_node(
            node, "contributions", f"granularity='channel' is undefined for {node.op_type} states; use 'element'"
        )
    if any(ctx.dx[i] is not None for i in (1, 2, 3, 7) if i < len(ctx.dx)):
        raise UnsupportedOpError.for_node(
            node, "contributions", f"an {node.op_type} whose weights depend on the input is not supported"
        )
    spec = decode(node, "contributions")
    cell = Cell.from_inputs(spec, ctx.x)
    ndir = len(spec.directions)
    runs = [replay(spec, cell, d) for d in range(ndir)]
    check_replay(node, spec, cell, runs, ctx.y, "contributions")
    t_len, bsz, _ = cell.x.shape
    h = cell.r.shape[2]

    def table(k: int, state: bool) -> np.ndarray:
        c = ctx.out_contrib[k] if k < len(ctx.out_contrib) else None
        if c is None:
            return np.zeros((ndir, bsz, h) if state else (t_len, ndir, bsz, h), np.int64)
        return from_layout(spec, np.asarray(c, np.int64), state)

    def delta(i: int, state: bool) -> np.ndarray | None:
        v = ctx.dx[i] if i < len(ctx.dx) else None
        return None if v is None else from_layout(spec, np.asarray(v, np.float64), state)

    c_y, c_yh = table(0, False), table(1, True)
    c_yc = table(2, True) if spec.op == "LSTM" else np.zeros((ndir, bsz, h), np.int64)
    dx = delta(0, False)
    dx = np.zeros_like(cell.x) if dx is None else (dx.transpose(1, 0, 2) if spec.layout else dx)
    dy_raw = ctx.dy[0] if ctx.dy and ctx.y[0].size else None
    dy = None if dy_raw is None else from_layout(spec, np.asarray(dy_raw, np.float64), False)
    dh0 = delta(5, True)
    dc0 = delta(6, True) if spec.op == "LSTM" else None
    tab = _Tables(cell, cell.p is not None)
    brange = np.arange(bsz)
    for d, steps in enumerate(runs):
        zeros = np.zeros((bsz, h))
        dls = _forward_deltas(
            spec, cell, d, steps, dx, dy, zeros if dh0 is None else dh0[d], zeros if dc0 is None else dc0[d]
        )
        ch, cc = c_yh[d].copy(), c_yc[d].copy()
        for st, dl in zip(reversed(steps), reversed(dls), strict=True):
            v = st.valid[:, None]
            ch = ch + np.where(v, c_y[st.t, d, brange], 0)
            if not (ch[st.valid].any() or cc[st.valid].any()):
                continue
            if spec.op == "LSTM":
                chp, ccp = _lstm_step(ctx, spec, cell, tab, d, st, dl, ch, cc)
                cc = np.where(v, ccp, cc)
            elif spec.op == "GRU":
                chp = _gru_step(ctx, spec, cell, tab, d, st, dl, ch)
            else:
                chp = _rnn_step(ctx, spec, cell, tab, d, st, dl, ch)
            ch = np.where(v, chp, ch)
        tab.h0[d], tab.c0[d] = ch, cc
    inputs: dict[int, np.ndarray] = {}
    if ctx.dx[0] is not None:
        inputs[0] = (tab.x.transpose(1, 0, 2) if spec.layout else tab.x).astype(np.int32)
    if dh0 is not None:
        inputs[5] = to_layout(spec, tab.h0, True).astype(np.int32)
    if dc0 is not None:
        inputs[6] = to_layout(spec, tab.c0, True).astype(np.int32)
    synapses = {1: tab.w, 2: tab.r}
    if tab.p is not None:
        synapses[7] = tab.p
    return ContribResult(inputs=inputs, synapses=synapses)


REGISTRY.register("contributions", ["LSTM", "GRU", "RNN"], since=7)(recurrent_contributions)


refuses("contributions", "LSTM", "input_forget=1", lambda n, m: bool(int(n.attr("input_forget", 0))))


refuses("contributions", "LSTM GRU RNN", "granularity='channel'")


refuses(
    "contributions",
    "LSTM GRU RNN",
    "W or R computed from the input",
    lambda n, m: computed(1)(n, m) or computed(2)(n, m),
)

# -- prune: channel groups ---------------------------------------------------------------------------


class RecurrentRule:
    """LSTM/GRU/RNN: input features prune with the layer before; hidden units are left alone."""

    def source_ref(self, node: Node, ctx: Context) -> Ref | str:
        """Why the layer starts no group of its own."""
        return (
            f"its hidden units feed back into every gate through R and fix the shapes of Y, Y_h and the initial "
            f"states, so onnxslice leaves {node.op_type} layers whole"
        )

    def __call__(self, node: Node, ctx: Context, port: Port, ref: Ref) -> Effect:
        w = node.input(1)
        if port != ("in", 0):
            return blocked(str(self.source_ref(node, ctx)))
        if not ctx.is_const(w):
            return blocked(f"its weight '{w}' is computed at run time")
        shape = ctx.shape(node.inputs[0])
        if shape is None or len(shape) != 3 or ref.axis != 2:
            return blocked("the group is not on the feature (last) axis of its input X")
        return Effect(cuts=((w, ref.moved(2, ref.offset, 1)),))


REGISTRY.register("prune", ["LSTM", "GRU", "RNN"], since=7)(RecurrentRule())


refuses("prune", "LSTM GRU RNN", "its own hidden units (left alone; the layer before it prunes)", lambda n, m: True)
