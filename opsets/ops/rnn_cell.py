"""LSTM, GRU and RNN replayed in numpy: attributes, activations, the time schedule and one step's forward.

The recorded outputs of a recurrent node hold only the hidden states; its rules (``vjp``, ``contributions``)
also need the gates. This module decodes the node (directions, activations with their alpha/beta as
onnxruntime consumes them, ``clip``, ``linear_before_reset``, ``layout``) and replays the recurrence in
float64 on the recorded inputs, keeping every step's gate pre-activations and outputs. Pure functions of
arrays and attributes; nothing here reads a graph.

Conventions (ONNX): ``X [T, B, I]`` (``layout=1``: ``[B, T, I]``), ``W [D, G*H, I]``, ``R [D, G*H, H]``,
``B [D, 2*G*H]`` (``Wb`` then ``Rb``), gate order ``i, o, f, c`` (LSTM), ``z, r, h`` (GRU). With
``sequence_lens`` a batch entry runs its first ``L_b`` steps (a reverse direction starts at ``L_b - 1``);
its state is held after that and ``Y`` is zero there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnxslice.errors import UnsupportedOpError

#: gates per op (rows of W are G * hidden_size)
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


_NACT = {"LSTM": 3, "GRU": 2, "RNN": 1}


_DEFAULTS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"), "RNN": ("Tanh",)}


# name -> (uses alpha, uses beta, default alpha, default beta), as onnxruntime's rnn_helpers consume them
_USAGE: dict[str, tuple[bool, bool, float, float]] = {
    "relu": (False, False, 0.0, 0.0),
    "tanh": (False, False, 0.0, 0.0),
    "sigmoid": (False, False, 0.0, 0.0),
    "softsign": (False, False, 0.0, 0.0),
    "softplus": (False, False, 0.0, 0.0),
    "affine": (True, True, 1.0, 0.0),
    "leakyrelu": (True, False, 0.01, 0.0),
    "thresholdedrelu": (True, False, 1.0, 0.0),
    "scaledtanh": (True, True, 1.0, 1.0),
    "hardsigmoid": (True, True, 0.2, 0.5),
    "elu": (True, False, 1.0, 0.0),
}


@dataclass(frozen=True)
class Activation:
    """One activation function of a recurrent cell, with its value and its derivative."""

    name: str
    alpha: float = 0.0
    beta: float = 0.0

    def __call__(self, z: np.ndarray) -> np.ndarray:
        n, a, b = self.name, self.alpha, self.beta
        if n == "sigmoid":
            return 0.5 * (1.0 + np.tanh(0.5 * z))
        if n == "tanh":
            return np.tanh(z)
        if n == "relu":
            return np.maximum(z, 0.0)
        if n == "affine":
            return a * z + b
        if n == "leakyrelu":
            return np.where(z >= 0, z, a * z)
        if n == "thresholdedrelu":
            return np.where(z > a, z, 0.0)
        if n == "scaledtanh":
            return a * np.tanh(b * z)
        if n == "hardsigmoid":
            return np.clip(a * z + b, 0.0, 1.0)
        if n == "elu":
            return np.where(z >= 0, z, a * (np.exp(np.minimum(z, 0.0)) - 1.0))
        if n == "softsign":
            return z / (1.0 + np.abs(z))
        if n == "softplus":
            return np.logaddexp(0.0, z)
        raise AssertionError(n)

    def grad(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        """``f'(z)`` given the pre-activation ``z`` and the output ``y = f(z)``."""
        n, a, b = self.name, self.alpha, self.beta
        if n == "sigmoid":
            return y * (1.0 - y)
        if n == "tanh":
            return 1.0 - y * y
        if n == "relu":
            return (z > 0).astype(np.float64)
        if n == "affine":
            return np.full(z.shape, a)
        if n == "leakyrelu":
            return np.where(z >= 0, 1.0, a)
        if n == "thresholdedrelu":
            return (z > a).astype(np.float64)
        if n == "scaledtanh":
            t = np.tanh(b * z)
            return a * b * (1.0 - t * t)
        if n == "hardsigmoid":
            u = a * z + b
            return np.where((u > 0) & (u < 1), a, 0.0)
        if n == "elu":
            return np.where(z >= 0, 1.0, y + a)
        if n == "softsign":
            return 1.0 / (1.0 + np.abs(z)) ** 2
        if n == "softplus":
            return 0.5 * (1.0 + np.tanh(0.5 * z))
        raise AssertionError(n)


