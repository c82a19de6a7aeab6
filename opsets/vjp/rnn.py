"""VJPs of LSTM, GRU and RNN: backpropagation through time over a float64 replay of the recurrence.

The node is replayed in numpy (:mod:`onnxslice.opsets.recurrent`) on its recorded inputs, the replay is
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

import numpy as np

from ..coverage import refuses
from ..recurrent import Cell, Spec, Step, check_replay, decode, from_layout, replay, to_layout
from .base import Grads, VjpContext, vjp


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
