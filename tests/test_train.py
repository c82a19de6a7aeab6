"""onnxslice.train.finetune against a torch twin: same batches, same updates, same weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from _common import ROOT
from _onnx_torch import OnnxTorch
from onnx import numpy_helper

from onnxslice.data import Dataset, load_data
from onnxslice.errors import DataError
from onnxslice.model import Model, load
from onnxslice.train import finetune

LENET = ROOT / "models" / "lenet5.onnx"


@pytest.fixture(scope="module")
def lenet() -> Model:
    return load(LENET)


def _perturbed(model: Model, scale: float, seed: int = 0) -> Model:
    """``model`` with Gaussian noise (``scale`` x each layer weight's std) added to its layer weights."""
    rng = np.random.default_rng(seed)
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    weights = {layer.weight for layer in model.layers}
    for t in proto.graph.initializer:
        if t.name in weights:
            w = numpy_helper.to_array(t)
            noisy = (w + rng.normal(0, scale * float(w.std()), w.shape)).astype(np.float32)
            t.CopyFrom(numpy_helper.from_array(noisy, t.name))
    return load(proto)


@pytest.fixture(scope="module")
def noisy_lenet(lenet: Model) -> Model:
    """LeNet-5 knocked off its optimum, so that every gradient is well above float32 rounding."""
    return _perturbed(lenet, 0.5)


@pytest.fixture(scope="module")
def mnist() -> Dataset:
    return load_data("builtin:mnist?split=train").subset(slice(0, 200))


def _torch_twin(
    model: Model,
    data: Dataset,
    *,
    optimizer: str,
    lr: float,
    batch_size: int,
    epochs: int,
    seed: int,
    loss: str = "ce",
    teacher: Model | None = None,
    temperature: float = 1.0,
) -> tuple[dict[str, np.ndarray], list[float]]:
    """Train the torch twin of ``model`` on the batches finetune draws; returns weights and losses."""
    torch.manual_seed(0)
    net = OnnxTorch(model)
    names = [w for layer in model.layers for w in (layer.weight, layer.bias) if w]
    params = [net.param(n) for n in names]
    for p in net.params.values():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr) if optimizer == "adam" else torch.optim.SGD(params, lr=lr)
    x = torch.from_numpy(data.x)
    y = torch.from_numpy(np.asarray(data.labels, dtype=np.int64))
    t_logits = None
    if teacher is not None:
        with torch.no_grad():
            t_logits = OnnxTorch(teacher)(x)
    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(epochs):
        order = rng.permutation(len(data))
        for s in range(0, len(data), batch_size):
            idx = torch.from_numpy(order[s : s + batch_size])
            opt.zero_grad()
            z = net(x[idx])
            if loss == "ce":
                value = F.cross_entropy(z, y[idx])
            else:
                assert t_logits is not None
                t = temperature
                log_ps = F.log_softmax(z / t, 1)
                log_pt = F.log_softmax(t_logits[idx] / t, 1)
                value = F.kl_div(log_ps, log_pt, reduction="batchmean", log_target=True) * t * t
            value.backward()
            opt.step()
            losses.append(float(value.detach()))
    return {n: net.param(n).detach().numpy().copy() for n in names}, losses


@pytest.mark.parametrize(("optimizer", "lr"), [("sgd", 0.05), ("adam", 2e-3)])
def test_finetune_matches_torch_twin(noisy_lenet: Model, mnist: Dataset, optimizer: str, lr: float) -> None:
    lenet = noisy_lenet
    res = finetune(lenet, mnist, epochs=1, lr=lr, optimizer=optimizer, batch_size=32, seed=3, progress=False)
    ref, ref_losses = _torch_twin(lenet, mnist, optimizer=optimizer, lr=lr, batch_size=32, epochs=1, seed=3)
    assert res.steps == 7 and len(res.losses) == 7  # 200 samples: 6 full batches and one of 8
    np.testing.assert_allclose(res.losses, ref_losses, rtol=1e-3, atol=1e-6)
    moved = 0.0
    close: list[np.ndarray] = []
    for name, w in ref.items():
        start = lenet.initializer(name)
        got = res.model.initializer(name)
        moved = max(moved, float(np.abs(w - start).max()))
        # Adam's normalised step (up to ~lr per entry whatever the gradient's size) turns float32 rounding
        # of near-zero gradients (~1e-6 relative, both sides) into differences of up to ~lr on those few
        # entries; test_adam_and_sgd_updates_match_torch checks the update rule itself exactly.
        atol = lr if optimizer == "adam" else 2e-6
        np.testing.assert_allclose(got, w, rtol=1e-4, atol=atol, err_msg=name)
        close.append(np.abs(got - w).ravel() <= 2e-6 + 1e-4 * np.abs(w).ravel())
        np.testing.assert_array_equal(got, res.weights[name])
    assert moved > 1e-3  # the steps really changed the weights
    assert np.mean(np.concatenate(close)) > 0.98  # nearly every entry agrees to float32 rounding


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_adam_and_sgd_updates_match_torch(optimizer: str) -> None:
    from onnxslice.train import _Optimizer

    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(4, 5)).astype(np.float32)
    grads = [rng.normal(size=(4, 5)).astype(np.float32) * s for s in (1.0, 1e-3, 10.0, 0.1, 1.0)]
    ours = {"w": w0.copy()}
    opt = _Optimizer(optimizer, 0.01, ours)
    p = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    ref = torch.optim.Adam([p], lr=0.01) if optimizer == "adam" else torch.optim.SGD([p], lr=0.01)
    for g in grads:
        opt.step({"w": g})
        p.grad = torch.from_numpy(g)
        ref.step()
        np.testing.assert_allclose(ours["w"], p.detach().numpy(), rtol=1e-6, atol=1e-7)