@dataclass(frozen=True)
class Direction:
    """One direction of the node: reverse or not, and its activations (f, g, h as the op has them)."""

    reverse: bool
    acts: tuple[Activation, ...]


@dataclass(frozen=True)
class Spec:
    """The decoded attributes of a recurrent node."""

    op: str
    hidden: int
    directions: tuple[Direction, ...]
    clip: float | None
    linear_before_reset: bool
    layout: int

    @property
    def gates(self) -> int:
        """Gates per hidden unit (4, 3 or 1)."""
        return GATES[self.op]


def decode(node: Any, capability: str = "vjp") -> Spec:
    """The :class:`Spec` of an ``LSTM``, ``GRU`` or ``RNN`` node.

    Raises:
        UnsupportedOpError: ``input_forget=1`` (LSTM), an unknown activation or a wrong activation count.
    """
    op = node.op_type

    def refuse(why: str) -> UnsupportedOpError:
        return UnsupportedOpError.for_node(node, capability, why)

    direction = str(node.attr("direction", "forward"))
    dirs = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}.get(direction)
    if dirs is None:
        raise refuse(f"direction '{direction}' is not forward, reverse or bidirectional")
    if op == "LSTM" and int(node.attr("input_forget", 0)):
        raise refuse("LSTM with input_forget=1 (coupled input and forget gates) is not supported")
    hidden = node.attr("hidden_size")
    k = _NACT[op]
    names = [str(a) for a in (node.attr("activations") or [])]
    if not names:
        names = list(_DEFAULTS[op]) * len(dirs)
    elif len(names) == k and len(dirs) == 2:
        names = names * 2
    if len(names) != k * len(dirs):
        raise refuse(f"{len(names)} activations for {len(dirs)} direction(s); the op needs {k} per direction")
    alphas = list(np.asarray(node.attr("activation_alpha", []) or [], np.float64).reshape(-1))
    betas = list(np.asarray(node.attr("activation_beta", []) or [], np.float64).reshape(-1))
    acts: list[Activation] = []
    for name in names:
        key = name.lower()
        if key not in _USAGE:
            raise refuse(f"activation '{name}' is not one the ONNX spec allows")
        ua, ub, da, db = _USAGE[key]
        a = float(alphas.pop(0)) if ua and alphas else da
        b = float(betas.pop(0)) if ub and betas else db
        acts.append(Activation(key, a, b))
    directions = tuple(Direction(rev, tuple(acts[i * k : (i + 1) * k])) for i, rev in enumerate(dirs))
    clip = node.attr("clip")
    return Spec(
        op=op,
        hidden=int(hidden) if hidden is not None else -1,
        directions=directions,
        clip=None if clip is None else float(clip),
        linear_before_reset=bool(int(node.attr("linear_before_reset", 0))),
        layout=int(node.attr("layout", 0)),
    )


@dataclass
class Cell:
    """The node's inputs in the time-first layout, float64: X ``[T, B, I]``, states ``[D, B, H]``."""

    x: np.ndarray
    w: np.ndarray
    r: np.ndarray
    wb: np.ndarray
    rb: np.ndarray
    lens: np.ndarray
    h0: np.ndarray
    c0: np.ndarray
    p: np.ndarray | None

    @classmethod
    def from_inputs(cls, spec: Spec, ins: Sequence[np.ndarray | None]) -> Cell:
        """Time-first float64 views of the node inputs (omitted optional inputs become zeros)."""

        def get(i: int) -> np.ndarray | None:
            return ins[i] if i < len(ins) and ins[i] is not None else None

        x = np.asarray(get(0), np.float64)
        if spec.layout:
            x = x.transpose(1, 0, 2)
        t, b, _ = x.shape
        w = np.asarray(get(1), np.float64)
        r = np.asarray(get(2), np.float64)
        d, gh = w.shape[0], w.shape[1]
        h = r.shape[2]
        bias = get(3)
        bb = np.zeros((d, 2 * gh)) if bias is None else np.asarray(bias, np.float64)
        lens_in = get(4)
        lens = np.full(b, t, np.int64) if lens_in is None else np.asarray(lens_in).astype(np.int64).reshape(-1)

        def state(i: int) -> np.ndarray:
            v = get(i)
            if v is None:
                return np.zeros((d, b, h))
            v = np.asarray(v, np.float64)
            return v.transpose(1, 0, 2) if spec.layout else v

        p_in = get(7) if spec.op == "LSTM" else None
        return cls(
            x,
            w,
            r,
            bb[:, :gh],
            bb[:, gh:],
            np.clip(lens, 0, t),
            state(5),
            state(6) if spec.op == "LSTM" else np.zeros((d, b, h)),
            None if p_in is None else np.asarray(p_in, np.float64),
        )


