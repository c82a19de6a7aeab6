"""The attacks of ``onnxslice.attacks`` on the reference models, against torch twins and their bounds.

Models: ``models/lenet5.onnx`` and ``models/resnet8_mnist.onnx``; data: ``builtin:mnist?split=test``.
FGSM and PGD are compared with the same attack written in torch autograd on a torch twin of the graph
(``_onnx_torch.OnnxTorch``, whose forward is checked against onnxruntime here too).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

pytest.importorskip("mlxtend")

from _common import ROOT

from onnxslice.attacks import (
    ATTACKS,
    STRENGTHS,
    _warp,
    accuracy,
    cw_l2,
    deepfool,
    fgsm,
    noise,
    pgd,
    predict,
    run_attack,
    spatial,
)
from onnxslice.data import load_data
from onnxslice.errors import DataError
from onnxslice.grad import GradientEngine
from onnxslice.model import load


def _model(name: str):
    path = ROOT / "models" / name
    if not path.exists():
        pytest.skip(f"models/{name} is not in this checkout")
    return load(path)


@pytest.fixture(scope="module")
def mnist():
    test = load_data("builtin:mnist?split=test")
    return test.x[:500], np.asarray(test.labels[:500])


@pytest.fixture(scope="module")
def lenet():
    return _model("lenet5.onnx")


@pytest.mark.slow
def test_fgsm_collapses_lenet5_accuracy(lenet, mnist):
    model = lenet
    x, y = mnist
    before = accuracy(model, x, y)
    adv = fgsm(model, x, y, epsilon=0.1)
    after = accuracy(model, adv, y)
    after2 = accuracy(model, fgsm(model, x, y, epsilon=0.2), y)
    rng = np.random.default_rng(0)  # random signs of the same size barely hurt: the gradient is what matters
    noisy = np.clip(x + 0.1 * np.sign(rng.standard_normal(x.shape)), 0, 1).astype(np.float32)
    with_noise = accuracy(model, noisy, y)
    print(
        f"LeNet-5 / builtin:mnist (500 test images): clean {before:.3f}, random-sign noise 0.1 {with_noise:.3f}, "
        f"FGSM eps=0.1 {after:.3f}, FGSM eps=0.2 {after2:.3f}"
    )
    assert before > 0.85
    assert np.abs(adv - x).max() <= 0.1 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    assert with_noise > before - 0.05
    assert after < before - 0.2
    assert after2 < 0.35


@pytest.mark.slow
def test_pgd_is_stronger_than_fgsm(lenet, mnist):
    model = lenet
    x, y = mnist[0][:200], mnist[1][:200]
    eng = GradientEngine(model, "loss", weights=[])
    a_fgsm = accuracy(model, fgsm(model, x, y, 0.1, engine=eng), y)
    adv = pgd(model, x, y, 0.1, steps=10, engine=eng, seed=1)
    a_pgd = accuracy(model, adv, y)
    print(f"PGD-10 eps=0.1: accuracy {a_pgd:.3f} (FGSM {a_fgsm:.3f})")
    assert a_pgd <= a_fgsm
    assert np.abs(adv - x).max() <= 0.1 + 1e-6


def test_attacks_refuse_a_non_loss_engine(lenet, mnist):
    x, y = mnist
    with pytest.raises(DataError, match="target='loss'"):
        fgsm(lenet, x[:2], y[:2], engine=GradientEngine(lenet, "pred"))
    with pytest.raises(DataError, match="steps"):
        pgd(lenet, x[:2], y[:2], steps=0)
    with pytest.raises(DataError, match="norm"):
        pgd(lenet, x[:2], y[:2], norm="1")
    with pytest.raises(DataError, match="unknown attack"):
        run_attack("nope", lenet, x[:2], y[:2])


# -- torch twins ---------------------------------------------------------------------------------
def _torch_attack(model, x, y, epsilon, steps, norm, start):
    """The same FGSM/PGD in torch autograd on the ONNX graph run by torch (float32, same start)."""
    torch = pytest.importorskip("torch")
    from _onnx_torch import OnnxTorch

    net = OnnxTorch(model).eval()
    xt = torch.from_numpy(x)
    yt = torch.from_numpy(y)
    adv = torch.from_numpy(start).clone()
    alpha = epsilon if steps == 0 else 2.5 * epsilon / steps
    for _ in range(max(1, steps)):
        adv.requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(net(adv), yt, reduction="sum")
        (g,) = torch.autograd.grad(loss, adv)
        with torch.no_grad():
            if norm == "inf":
                adv = torch.minimum(torch.maximum(adv + alpha * g.sign(), xt - epsilon), xt + epsilon)
            else:
                gn = g.reshape(len(g), -1).double().norm(dim=1).clamp_min(1e-12).reshape(-1, 1, 1, 1)
                d = adv + (alpha * g / gn).float() - xt
                dn = d.reshape(len(d), -1).double().norm(dim=1).reshape(-1, 1, 1, 1)
                d = (d * torch.clamp(epsilon / dn.clamp_min(1e-12), max=1.0)).float()
                adv = xt + d
            adv = adv.clamp(0, 1)
    return adv.detach().numpy()


@pytest.mark.parametrize("name", ["lenet5.onnx", "resnet8_mnist.onnx"])
def test_fgsm_and_pgd_match_a_torch_twin(name, mnist):
    """Same net in torch autograd, same seed and start.

    Samples whose loss is saturated (< 1e-3) are left out: there ``softmax - onehot`` is below float32
    resolution and both gradients are rounding. The loss gradients agree to float tolerance. On MNIST's
    flat background the true gradient is ~1e-9 (rounding noise), so its sign, and FGSM there, is
    arbitrary in both: FGSM is compared where ``|g|`` exceeds 1e-3 of the sample's largest entry. PGD
    iterates then drift apart on those pixels only: the final inputs must give the same predictions
    and differ by far less than the perturbation.
    """
    torch = pytest.importorskip("torch")
    from _onnx_torch import OnnxTorch

    from onnxslice.attacks import _Logits

    model = _model(name)
    x, y = mnist
    z = _Logits(model, "t")(x)
    loss = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1) - z[np.arange(len(y)), y]
    keep = np.nonzero(loss > 1e-3)[0][:24]  # a saturated loss has a float32 gradient of pure rounding
    assert len(keep) >= 8
    x, y = x[keep], y[keep]
    net = OnnxTorch(model)
    xt = torch.from_numpy(x).requires_grad_(True)
    logits = net(xt)
    np.testing.assert_allclose(_Logits(model, "t")(x), logits.detach().numpy(), atol=1e-4)
    (gt,) = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, torch.from_numpy(y), reduction="sum"), xt)
    gt = gt.numpy()
    # unfused, as torch runs it: a fused forward rounds ReLU kinks differently (see test_grad_chains.py)
    eng = GradientEngine(model, "loss", weights=[], fuse=False)
    g = eng(x, labels=y).inputs[model.input_names[0]]
    scale = np.abs(gt).reshape(len(x), -1).max(axis=1).reshape(-1, 1, 1, 1)
    assert np.abs(g - gt).max() <= 1e-4 * scale.max()
    ours = fgsm(model, x, y, 0.1, engine=eng)
    theirs = _torch_attack(model, x, y, 0.1, 0, "inf", x)
    sure = np.abs(gt) > 1e-3 * scale
    assert sure.mean() > 0.3
    np.testing.assert_allclose(ours[sure], theirs[sure], atol=1e-6)
    for norm, eps in (("inf", 0.1), ("2", 1.5)):
        start = pgd(model, x, y, eps, steps=1, step_size=0.0, norm=norm, seed=3, engine=eng)  # the random start
        ours = pgd(model, x, y, eps, steps=5, norm=norm, seed=3, engine=eng)
        theirs = _torch_attack(model, x, y, eps, 5, norm, start)
        drift = np.abs(ours - theirs).mean() / np.abs(ours - x).mean()
        assert drift < 0.25, (norm, drift)
        assert (predict(model, ours) == predict(model, theirs)).mean() >= 0.95


# -- every attack at its documented strength ------------------------------------------------------------
_N = {"cw-l2": 24, "deepfool": 48}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_each_attack_lowers_lenet5_accuracy_within_its_bound(name, lenet, mnist):
    n = _N.get(name, 96)
    x, y = mnist[0][:n], mnist[1][:n]
    before = accuracy(lenet, x, y)
    adv = run_attack(name, lenet, x, y)
    after = accuracy(lenet, adv, y)
    opts = STRENGTHS[name]
    d = (adv - x).reshape(n, -1).astype(np.float64)
    print(f"{name}: accuracy {before:.3f} -> {after:.3f} ({opts})")
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert adv.min() >= 0 and adv.max() <= 1
    if name in ("fgsm", "bim", "pgd", "square", "noise-uniform"):
        assert np.abs(d).max() <= opts["epsilon"] + 1e-6
    if name in ("pgd-l2", "deepfool", "cw-l2"):
        assert np.linalg.norm(d, axis=1).max() <= opts["epsilon"] + 1e-4
    if name.startswith("noise"):
        assert after >= before - 0.1  # the negative control barely hurts
    else:
        assert after <= before - 0.5, f"{name} only took accuracy from {before} to {after}"


@pytest.mark.slow
def test_attacks_on_resnet8(mnist):
    model = _model("resnet8_mnist.onnx")
    x, y = mnist[0][:48], mnist[1][:48]
    before = accuracy(model, x, y)
    for name in ("fgsm", "pgd", "square", "spatial"):
        after = accuracy(model, run_attack(name, model, x, y), y)
        print(f"ResNet-8 {name}: {before:.3f} -> {after:.3f}")
        assert after <= before - 0.5


def test_caps_and_spatial_bounds(lenet, mnist):
    x, y = mnist[0][:16], mnist[1][:16]
    adv = deepfool(lenet, x, y, epsilon=0.5, steps=3)
    assert np.linalg.norm((adv - x).reshape(16, -1), axis=1).max() <= 0.5 + 1e-4
    adv = cw_l2(lenet, x, y, epsilon=1.0, steps=5, search_steps=1)
    assert np.linalg.norm((adv - x).reshape(16, -1), axis=1).max() <= 1.0 + 1e-4
    adv, params = spatial(lenet, x, y, max_angle=10.0, max_shift=1, angles=3, return_params=True)
    assert np.abs(params[:, 0]).max() <= 10.0 and np.abs(params[:, 1:]).max() <= 1
    np.testing.assert_allclose(_warp(x, 0.0, 0, 0), x)
    shifted = _warp(x, 0.0, 2, 1)  # dx=2 columns right, dy=1 row down
    np.testing.assert_allclose(shifted[:, :, 1:, 2:], x[:, :, :-1, :-2])
    quarter = _warp(x[:, :, :, :], 90.0, 0, 0)
    np.testing.assert_allclose(quarter, np.rot90(x, k=-1, axes=(2, 3)), atol=1e-5)
    with pytest.raises(DataError, match="distribution"):
        noise(lenet, x, y, distribution="poisson")


def _int_model() -> onnx.ModelProto:
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3], np.ones(12, np.float32))
    graph = helper.make_graph(
        [helper.make_node("Cast", ["ids"], ["f"], to=TensorProto.FLOAT), helper.make_node("MatMul", ["f", "w"], ["y"])],
        "int_input",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_an_integer_input_is_a_one_line_error(name):
    model = load(_int_model())
    ids = np.ones((2, 4), np.int64)
    with pytest.raises(DataError, match="integer") as e:
        run_attack(name, model, ids, np.zeros(2, np.int64))
    assert "\n" not in str(e.value)


def test_integer_data_for_a_float_model_is_refused(lenet):
    with pytest.raises(DataError, match="pass float data"):
        fgsm(lenet, np.zeros((2, 1, 28, 28), np.int64), [0, 1])
