"""Fused Conv -> BatchNormalization [-> Relu | Clip] chains (``onnxslice.grad.chains``).

The chain rule must give the cotangents the three unfused rules give on the same forward values
(every weight, BatchNormalization statistics and Clip bounds included, per sample too), the engine
must stop recording the chains' inner values, and chains must not form where a value inside them is
read elsewhere, is an output, or where the ops do not qualify.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from _common import ROOT
from onnx import helper, numpy_helper

from onnxslice.grad import GradientEngine
from onnxslice.grad.chains import find_chains
from onnxslice.model import Model, load

RTOL = 1e-5


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / max(float(np.linalg.norm(b)), 1e-30))


def _chain_model(
    act: str = "Clip",
    *,
    opset: int = 17,
    bias: bool = True,
    group: int = 1,
    stride: int = 1,
    tap: bool = False,
    extra_out: bool = False,
    wide: bool = False,
    zero_gamma: bool = False,
) -> Model:
    """x[2,4,9,9] -> Conv(3x3, pads 1) -> BatchNormalization -> act -> Conv 1x1 -> BN -> y.

    ``wide``: x[2,16,3,3] and 40 channels, so the weights outnumber the cotangent and the chain rule
    folds the scale into the cotangent; ``zero_gamma``: one BatchNormalization scale is 0.

    ``tap``: the first Conv's output is also read by an Add (no chain there); ``extra_out``: the first
    Conv's output is a graph output.
    """
    rng = np.random.default_rng(3)
    cin, cout = (16, 40) if wide else (4, 4 if group > 1 else 6)
    size = 3 if wide else 9
    inits = [
        numpy_helper.from_array(rng.standard_normal((cout, cin // group, 3, 3)).astype(np.float32) * 0.4, "w1"),
        numpy_helper.from_array(rng.standard_normal((5, cout, 1, 1)).astype(np.float32) * 0.4, "w2"),
    ]
    for name, c in (("bn1", cout), ("bn2", 5)):
        inits += [
            numpy_helper.from_array(
                rng.uniform(0.5, 1.5, c).astype(np.float32) * (np.arange(c) != 1 if zero_gamma else 1), f"{name}.s"
            ),
            numpy_helper.from_array(rng.standard_normal(c).astype(np.float32) * 0.3, f"{name}.b"),
            numpy_helper.from_array(rng.standard_normal(c).astype(np.float32) * 0.2, f"{name}.m"),
            numpy_helper.from_array(rng.uniform(0.5, 2.0, c).astype(np.float32), f"{name}.v"),
        ]
    conv1_in = ["x", "w1"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32) * 0.1, "b1"))
        conv1_in.append("b1")
    nodes = [
        helper.make_node(
            "Conv", conv1_in, ["c1"], name="conv1", pads=[1, 1, 1, 1], strides=[stride, stride], group=group
        ),
        helper.make_node(
            "BatchNormalization", ["c1", "bn1.s", "bn1.b", "bn1.m", "bn1.v"], ["y1"], name="bn1", epsilon=1e-3
        ),
    ]
    if act == "Relu":
        nodes.append(helper.make_node("Relu", ["y1"], ["z1"], name="act1"))
    elif act == "Clip" and opset >= 11:
        inits += [
            numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
            numpy_helper.from_array(np.array(0.9, np.float32), "hi"),
        ]
        nodes.append(helper.make_node("Clip", ["y1", "lo", "hi"], ["z1"], name="act1"))
    elif act == "Clip":
        nodes.append(helper.make_node("Clip", ["y1"], ["z1"], name="act1", min=0.0, max=0.9))
    else:
        nodes.append(helper.make_node("Identity", ["y1"], ["z1"], name="act1"))
    src = "z1"
    if tap:
        nodes.append(helper.make_node("Add", ["z1", "c1"], ["t1"], name="tap"))
        src = "t1"
    nodes += [
        helper.make_node("Conv", [src, "w2"], ["c2"], name="conv2"),
        helper.make_node("BatchNormalization", ["c2", "bn2.s", "bn2.b", "bn2.m", "bn2.v"], ["y"], name="bn2"),
    ]
    side = size if stride == 1 else (size + 1) // 2
    outputs = [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 5, side, side])]
    if extra_out:
        outputs.append(helper.make_tensor_value_info("c1", onnx.TensorProto.FLOAT, [2, cout, side, side]))
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, cin, size, size])],
        outputs,
        inits,
    )
    return load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=7))


def _fused_vs_unfused(model: Model, x: np.ndarray, per_sample: bool = False, weights: str = "all") -> float:
    """Worst relative error of the fused chain rule against the unfused rules, on the same forward values."""
    fused = GradientEngine(model, "output-norm", weights=weights, executor="eager")
    plain = GradientEngine(model, "output-norm", weights=weights, executor="eager", fuse=False)
    assert fused.chains
    feed = {"x": x}
    vals = plain.recorder.run(feed)  # every value, unfused: both rules read the same numbers
    y = vals["y"]
    cot = np.random.default_rng(0).standard_normal(y.shape).astype(np.float32)
    if per_sample:
        gf = fused(feed, cotangent=cot, per_sample=True)
        gp = plain(feed, cotangent=cot, per_sample=True)
        a = {**gf.weights, **gf.inputs}
        b = {**gp.weights, **gp.inputs}
    else:
        a = fused.vjp_from_values(feed, vals, {"y": cot})
        b = plain.vjp_from_values(feed, vals, {"y": cot})
    assert set(a) == set(b) and len(b) >= 10
    return max(_rel(a[k], b[k]) for k in b if np.linalg.norm(b[k]) > 0)


@pytest.mark.parametrize(
    "kw",
    [
        {"act": "Clip"},
        {"act": "Relu"},
        {"act": "none"},
        {"act": "Clip", "opset": 10},
        {"act": "Clip", "bias": False},
        {"act": "Relu", "group": 4},
        {"act": "Clip", "stride": 2},
        {"act": "Relu", "wide": True},
        {"act": "Relu", "wide": True, "zero_gamma": True},
    ],
    ids=[
        "clip",
        "relu",
        "no-activation",
        "clip-attrs",
        "no-bias",
        "depthwise",
        "strided",
        "scale-on-cotangent",
        "zero-scale",
    ],
)
def test_chain_rule_matches_the_unfused_rules(kw: dict) -> None:
    model = _chain_model(**kw)
    x = np.random.default_rng(1).standard_normal(model.inputs[0].shape).astype(np.float32)
    assert _fused_vs_unfused(model, x) <= RTOL


@pytest.mark.parametrize("wide", [False, True])
def test_chain_rule_per_sample_matches_the_unfused_rules(wide: bool) -> None:
    model = _chain_model("Clip", wide=wide)
    x = np.random.default_rng(2).standard_normal(model.inputs[0].shape).astype(np.float32)
    assert _fused_vs_unfused(model, x, per_sample=True) <= RTOL


def test_chain_bounds_get_cotangents_where_the_output_sits_on_them() -> None:
    model = _chain_model("Clip")
    engine = GradientEngine(model, "output-norm", weights=["lo", "hi", "w1"], executor="eager")
    plain = GradientEngine(model, "output-norm", weights=["lo", "hi", "w1"], executor="eager", fuse=False)
    x = np.random.default_rng(4).standard_normal((2, 4, 9, 9)).astype(np.float32) * 3
    vals = plain.recorder.run({"x": x})
    assert (vals["z1"] == 0.9).any() and (vals["z1"] == 0).any()  # both bounds are active
    cot = {"y": np.ones_like(vals["y"])}
    a, b = engine.vjp_from_values({"x": x}, vals, cot), plain.vjp_from_values({"x": x}, vals, cot)
    for k in ("lo", "hi"):
        assert abs(float(b[k])) > 0 and _rel(a[k], b[k]) <= RTOL


def test_engine_records_the_chain_ends_only_and_fuses_the_forward() -> None:
    model = _chain_model("Clip")
    engine = GradientEngine(model, "output-norm", executor="eager")
    assert [(c.conv.name, c.bn.name, c.act.name if c.act else None) for c in engine.chains] == [
        ("conv1", "bn1", "act1"),
        ("conv2", "bn2", None),
    ]
    assert {"c1", "y1", "c2"}.isdisjoint(engine.record_values) and "z1" in engine.record_values
    opts = engine.recorder.session.get_session_options()
    assert opts.graph_optimization_level.name == "ORT_ENABLE_ALL"
    plain = GradientEngine(model, "output-norm", executor="eager", fuse=False)
    assert not plain.chains and {"c1", "y1"} <= set(plain.record_values)
    assert plain.recorder.session.get_session_options().graph_optimization_level.name == "ORT_DISABLE_ALL"


@pytest.mark.parametrize("kw", [{"tap": True}, {"extra_out": True}])
def test_no_chain_hides_a_value_read_elsewhere(kw: dict) -> None:
    model = _chain_model("Relu", **kw)
    names = [(c.conv.name, c.act.name if c.act else None) for c in find_chains(model)]
    assert ("conv1", "act1") not in names and ("conv1", None) not in names
    assert ("conv2", None) in names


def test_a_protected_value_ends_or_prevents_a_chain() -> None:
    model = _chain_model("Relu")
    ends = [(c.conv.name, c.act) for c in find_chains(model, protected={"y1"})]
    assert ends == [("conv1", None), ("conv2", None)]  # the activation's input stays recorded: it ends there
    assert [c.conv.name for c in find_chains(model, protected={"c2"})] == ["conv1"]


def test_fused_engine_matches_unfused_on_resnet8() -> None:
    """On a real model the fused forward decides no ReLU differently here: whole gradients agree."""
    model = load(ROOT / "models" / "resnet8_mnist.onnx")
    x = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
    fused = GradientEngine(model, "pred", executor="eager")
    plain = GradientEngine(model, "pred", executor="eager", fuse=False)
    assert len(fused.chains) >= 5 and len(fused.record_values) < len(plain.record_values)
    a, b = fused(x), plain(x)
    for k, v in b.weights.items():
        assert _rel(a.weights[k], v) <= 1e-4, k
    for k, v in b.inputs.items():
        assert _rel(a.inputs[k], v) <= 1e-4, k


@pytest.mark.parametrize("wide", [False, True])
def test_emission_follows_the_recording(wide: bool) -> None:
    """An optimized recording (activations outweigh the chains' weights) emits the chain steps and runs the
    graph optimized; otherwise the graph is built from the unfused steps, as the eager engine records."""
    from onnxslice.grad.chains import CHAIN_OP
    from onnxslice.grad.emit import emission_error, emit_gradient_model

    model = _chain_model("Clip", wide=wide)
    engine = GradientEngine(model, "cotangent", executor="eager")
    assert engine.chains and engine.recording_optimized == (not wide)
    ops = {st.node.op_type for st in engine.emission_steps}
    assert (CHAIN_OP in ops) == (not wide) and ("BatchNormalization" in ops) == wide
    x = np.random.default_rng(5).standard_normal(model.inputs[0].shape).astype(np.float32)
    cot = np.random.default_rng(6).standard_normal((2, 5, *model.inputs[0].shape[2:])).astype(np.float32)
    proto = emit_gradient_model(engine, {"x": x})
    assert emission_error(engine, proto, {"x": x}, cot) <= 2e-5


def test_engine_split_over_threads_matches_one_thread_on_resnet8(monkeypatch: pytest.MonkeyPatch) -> None:
    """With two threads and every convolution's cotangents split over sample ranges (each range on
    single-threaded kernels), whole gradients equal the one-thread engine's."""
    from onnxslice.opsets.vjp import conv_kernels, kernels

    model = load(ROOT / "models" / "resnet8_mnist.onnx")
    x = np.random.default_rng(1).random((5, 1, 28, 28), dtype=np.float32)
    monkeypatch.setenv("ONNXSLICE_THREADS", "1")
    one = GradientEngine(model, "pred", executor="eager")(x)
    calls: list[int] = []
    split = kernels.split_samples

    def counted(n: int, part, macs: int):  # type: ignore[no-untyped-def]
        out = split(n, part, macs)
        calls.append(0 if out is None else len(out))
        return out

    monkeypatch.setattr(conv_kernels, "split_samples", counted)
    monkeypatch.setattr(kernels, "SPLIT_MIN_MACS", 0)
    monkeypatch.setenv("ONNXSLICE_THREADS", "2")
    two = GradientEngine(model, "pred", executor="eager")(x)
    assert calls and all(c == 2 for c in calls)
    for k, v in one.weights.items():
        assert _rel(two.weights[k], v) <= 1e-5, k
    for k, v in one.inputs.items():
        assert _rel(two.inputs[k], v) <= 1e-6, k