@dataclass
class Step:
    """One step of one direction for every batch entry: what the rules read.

    Attributes:
        t: time index of each batch entry at this step ``[B]`` (any value where invalid).
        valid: whether each batch entry runs this step ``[B]``.
        x: the inputs read ``[B, I]``.
        h_prev, c_prev: states before the step ``[B, H]`` (``c`` only for LSTM).
        z: gate pre-activations after clip ``[B, G, H]`` (LSTM: i, o, f, c; GRU: z, r, h).
        a: gate outputs ``[B, G, H]``.
        live: where the clip lets the gradient through ``[B, G, H]``.
        extra: GRU's ``r * h_prev`` (``linear_before_reset=0``) or ``h_prev R_h^T + Rb_h`` (``=1``).
        h, c: states after the step (held states where invalid).
        hc: LSTM's ``h(c)`` (the output activation of the cell).
    """

    t: np.ndarray
    valid: np.ndarray
    x: np.ndarray
    h_prev: np.ndarray
    c_prev: np.ndarray
    z: np.ndarray
    a: np.ndarray
    live: np.ndarray
    h: np.ndarray
    c: np.ndarray
    extra: np.ndarray | None = None
    hc: np.ndarray | None = None
    pre: dict[str, np.ndarray] = field(default_factory=dict)


