"""NNSlicer contributions through LSTM, GRU and RNN: the cell unrolled into weighted sums and local links.

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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxslice.errors import UnsupportedOpError

from ..coverage import computed, refuses
from ..recurrent import Cell, Spec, Step, check_replay, decode, from_layout, replay, to_layout
from ..registry import REGISTRY
from .base import ContribContext, ContribResult, sign_terms

__all__ = ["recurrent_contributions"]


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
