"""VJP cases of the rules added for "any model a user brings": LSTM, GRU, RNN, ... (same form as ``_vjp_cases``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from _vjp_cases import Case


def _lens(*v: int) -> tuple[str, np.ndarray]:
    return ("i", np.array(v, dtype=np.int32))


def extra_cases() -> list[Case]:
    """The cases (built on call: ``_vjp_cases`` imports this module while it is being defined)."""
    from _vjp_cases import NONE, Case, W, X

    _H = 3
    _RECURRENT = [
        Case("RNN", [X(4, 2, 3), W(1, _H, 3), W(1, _H, _H), W(1, 2 * _H)], {"hidden_size": _H}, outputs=2),
        Case(
            "RNN",
            [X(4, 2, 3), W(2, _H, 3), W(2, _H, _H), W(2, 2 * _H), _lens(4, 2), X(2, 2, _H)],
            {
                "hidden_size": _H,
                "direction": "bidirectional",
                "activations": ["Sigmoid", "Affine"],
                "activation_alpha": [0.7],
                "activation_beta": [0.2],
            },
            outputs=2,
            name="bidi-lens-acts",
        ),
        Case(
            "RNN",
            [X(4, 2, 3), W(1, _H, 3), W(1, _H, _H), NONE, NONE, X(1, 2, _H)],
            {"hidden_size": _H, "direction": "reverse", "activations": ["LeakyRelu"], "activation_alpha": [0.1]},
            opset=14,
            outputs=2,
            gen="away",
            name="reverse-leaky",
        ),
        Case(
            "GRU",
            [X(4, 2, 3), W(1, 3 * _H, 3), W(1, 3 * _H, _H), W(1, 6 * _H)],
            {"hidden_size": _H},
            outputs=2,
            dtype="float32",
        ),
        Case(
            "GRU",
            [X(4, 2, 3), W(2, 3 * _H, 3), W(2, 3 * _H, _H), W(2, 6 * _H), _lens(3, 4), X(2, 2, _H)],
            {"hidden_size": _H, "direction": "bidirectional", "linear_before_reset": 1},
            outputs=2,
            dtype="float32",
            name="bidi-lbr-lens",
        ),
        Case(
            "GRU",
            [X(3, 2, 3), W(1, 3 * _H, 3), W(1, 3 * _H, _H), W(1, 6 * _H)],
            {
                "hidden_size": _H,
                "direction": "reverse",
                "activations": ["HardSigmoid", "Softsign"],
                "activation_alpha": [0.3],
                "activation_beta": [0.45],
                "clip": 1.5,
            },
            outputs=2,
            dtype="float32",
            name="reverse-acts-clip",
        ),
        Case(
            "LSTM",
            [X(4, 2, 3), W(1, 4 * _H, 3), W(1, 4 * _H, _H), W(1, 8 * _H)],
            {"hidden_size": _H},
            outputs=3,
            dtype="float32",
        ),
        Case(
            "LSTM",
            [
                X(4, 2, 3),
                W(2, 4 * _H, 3),
                W(2, 4 * _H, _H),
                W(2, 8 * _H),
                _lens(2, 4),
                X(2, 2, _H),
                X(2, 2, _H),
                W(2, 3 * _H),
            ],
            {"hidden_size": _H, "direction": "bidirectional"},
            outputs=3,
            dtype="float32",
            name="bidi-lens-states-peepholes",
        ),
        Case(
            "LSTM",
            [X(3, 2, 3), W(1, 4 * _H, 3), W(1, 4 * _H, _H), W(1, 8 * _H), NONE, X(1, 2, _H), X(1, 2, _H)],
            {"hidden_size": _H, "direction": "reverse", "clip": 1.2, "activations": ["Sigmoid", "Relu", "Tanh"]},
            opset=14,
            outputs=3,
            dtype="float32",
            gen="away",
            name="reverse-clip-relu",
        ),
    ]
    return _RECURRENT


#: ops whose onnx.reference kernels do not implement the spec the cases use (sequence_lens, per-direction
#: activations, layout): their float64 check is the torch twin (tests/opsets/test_rnn.py)
NO_REFERENCE = frozenset({"LSTM", "GRU", "RNN"})
