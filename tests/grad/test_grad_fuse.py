"""Clip's gate fast path (``clip_gate`` in the Clip rule) and weights fed from memory to the graph session.

The fast path must give the general rule's cotangents bit for bit on the eager backend (same masks, same
sums), return None where it does not apply, and emit fewer nodes; the CPU graph session must not copy
the model's large weights into its proto and must still agree with the eager engine.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxslice.opsets import REGISTRY
from onnxslice.opsets.capabilities.vjp import VjpContext
from onnxslice.opsets.ops.unary import clip_gate, clip_general
from onnxslice.opsets.vjp.eager import EAGER

from onnxslice.grad import GradientEngine
from onnxslice.grad.emit import FED_LOCATION, emit_gradient_model, fed_weights
from onnxslice.grad.emitted import FED_MIN, GRAPH_TOL, graph_disagreement
from onnxslice.model import load


def _clip_net(lo: float, hi: float, channels: int = 8) -> onnx.ModelProto:
    """x [N, 3, 8, 8] -> Conv 3x3 (pads 1) -> Clip(lo, hi) -> Conv 1x1 -> GlobalAveragePool -> Flatten."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((channels, 3, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((5, channels, 1, 1)).astype(np.float32)
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
             numpy_helper.from_array(np.array(lo, np.float32), "lo"),
             numpy_helper.from_array(np.array(hi, np.float32), "hi")]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], name="c1"),
        helper.make_node("Clip", ["a", "lo", "hi"], ["b"], name="clip"),
        helper.make_node("Conv", ["b", "w2"], ["c"], name="c2"),
        helper.make_node("GlobalAveragePool", ["c"], ["d"], name="gap"),
        helper.make_node("Flatten", ["d"], ["logits"], name="flat"),
    ]
    graph = helper.make_graph(nodes, "clipnet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _clip_ctx(lo: float, hi: float, needs: tuple[bool, bool, bool]) -> tuple[Any, VjpContext]:
    m: Any = load(_clip_net(lo, hi))
    node = m.node("clip")
    rng = np.random.default_rng(1)
    x = rng.uniform(-2, 8, (2, 8, 8, 8)).astype(np.float32)
    x.flat[:6] = [lo, hi, lo, hi, 0.0, 6.0]  # exactly at the bounds: the input's cotangent passes there
    y = np.clip(x, lo, hi)
    g = rng.standard_normal(x.shape).astype(np.float32)
    ins = [x, np.array(lo, np.float32), np.array(hi, np.float32)]
    return m, VjpContext(node, ins, [y], [g], needs)


@pytest.mark.parametrize("needs", [(True, False, False), (True, True, True), (False, True, False), (True, False, True)])
def test_clip_variant_equals_the_registered_rule_bit_for_bit(needs: tuple[bool, bool, bool]) -> None:
    _, ctx = _clip_ctx(0.0, 6.0, needs)
    ref = clip_general(EAGER, ctx)
    got = clip_gate(EAGER, ctx)
    registered = REGISTRY.lookup("vjp", "Clip", "", 17).prim(EAGER, ctx)  # takes the fast path
    assert all((a is None and b is None) or np.array_equal(a, b) for a, b in zip(got or [], registered, strict=True))
    assert got is not None and len(got) == len(ref) == 3
    for i, (a, b) in enumerate(zip(got, ref, strict=True)):
        assert (a is None) == (b is None or not needs[i]), i
        if a is not None:
            assert a.dtype == b.dtype and a.shape == np.shape(b)
            np.testing.assert_array_equal(a, b)


def test_clip_variant_declines_crossed_bounds_and_per_sample() -> None:
    _, ctx = _clip_ctx(3.0, 1.0, (True, True, True))
    assert clip_gate(EAGER, ctx) is None  # lo > hi: the general rule's semantics
    _, ctx = _clip_ctx(0.0, 6.0, (True, False, False))
    keep = VjpContext(ctx.node, ctx.ins, ctx.outs, ctx.out_grads, ctx.needs, per_sample=(False, True, False))
    assert clip_gate(EAGER, keep) is None


def _ops(proto: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in proto.graph.node if n.name.startswith("grad/")]


def test_emitted_clip_uses_fewer_nodes_and_matches_eager() -> None:
    m: Any = load(_clip_net(0.0, 6.0))
    x = np.random.default_rng(2).uniform(-1, 1, (4, 3, 8, 8)).astype(np.float32)
    for weights in ("all", "layers"):
        eng = GradientEngine(m, "pred", device="cpu", executor="eager", weights=weights)
        ops = _ops(emit_gradient_model(eng, {"x": x}))
        assert "Max" not in ops and "Not" not in ops and "And" not in ops  # the general rule's max(x, lo) chain
        if weights == "layers":  # the bounds need no cotangent: one comparison with the forward output
            assert ops.count("Equal") == 2 and "Less" not in ops and "Greater" not in ops  # 1: the one-hot seed
        graph = GradientEngine(m, "pred", device="cpu", executor="graph", weights=weights)(x)
        eager = eng(x)
        assert graph.meta.get("backend") == "emitted gradient graph"
        assert graph_disagreement(graph, eager) <= GRAPH_TOL
        assert set(graph.weights) == set(eager.weights)


def test_a_one_off_recording_borrows_the_weights_and_keeps_no_arena() -> None:
    """The recording that traces an emitted graph (``make_recorder(..., arena=False)``) is handed the model's
    own weight arrays and frees its buffers after its run, so the graph's session does not grow around
    them; the emission then keeps only the traced values' shapes."""
    m: Any = load(_clip_net(0.0, 6.0, channels=512))
    eng = GradientEngine(m, "pred", device="cpu", executor="graph")
    rec = eng.make_recorder(eng.record_values, arena=False)
    arrays, _ = rec.session._onnxslice_external
    assert set(arrays) == {"w1", "w2"}  # load() holds both as arrays only (w2: 10 KiB, at least DETACH_MIN)
    assert all(np.shares_memory(arrays[k], m.initializer(k)) for k in arrays)
    assert not rec.session.get_session_options().enable_cpu_mem_arena
    assert eng.recorder.session.get_session_options().enable_cpu_mem_arena  # the engine's own recorder keeps one


def test_graph_session_is_fed_the_model_weights_and_written_models_keep_them() -> None:
    m: Any = load(_clip_net(0.0, 6.0, channels=512))  # w1: 512*27 elements, w2: 2560
    x = np.random.default_rng(3).random((2, 3, 8, 8), dtype=np.float32)
    eng = GradientEngine(m, "pred", device="cpu", executor="graph")
    fed = emit_gradient_model(eng, {"x": x}, fed_min=FED_MIN)
    stubs = {t.name for t in fed.graph.initializer if t.data_location == TensorProto.EXTERNAL}
    # w1 has FED_MIN elements; w2 (2560) fewer, but load() holds it as an array only, so it is fed too
    assert stubs == {"w1", "w2"} and all(e.value == FED_LOCATION for t in fed.graph.initializer
                                         for e in t.external_data if e.key == "location")
    arrays = fed_weights(fed, m)
    assert set(arrays) == {"w1", "w2"} and all(np.shares_memory(arrays[k], m.initializer(k)) for k in arrays)
    full = emit_gradient_model(eng, {"x": x})  # what `grad --emit` writes: every weight inline, checked
    assert not any(t.data_location == TensorProto.EXTERNAL for t in full.graph.initializer)
    g = eng(x)
    assert g.meta.get("backend") == "emitted gradient graph"
    assert eng._recorder is None  # executor="graph": the tracing session was let go
    sess = eng._runner.session({"x": x})  # reads the filters themselves: no prepacked copy (GRAPH_PREPACK)
    assert sess.get_session_options().get_session_config_entry("session.disable_prepacking") == "1"
    eager = GradientEngine(m, "pred", device="cpu", executor="eager")(x)
    assert graph_disagreement(g, eager) <= GRAPH_TOL
