"""Several weight settings per engine call (stacked along the batch) give the numbers of one call each."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from _sens_helpers import build_mlp, mlp_weights
from onnx import helper

from onnxslice.model import Model, load
from onnxslice.sensitivity import get_criterion
from onnxslice.sensitivity.context import Context
from onnxslice.sensitivity.stacked import Points, stack_model, stack_problem, stack_subject
from onnxslice.testing import make_model

pytest.importorskip("onnxslice.grad")

CRITERIA = ("ig", "gig", "idgi", "smoothgrad", "vargrad")


def build_convnet(seed: int = 0, batch: str | int = "N") -> Model:
    """x[N,1,6,6] -> Conv -> Relu -> Conv -> Relu -> Flatten -> MatMul -> Add -> logits[N,3]."""
    rng = np.random.default_rng(seed)
    w = {
        "W0": (rng.normal(size=(3, 1, 3, 3)) / 3).astype(np.float32),
        "b0": (0.1 * rng.normal(size=3)).astype(np.float32),
        "W1": (rng.normal(size=(2, 3, 3, 3)) / 5).astype(np.float32),
        "W2": (rng.normal(size=(8, 3)) / 3).astype(np.float32),
        "b2": (0.1 * rng.normal(size=3)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "W0", "b0"], ["c0"], name="conv0"),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "W1"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Flatten", ["r1"], ["f"], name="flat"),
        helper.make_node("MatMul", ["f", "W2"], ["m"], name="fc"),
        helper.make_node("Add", ["m", "b2"], ["logits"], name="fc_bias"),
    ]
    return load(make_model(nodes, {"x": (np.float32, [batch, 1, 6, 6])}, {"logits": (np.float32, [batch, 3])}, w))


def _data(model: Model, n: int = 10) -> dict[str, np.ndarray]:
    shape = [n if not isinstance(d, int) or d == 0 else d for d in model.inputs[0].shape or ()]
    shape[0] = n
    return {"x": np.random.default_rng(3).normal(size=shape).astype(np.float32)}


def _both(model: Model, name: str, path: str, **opts: object) -> tuple[dict, dict, Context]:
    data = _data(model)
    kw = dict(steps=3, noise_samples=3, seed=1, batch_size=4)
    stacked = Context.build(model, data, options={"path": path, "stack_all": True, **opts}, **kw)
    single = Context.build(model, data, options={"path": path, "stack": False}, **kw)
    crit = get_criterion(name)
    return crit.relevance(stacked), crit.relevance(single), stacked


@pytest.mark.parametrize("which", ["mlp", "convnet"])
@pytest.mark.parametrize("name", CRITERIA)
def test_stacked_equals_one_point_per_call(which, name):
    model = build_mlp(mlp_weights(2)) if which == "mlp" else build_convnet()
    paths = ("layer", "global") if name in ("ig", "gig", "idgi") else ("layer",)
    for path in paths:
        opts = {"stack_per_sample": True} if name == "vargrad" else {}  # off by default: slower
        got, want, ctx = _both(model, name, path, **opts)
        assert ctx.stack_problem() is None
        if (name, path) != ("gig", "global"):  # one guided path is sequential: nothing to stack
            assert ctx._stacked or any(ctx._subject.values()), "the points were not stacked"
        if path == "layer" and name in ("ig", "gig", "idgi"):  # one layer's path: the graph below it only
            assert any(ctx._subject.values())
        assert got.keys() == want.keys()
        for k in want:
            scale = float(np.abs(want[k]).max()) or 1.0
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6 * scale, err_msg=f"{name} {path} {k}")


def test_uneven_blocks_and_the_memory_budget():
    """stack_max=2 over 3 points: blocks of 2 and 1 points, the same numbers."""
    model = build_convnet(5)
    got, want, ctx = _both(model, "smoothgrad", "layer", stack_max=2)
    assert {k for k, _ in ctx._stacked} == {2}
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-7)
    got, want, ctx = _both(model, "ig", "layer", stack_max=2)  # one layer's 3 steps: 2 + 1
    assert {k for (_, k), v in ctx._subject.items() if v} == {1, 2}
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-7)
    # a budget too small for two points: one point per call
    got, want, ctx = _both(model, "smoothgrad", "layer", stack_mb=1e-6)
    assert not ctx._stacked
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


def test_per_sample_gradients_per_point():
    """Per-sample gradients of a stacked call are each point's own (checked sample by sample)."""
    model = build_convnet(7)
    data = _data(model, 6)
    ctx = Context.build(model, data, batch_size=3, options={"stack_all": True, "stack_per_sample": True})
    pts = Points(3, lambda i: {x.weight: (model.initializer(x.weight) * (1 + 0.3 * i)).astype(np.float32)
                               for x in ctx.layers})
    seen = {}
    for i, n, g, f in ctx.grad_chunks_many(pts, per_sample=True, chunk=3):
        seen.setdefault(i, []).append((n, g, f))
    assert ctx._stacked
    ref = Context.build(model, data, batch_size=3, options={"stack": False})
    for i in range(3):
        want = list(ref.grad_chunks(pts[i], per_sample=True, chunk=3))
        assert len(want) == len(seen[i])
        for (n, g, f), (m, w) in zip(seen[i], want, strict=True):
            assert n == m
            np.testing.assert_allclose(f, w.target_values, rtol=1e-5, atol=1e-6)
            for x in ctx.layers:
                assert g[x.weight].shape == w.weights[x.weight].shape
                np.testing.assert_allclose(g[x.weight], w.weights[x.weight], rtol=1e-5, atol=1e-7)


