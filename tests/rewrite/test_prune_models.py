"""Pruning the reference models (``models/``): every pruned model runs in onnxruntime, keeps its I/O,
removes the planned fraction of prunable parameters (within 2%) and its file shrinks by their bytes.

Uses two real samples per model; ResNet-10 is built on demand (torch) and runs with the slow tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxslice as osl
from onnxslice.plans import plan_pruning
from onnxslice.rewrite import prune
from onnxslice.testing import run_ort

ROOT = Path(__file__).resolve().parents[2]

from models import zoo  # noqa: E402

#: committed models with tensor outputs (mlp_digits_zipmap's sequence-of-maps output has no channels to keep)
COMMITTED = ["lenet5", "resnet8_mnist", "keras_mnist", "mlp_digits", "efficientnet_lite0"]


def _samples(name: str, model: osl.Model, n: int = 2) -> np.ndarray:
    entry = zoo.get(name)
    if entry.data is not None:
        return osl.load_data(entry.data).subset(slice(0, n)).bind(model)[model.input_names[0]]
    return np.random.default_rng(0).random((n, *entry.input_shape), dtype=np.float32)


def _model(name: str) -> tuple[osl.Model, Path]:
    path = zoo.path(name) if zoo.get(name).committed else zoo.ensure(name)
    return osl.load(path), path


def _check_pruned(name: str, ratio: float, tmp_path: Path) -> None:
    model, src = _model(name)
    x = _samples(name, model)
    plan = plan_pruning(model, ratio)
    pruned = prune(model, plan)
    # the planned ratio: the fraction of prunable parameters removed, counted from the emitted model
    removed = model.num_params - pruned.num_params
    assert removed == plan.meta["removed_params"]
    assert abs(removed / plan.meta["prunable_params"] - ratio) <= 0.02
    # same inputs and outputs (names, dtypes, shapes), runs, and gives outputs of the same shapes
    assert [(v.name, v.dtype, v.shape) for v in pruned.inputs] == [(v.name, v.dtype, v.shape) for v in model.inputs]
    assert [(v.name, v.dtype, v.shape) for v in pruned.outputs] == [(v.name, v.dtype, v.shape) for v in model.outputs]
    feed = {model.input_names[0]: x}
    before, after = run_ort(model, feed), run_ort(pruned, feed)
    assert [a.shape for a in after] == [b.shape for b in before]
    assert all(np.all(np.isfinite(a)) for a in after)
    # the file loses the float32 bytes of the removed parameters, less the plan recorded in metadata_props
    out = pruned.save(tmp_path / f"{name}.pruned.onnx")
    meta_bytes = sum(len(p.key) + len(p.value) for p in pruned.proto.metadata_props)
    shrink = src.stat().st_size - out.stat().st_size
    assert shrink > 0
    assert abs(shrink - (4 * removed - meta_bytes)) < 4096 + 0.002 * src.stat().st_size
    onnx.checker.check_model(str(out), full_check=True)


@pytest.mark.parametrize("name", COMMITTED)
def test_prune_reference_model_runs_meets_ratio_and_shrinks(name, tmp_path):
    _check_pruned(name, 0.3, tmp_path)


@pytest.mark.parametrize("ratio", [0.1, 0.5])
def test_prune_reference_lenet5_other_ratios(ratio, tmp_path):
    _check_pruned("lenet5", ratio, tmp_path)


@pytest.mark.slow
def test_prune_reference_resnet10_built_on_demand(tmp_path):
    pytest.importorskip("torch")
    _check_pruned("resnet10_cifar", 0.3, tmp_path)


@pytest.mark.parametrize("name", ["lenet5", "resnet8_mnist"])
def test_prune_reference_unstructured_zeroes_ratio_and_keeps_shapes(name):
    model, _ = _model(name)
    pruned = prune(model, plan_pruning(model, 0.3, mode="unstructured"))
    total = sum(model.initializer(x.weight).size for x in model.layers)
    zeros = sum(int((pruned.initializer(x.weight) == 0).sum()) for x in model.layers)
    assert abs(zeros / total - 0.3) <= 0.01
    assert pruned.num_params == model.num_params
    x = _samples(name, model)
    assert run_ort(pruned, {model.input_names[0]: x})[0].shape == run_ort(model, {model.input_names[0]: x})[0].shape


def test_prune_reference_lenet5_low_ratio_keeps_most_accuracy():
    """At 10% (uniform L1, no fine-tuning) LeNet-5 keeps most of its MNIST accuracy."""
    from onnxslice.rewrite.fidelity import compare_outputs, run_outputs

    model, _ = _model("lenet5")
    ds = osl.load_data("builtin:mnist?split=test").subset(slice(0, 500))
    ref = run_outputs(model, ds)
    l1 = compare_outputs(ref, run_outputs(prune(model, plan_pruning(model, 0.1)), ds), ds.labels)
    assert l1.ref_accuracy is not None and l1.ref_accuracy > 0.95
    assert l1.accuracy is not None and l1.accuracy > l1.ref_accuracy - 0.1
    assert l1.top1_agreement is not None and l1.top1_agreement > 0.85


def test_prune_reference_efficientnet_round_to_16_keeps_channel_blocks():
    """Channel counts stay multiples of 16 (onnxruntime's NCHWc block on AVX-512), and FLOPs still drop."""
    from onnxslice.flops import count_macs
    from onnxslice.rewrite.groups import discover_groups

    model, _ = _model("efficientnet_lite0")
    sizes = {g.leader: g.size for g in discover_groups(model).prunable}
    plan = plan_pruning(model, 0.3, round_to=16)
    kept = {k: sizes[k] - len(d["remove"]) for k, d in plan.layers.items()}
    assert all(v == sizes[k] or v % 16 == 0 for k, v in kept.items())
    assert abs(plan.meta["achieved_ratio"] - 0.3) <= 0.02
    pruned = prune(model, plan)
    assert count_macs(pruned).total < 0.8 * count_macs(model).total
    x = _samples("efficientnet_lite0", model, 1)
    assert run_ort(pruned, {model.input_names[0]: x})[0].shape == (1, 1000)
