"""Offline natural photos for the ImageNet-model benchmarks: disjoint calibration and evaluation sets.

Photos come from packages already installed: scikit-learn's two sample images, matplotlib's
``grace_hopper.jpg`` and scikit-image's bundled sample photos (``pip install scikit-image``; grey ones
are repeated over the three channels), plus foolbox's 20 labelled ImageNet samples
(``builtin:samples-imagenet``). A photo is either a calibration photo or an evaluation photo, never
both; each set is made of random square crops (side 35-100% of the photo's shorter side, resized to
224, random horizontal flip), RGB in [0, 1], NCHW.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

#: Photos used only for calibration (package, file).
CALIBRATION = (("sklearn", "china.jpg"), ("sklearn", "flower.jpg"), ("skimage", "astronaut.png"),
               ("skimage", "coffee.png"), ("skimage", "rocket.jpg"), ("skimage", "camera.png"),
               ("skimage", "brick.png"), ("skimage", "grass.png"))
#: Photos used only for evaluation (besides the 20 labelled ImageNet samples).
EVALUATION = (("skimage", "chelsea.png"), ("skimage", "motorcycle_left.png"), ("matplotlib", "grace_hopper.jpg"),
              ("skimage", "hubble_deep_field.jpg"), ("skimage", "gravel.png"), ("skimage", "coins.png"),
              ("skimage", "moon.png"), ("skimage", "retina.jpg"))


def _folder(package: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"{package} is not installed")
    base = Path(spec.origin).parent
    return {"sklearn": base / "datasets" / "images", "skimage": base / "data",
            "matplotlib": base / "mpl-data" / "sample_data"}[package]


def photo(package: str, name: str) -> np.ndarray:
    """One photo as float32 HxWx3 in [0, 1]."""
    from PIL import Image

    with Image.open(_folder(package) / name) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return arr


def available(photos: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    """The photos whose package is installed."""
    out = []
    for pkg, name in photos:
        try:
            if (_folder(pkg) / name).is_file():
                out.append((pkg, name))
        except ModuleNotFoundError:
            continue
    return out


def crops(photos: tuple[tuple[str, str], ...], n: int, seed: int, size: int = 224) -> np.ndarray:
    """``n`` random crops, cycling over the available ``photos`` (NCHW float32 in [0, 1])."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    imgs = [photo(*p) for p in available(photos)]
    if not imgs:
        raise FileNotFoundError("no sample photo is available (install scikit-learn / scikit-image)")
    out = []
    for i in range(n):
        im = imgs[i % len(imgs)]
        h, w = im.shape[:2]
        side = int(min(h, w) * rng.uniform(0.35, 1.0))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        c = Image.fromarray((im[y : y + side, x : x + side] * 255).astype(np.uint8)).resize(
            (size, size), Image.Resampling.BILINEAR)
        a = np.asarray(c, dtype=np.float32) / 255.0
        if rng.random() < 0.5:
            a = a[:, ::-1]
        out.append(a.transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(out), dtype=np.float32)


def describe(photos: tuple[tuple[str, str], ...]) -> str:
    """The available photos' names, comma-separated."""
    return ", ".join(os.path.splitext(n)[0] for _, n in available(photos))