def test_points_of_every_layer_stack_only_when_asked():
    """Noise draws and the global path: one call per point by default (measured faster), stacked with stack_all."""
    model = build_convnet(2)
    ctx = Context.build(model, _data(model), noise_samples=3, batch_size=4)
    get_criterion("smoothgrad").relevance(ctx)
    assert not ctx._stacked


def test_models_that_cannot_stack_say_why_and_fall_back():
    fixed = build_convnet(batch=10)
    assert "no free batch dimension" in (stack_problem(fixed, fixed.layers) or "")
    got, want, ctx = _both(fixed, "smoothgrad", "layer")
    assert ctx.stack_problem() is not None and not ctx._stacked
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


def test_stacked_model_runs_each_group_at_its_own_weights():
    """The rewritten graph itself: group g of the stacked batch equals the model at point g (onnxruntime)."""
    import onnx

    from onnxslice.record import Recorder

    model = build_convnet(9)
    st = stack_model(model, model.layers, 3)
    onnx.checker.check_model(st.model.proto, full_check=True)
    x = _data(model, 4)["x"]
    values = [{w: (model.initializer(w) * s).astype(np.float32) for w in (y.weight for y in model.layers)}
              for s in (0.5, 1.0, -2.0)]
    feed = st.feed([y.weight for y in model.layers], values)
    out = Recorder(st.model, ["logits"], "cpu", weight_inputs=list(feed)).run(
        {"x": np.concatenate([x] * 3)}, validated=True, weights=feed)["logits"]
    base = Recorder(model, ["logits"], "cpu", weight_inputs=[y.weight for y in model.layers])
    for g, v in enumerate(values):
        want = base.run({"x": x}, validated=True, weights=v)["logits"]
        np.testing.assert_allclose(out[4 * g : 4 * (g + 1)], want, rtol=1e-6, atol=1e-6)