def _clip(spec: Spec, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if spec.clip is None:
        return z, np.ones(z.shape, bool)
    return np.clip(z, -spec.clip, spec.clip), np.abs(z) < spec.clip


def schedule(lens: np.ndarray, t: int, reverse: bool) -> tuple[np.ndarray, np.ndarray]:
    """Time index ``[S, B]`` and validity ``[S, B]`` of every step of a direction."""
    s = np.arange(t)[:, None]
    valid = s < lens[None, :]
    idx = np.where(valid, (lens[None, :] - 1 - s) if reverse else np.broadcast_to(s, valid.shape), 0)
    return idx.astype(np.int64), valid


def replay(spec: Spec, cell: Cell, d: int) -> list[Step]:
    """Run direction ``d`` forward, keeping every step (float64)."""
    direction = spec.directions[d]
    h_size = cell.r.shape[2]
    w, r, wb, rb = cell.w[d], cell.r[d], cell.wb[d], cell.rb[d]
    t_len, bsz = cell.x.shape[:2]
    idx, valid = schedule(cell.lens, t_len, direction.reverse)
    h, c = cell.h0[d].copy(), cell.c0[d].copy()
    barange = np.arange(bsz)
    steps: list[Step] = []
    for s in range(t_len):
        t, v = idx[s], valid[s]
        x = cell.x[t, barange]
        zx = x @ w.T + wb
        if spec.op == "LSTM":
            zs = (zx + h @ r.T + rb).reshape(bsz, 4, h_size)
            if cell.p is not None:
                pi, po, pf = cell.p[d].reshape(3, h_size)
                zs[:, 0] += pi * c
                zs[:, 2] += pf * c
            f_act, g_act, h_act = direction.acts
            z = np.empty_like(zs)
            live = np.ones(zs.shape, bool)
            a = np.empty_like(zs)
            for k, act in ((0, f_act), (2, f_act), (3, g_act)):
                z[:, k], live[:, k] = _clip(spec, zs[:, k])
                a[:, k] = act(z[:, k])
            c_new = a[:, 2] * c + a[:, 0] * a[:, 3]
            zo = zs[:, 1] + (po * c_new if cell.p is not None else 0.0)
            z[:, 1], live[:, 1] = _clip(spec, zo)
            a[:, 1] = f_act(z[:, 1])
            hc = h_act(c_new)
            h_new = a[:, 1] * hc
            extra = None
        elif spec.op == "GRU":
            f_act, g_act = direction.acts
            zx3 = zx.reshape(bsz, 3, h_size)
            r3 = r.reshape(3, h_size, h_size)
            rb3 = rb.reshape(3, h_size)
            z = np.empty((bsz, 3, h_size))
            live = np.ones(z.shape, bool)
            a = np.empty_like(z)
            for k in (0, 1):
                z[:, k], live[:, k] = _clip(spec, zx3[:, k] + h @ r3[k].T + rb3[k])
                a[:, k] = f_act(z[:, k])
            if spec.linear_before_reset:
                extra = h @ r3[2].T + rb3[2]
                zh = zx3[:, 2] + a[:, 1] * extra
            else:
                extra = a[:, 1] * h
                zh = zx3[:, 2] + extra @ r3[2].T + rb3[2]
            z[:, 2], live[:, 2] = _clip(spec, zh)
            a[:, 2] = g_act(z[:, 2])
            h_new = (1.0 - a[:, 0]) * a[:, 2] + a[:, 0] * h
            c_new, hc = c, None
        else:
            (f_act,) = direction.acts
            zz, lv = _clip(spec, zx + h @ r.T + rb)
            z, live = zz[:, None], lv[:, None]
            a = f_act(z)
            h_new = a[:, 0]
            c_new, hc, extra = c, None, None
        vm = v[:, None]
        h_next = np.where(vm, h_new, h)
        c_next = np.where(vm, c_new, c)
        steps.append(Step(t, v, x, h, c, z, a, live, h_next, c_next, extra, hc))
        h, c = h_next, c_next
    return steps


def outputs(spec: Spec, cell: Cell, runs: list[list[Step]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``Y [T, D, B, H]``, ``Y_h [D, B, H]`` and ``Y_c [D, B, H]`` (time-first layout) from replayed steps."""
    t_len, bsz = cell.x.shape[:2]
    h_size = cell.r.shape[2]
    y = np.zeros((t_len, len(runs), bsz, h_size))
    barange = np.arange(bsz)
    for d, steps in enumerate(runs):
        for st in steps:
            rows = barange[st.valid]
            y[st.t[rows], d, rows] = st.h[rows]
    yh = np.stack([steps[-1].h if steps else cell.h0[d] for d, steps in enumerate(runs)])
    yc = np.stack([steps[-1].c if steps else cell.c0[d] for d, steps in enumerate(runs)])
    return y, yh, yc


def to_layout(spec: Spec, y: np.ndarray, state: bool) -> np.ndarray:
    """A time-first ``Y`` (``state=False``) or ``[D, B, H]`` state in the node's layout."""
    if not spec.layout:
        return y
    return y.transpose(1, 0, 2) if state else y.transpose(2, 0, 1, 3)


def from_layout(spec: Spec, v: np.ndarray, state: bool) -> np.ndarray:
    """The inverse of :func:`to_layout`."""
    if not spec.layout:
        return v
    return v.transpose(1, 0, 2) if state else v.transpose(1, 2, 0, 3)


def check_replay(
    node: Any,
    spec: Spec,
    cell: Cell,
    runs: list[list[Step]],
    recorded: Sequence[np.ndarray | None],
    capability: str = "vjp",
) -> None:
    """Refuse when the replay disagrees with the recorded outputs (a semantic the replay gets wrong).

    Raises:
        UnsupportedOpError: the replayed ``Y``/``Y_h``/``Y_c`` differ from the recorded ones.
    """
    y, yh, yc = outputs(spec, cell, runs)
    mine = [to_layout(spec, y, False), to_layout(spec, yh, True), to_layout(spec, yc, True)]
    for k, rec in enumerate(recorded[:3]):
        if rec is None or rec.size == 0:
            continue
        ref = np.asarray(rec, np.float64)
        if ref.shape != mine[k].shape:
            continue
        err = float(np.max(np.abs(ref - mine[k]), initial=0.0))
        scale = float(np.max(np.abs(ref), initial=0.0))
        if err > 1e-3 * max(scale, 1.0):
            raise UnsupportedOpError.for_node(
                node,
                capability,
                f"replaying the {spec.op} in numpy gives output {k} off by {err:.3g} from the recorded one "
                "(an attribute combination onnxslice does not model); report it with the model",
            )