def test_finetune_distill_matches_torch_twin(lenet: Model, mnist: Dataset) -> None:
    rng = np.random.default_rng(0)
    noisy = {n: np.asarray(lenet.initializer(n)) + rng.normal(0, 0.02, lenet.initializer(n).shape).astype(np.float32)
             for n in ("fc1.weight", "fc2.weight")}  # fmt: skip
    proto = onnx.ModelProto()
    proto.CopyFrom(lenet.proto)
    for t in proto.graph.initializer:
        if t.name in noisy:
            t.CopyFrom(numpy_helper.from_array(noisy[t.name], t.name))
    student = load(proto)
    res = finetune(student, mnist, loss="distill", teacher=lenet, temperature=2.0, lr=1e-3, seed=1, progress=False)
    ref, ref_losses = _torch_twin(
        student, mnist, optimizer="adam", lr=1e-3, batch_size=32, epochs=1, seed=1, loss="distill", teacher=lenet,
        temperature=2.0,
    )  # fmt: skip
    np.testing.assert_allclose(res.losses, ref_losses, rtol=1e-3, atol=1e-6)
    assert res.losses[0] > 0
    close = []
    for name, w in ref.items():
        got = res.model.initializer(name)
        np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-3, err_msg=name)  # Adam: see above
        close.append(np.abs(got - w).ravel() <= 2e-6 + 1e-4 * np.abs(w).ravel())
    assert np.mean(np.concatenate(close)) > 0.98


def test_finetune_deterministic_frozen_and_steps(lenet: Model, mnist: Dataset) -> None:
    mask = np.zeros(lenet.initializer("fc1.weight").shape, dtype=bool)
    mask[:, ::2] = True
    a = finetune(lenet, mnist, steps=10, lr=5e-3, seed=7, progress=False, frozen={"fc1.weight": mask})
    b = finetune(lenet, mnist, steps=10, lr=5e-3, seed=7, progress=False, frozen={"fc1.weight": mask})
    assert a.steps == 10 and len(a.losses) == 10 and a.epochs == pytest.approx(10 / 7, abs=1e-3)
    for name in a.weights:
        np.testing.assert_array_equal(a.weights[name], b.weights[name])
    w0 = lenet.initializer("fc1.weight")
    w1 = a.model.initializer("fc1.weight")
    np.testing.assert_array_equal(w1[mask], w0[mask])
    assert np.abs(w1[~mask] - w0[~mask]).max() > 0
    c = finetune(lenet, mnist, steps=10, lr=5e-3, seed=8, progress=False)
    assert any(not np.array_equal(a.weights[n], c.weights[n]) for n in a.weights if n != "fc1.weight")
    meta = {p.key: p.value for p in a.model.proto.metadata_props}
    assert meta["onnxslice.pass"] == "finetune"
    assert "adam" in repr(a) and "10 steps" in repr(a)


def test_finetune_trainable_subset_only_moves_those(lenet: Model, mnist: Dataset, tmp_path: Path) -> None:
    res = finetune(str(LENET), mnist, steps=3, lr=1e-2, trainable=["fc3.weight"], progress=False)
    for name in lenet.initializer_names:
        same = np.array_equal(res.model.initializer(name), lenet.initializer(name))
        assert same == (name != "fc3.weight"), name
    res.model.save(tmp_path / "tuned.onnx")
    assert load(tmp_path / "tuned.onnx").fingerprint == lenet.fingerprint


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"optimizer": "rmsprop"}, "unknown optimizer"),
        ({"loss": "mse"}, "unknown loss"),
        ({"lr": 0.0}, "learning rate"),
        ({"epochs": 0}, "epochs"),
        ({"steps": 0}, "steps"),
        ({"batch_size": 0}, "batch_size"),
        ({"temperature": -1.0}, "temperature"),
        ({"trainable": ["nope"]}, "no initializer nope"),
        ({"frozen": {"fc1.weight": np.zeros(3, dtype=bool)}}, "frozen mask"),
    ],
)
def test_finetune_bad_arguments(lenet: Model, mnist: Dataset, kwargs: dict, match: str) -> None:
    with pytest.raises(DataError, match=match):
        finetune(lenet, mnist, progress=False, **kwargs)


def test_finetune_ce_needs_labels(lenet: Model, mnist: Dataset) -> None:
    with pytest.raises(DataError, match="needs labels"):
        finetune(lenet, Dataset(dict(mnist.inputs), None, "unlabelled"), progress=False)