def build_resnet(seed: int = 0, shape_from_input: bool = False) -> Model:
    """Conv -> Relu -> Conv -> Add(skip) -> Relu -> flatten -> MatMul: the skip value crosses below conv1.

    ``shape_from_input``: flatten with a Reshape whose shape is computed from the input's batch size
    (an integer value computed above conv1 and read below it).
    """
    rng = np.random.default_rng(seed)
    w = {
        "W0": (rng.normal(size=(2, 1, 3, 3)) / 3).astype(np.float32),
        "W1": (rng.normal(size=(2, 2, 3, 3)) / 4).astype(np.float32),
        "b1": (0.1 * rng.normal(size=2)).astype(np.float32),
        "W2": (rng.normal(size=(32, 3)) / 5).astype(np.float32),
        "minus1": np.array([-1], np.int64),
    }
    nodes = [
        helper.make_node("Conv", ["x", "W0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "W1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c1", "r0"], ["s"], name="skip"),
        helper.make_node("Relu", ["s"], ["r1"], name="relu1"),
    ]
    if shape_from_input:
        nodes += [
            helper.make_node("Shape", ["x"], ["xs"], name="xs", end=1),
            helper.make_node("Concat", ["xs", "minus1"], ["flat_shape"], name="flat_shape", axis=0),
            helper.make_node("Reshape", ["r1", "flat_shape"], ["f"], name="flat"),
        ]
    else:
        nodes.append(helper.make_node("Flatten", ["r1"], ["f"], name="flat"))
    nodes.append(helper.make_node("MatMul", ["f", "W2"], ["logits"], name="fc"))
    return load(make_model(nodes, {"x": (np.float32, ["N", 1, 4, 4])}, {"logits": (np.float32, ["N", 3])}, w))


@pytest.mark.parametrize("shape_from_input", [False, True])
def test_per_layer_paths_with_a_skip_connection(shape_from_input):
    """conv1's path runs below conv1 with the skip value tiled; an integer value crossing refuses that."""
    from onnxslice.sensitivity.stacked import stack_subject

    model = build_resnet(4, shape_from_input)
    conv1 = next(x for x in model.layers if x.name == "conv1")
    st = stack_subject(model, conv1, 2, ["logits"])
    if shape_from_input:
        assert isinstance(st, str) and "'flat_shape'" in st
    else:
        assert not isinstance(st, str)
    for name in ("ig", "idgi", "gig"):
        got, want, _ = _both(model, name, "layer")
        for k in want:
            scale = float(np.abs(want[k]).max()) or 1.0
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6 * scale, err_msg=f"{name} {k}")


def build_bn_convnet(seed: int = 0) -> Model:
    """EfficientNet's stem and first block in small: x[N,3,12,12] -> Mul -> Add (input scaling) -> Conv 3x3
    -> BatchNormalization -> Relu -> depthwise Conv 3x3 -> BatchNormalization -> Relu -> Conv 1x1 ->
    BatchNormalization -> GlobalAveragePool -> Flatten -> MatMul.

    Its activations outweigh its convolution weights, so the gradient engine records it at onnxruntime's
    *all* level (fused chains, NCHWc layout).
    """
    rng = np.random.default_rng(seed)
    w: dict[str, np.ndarray] = {
        "scale": np.full((1, 3, 1, 1), 0.5, np.float32), "shift": np.full((1, 3, 1, 1), 0.1, np.float32),
        "W0": (rng.normal(size=(16, 3, 3, 3)) / 5).astype(np.float32),
        "W1": (rng.normal(size=(16, 1, 3, 3)) / 3).astype(np.float32),
        "W2": (rng.normal(size=(16, 16, 1, 1)) / 4).astype(np.float32),
        "W3": (rng.normal(size=(16, 3)) / 4).astype(np.float32),
    }
    nodes = [helper.make_node("Mul", ["x", "scale"], ["xs"], name="mul"),
             helper.make_node("Add", ["xs", "shift"], ["xa"], name="add")]
    src = "xa"
    for i, (group, k) in enumerate([(1, 3), (16, 3), (1, 1)]):
        bn = [f"s{i}", f"b{i}", f"m{i}", f"v{i}"]
        stats = (rng.uniform(0.5, 1.5, 16), 0.2 * rng.normal(size=16), 0.2 * rng.normal(size=16),
                 rng.uniform(0.5, 2.0, 16))
        w |= {name: v.astype(np.float32) for name, v in zip(bn, stats, strict=True)}
        nodes += [
            helper.make_node("Conv", [src, f"W{i}"], [f"c{i}"], name=f"conv{i}", pads=[k // 2] * 4, group=group),
            helper.make_node("BatchNormalization", [f"c{i}", *bn], [f"n{i}"], name=f"bn{i}"),
        ]
        src = f"n{i}"
        if i < 2:
            nodes.append(helper.make_node("Relu", [src], [f"r{i}"], name=f"relu{i}"))
            src = f"r{i}"
    nodes += [
        helper.make_node("GlobalAveragePool", [src], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("MatMul", ["f", "W3"], ["logits"], name="fc"),
    ]
    proto = make_model(nodes, {"x": (np.float32, ["N", 3, 12, 12])}, {"logits": (np.float32, ["N", 3])}, w)
    return load(onnx.shape_inference.infer_shapes(proto))  # value_info with the symbolic batch, as exporters write


def test_per_layer_paths_on_a_fused_recording():
    """The per-layer stacked model feeds G * N rows below the layer and N above it: the original value_info's
    shared symbolic batch must not reach onnxruntime, whose *all*-level planner would reuse a prefix
    buffer for a stacked value (it failed: 'Shape mismatch attempting to re-use buffer')."""
    from onnxslice.grad import GradientEngine

    model = build_bn_convnet()
    assert GradientEngine(model, "pred").recording_optimized
    got, want, ctx = _both(model, "ig", "layer")
    engine, _ = ctx._subject_engine(model.layers[0], 3)
    assert engine.chains and engine.recording_optimized  # the stacked model records fused too (its shapes are known)
    for k in want:
        scale = float(np.abs(want[k]).max()) or 1.0
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6 * scale, err_msg=k)


def _scaled_convnet(below: bool) -> Model:
    """x -> Conv -> Relu -> Conv -> (times a scalar: ReduceMax over the whole batch of x, or of the first
    Relu's output when ``below``) -> Relu -> Flatten -> MatMul."""
    rng = np.random.default_rng(4)
    w = {"W0": (rng.normal(size=(3, 1, 3, 3)) / 3).astype(np.float32),
         "W1": (rng.normal(size=(2, 3, 3, 3)) / 5).astype(np.float32),
         "W2": (rng.normal(size=(8, 3)) / 3).astype(np.float32)}
    nodes = [
        helper.make_node("Conv", ["x", "W0"], ["c0"], name="conv0"),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("ReduceMax", ["r0" if below else "x"], ["peak"], name="peak", keepdims=0),
        helper.make_node("Conv", ["r0", "W1"], ["c1"], name="conv1"),
        helper.make_node("Mul", ["c1", "peak"], ["s1"], name="scale"),
        helper.make_node("Relu", ["s1"], ["r1"], name="relu1"),
        helper.make_node("Flatten", ["r1"], ["f"], name="flat"),
        helper.make_node("MatMul", ["f", "W2"], ["logits"], name="fc"),
    ]
    proto = make_model(nodes, {"x": (np.float32, ["N", 1, 6, 6])}, {"logits": (np.float32, ["N", 3])}, w)
    return load(onnx.shape_inference.infer_shapes(proto))


def test_per_layer_paths_read_a_batch_scalar_from_above_as_it_is():
    """A float scalar computed from the batch above the layer (as a dynamic quantization scale is) has no
    sample axis to tile: the values below the layer read it as it is (tiling it made an invalid Concat of
    scalars, and onnxruntime refused the model)."""
    model = _scaled_convnet(below=False)
    got, want, ctx = _both(model, "ig", "layer")
    assert ctx._subject_engine(model.layers[1], 3) is not None  # conv1's points were stacked
    for k in want:
        scale = float(np.abs(want[k]).max()) or 1.0
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6 * scale, err_msg=k)


def test_points_do_not_stack_below_a_node_that_combines_the_batch():
    """A value computed from every sample of the batch below the layer (a reduction over the sample axis,
    a dynamic quantization range) would be shared by the stacked points: those points run one call each,
    with the numbers of unstacked calls."""
    model = _scaled_convnet(below=True)
    why = stack_subject(model, model.layers[0], 3, ["logits"])
    assert isinstance(why, str) and "'peak' (ReduceMax) combines the samples of a batch" in why
    assert stack_subject(model, model.layers[1], 3, ["logits"]) is not None  # nothing combines below conv1
    got, want, ctx = _both(model, "ig", "layer")
    assert "combines the samples" in (ctx.stack_problem() or "")  # no stacking of every layer either
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


@pytest.mark.parametrize(("op", "attrs", "axes", "mixes"), [
    ("ReduceMean", {"axes": [1], "keepdims": 1}, None, False),
    ("ReduceMean", {"axes": [0], "keepdims": 1}, None, True),
    ("ReduceMean", {"keepdims": 1}, None, True),  # every axis
    ("ReduceSum", {}, [2, 3], False),
    ("ReduceSum", {}, [-4], True),  # -rank is the sample axis
    ("ReduceSum", {"noop_with_empty_axes": 1}, None, False),
    ("ArgMax", {}, None, True),  # axis 0 by default
    ("ArgMax", {"axis": 1}, None, False),
    ("Softmax", {}, None, False),
    ("Softmax", {"axis": 0}, None, True),
    ("Flatten", {"axis": 0}, None, True),
    ("Flatten", {}, None, False),
    ("MeanVarianceNormalization", {}, None, True),  # axes [0, 2, 3] by default
    ("DynamicQuantizeLinear", {}, None, True),
])
def test_which_nodes_combine_the_samples_of_a_batch(op, attrs, axes, mixes):
    from onnxslice.sensitivity.stacked import sample_mixing

    inputs, inits = ["x"], {"W": np.ones((2, 1, 1, 1), np.float32)}
    if axes is not None:
        inits["axes"] = np.asarray(axes, np.int64)
        inputs.append("axes")
    outs = ["y", "scale", "zero"] if op == "DynamicQuantizeLinear" else ["y"]
    nodes = [helper.make_node("Conv", ["x0", "W"], ["x"], name="conv"),
             helper.make_node(op, inputs, outs, name="probe", **attrs)]
    out_type = np.uint8 if op == "DynamicQuantizeLinear" else np.int64 if op == "ArgMax" else np.float32
    rank = 2 if op == "Flatten" else 4  # every probe here keeps the dimensions
    proto = make_model(nodes, {"x0": (np.float32, ["N", 1, 4, 4])}, {"y": (out_type, [None] * rank)}, inits)
    model = load(onnx.shape_inference.infer_shapes(proto))
    assert (sample_mixing(model, model.nodes) is not None) == mixes
