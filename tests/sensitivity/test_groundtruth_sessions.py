"""Ground-truth sessions reused across calls give the same scores as fresh ones (issue 18)."""

from __future__ import annotations

import numpy as np
from _sens_helpers import build_mlp, mlp_weights

from onnxslice.sensitivity import perturbation_importance


def test_reused_sessions_equal_fresh_ones(mlp):
    model, _, x = mlp
    sessions: dict = {}
    for noise, on, mag in [("N", "weights", 0.3), ("U", "weights", 0.5), ("D", "activations", 0.2),
                           ("N", "weights", 0.3)]:
        fresh = perturbation_importance(model, {"x": x}, noise, on, mag, 3, seed=2)
        reused = perturbation_importance(model, {"x": x}, noise, on, mag, 3, seed=2, sessions=sessions)
        assert reused.scores == fresh.scores
    assert sum(k[0] == "suffix" for k in sessions if isinstance(k, tuple)) == 6  # 3 layers x (weights, activations)
    # another model: its own sessions, never the first one's
    other = build_mlp(mlp_weights(seed=5))
    a = perturbation_importance(other, {"x": x}, "N", "weights", 0.3, 3, sessions=sessions)
    b = perturbation_importance(other, {"x": x}, "N", "weights", 0.3, 3)
    assert a.scores == b.scores and sessions["model"] is other
    assert not np.allclose(list(a.scores.values()),
                           list(perturbation_importance(model, {"x": x}, "N", "weights", 0.3, 3).scores.values()))
