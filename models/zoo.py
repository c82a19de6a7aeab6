"""The reference models: what they are, where their files live, and how to build the missing ones.

Tests, benchmarks and the CLI ask this module for a model by name (``zoo.path("lenet5")``) instead of
hard-coding paths. Small models are committed beside this file; large ones are built on demand into
``models/build/`` (git-ignored) by the script named in their entry. Importing this module never imports
torch: only *building* a model does (``pip install torch==2.13.0``, the ``zoo`` extra).

Example::

    from models import zoo
    zoo.path("lenet5")                 # models/lenet5.onnx (committed)
    zoo.ensure("resnet18_cifar")       # builds models/build/resnet18_cifar.onnx once, then reuses it
    zoo.accuracy("lenet5")             # top-1 on its evaluation data, measured with onnxruntime
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["BUILD_DIR", "MODELS", "MODELS_DIR", "ZooModel", "accuracy", "ensure", "get", "names", "path",
           "predict"]

MODELS_DIR = Path(__file__).resolve().parent
BUILD_DIR = MODELS_DIR / "build"


@dataclass(frozen=True)
class ZooModel:
    """One reference model.

    Attributes:
        name: the key (also the file stem).
        framework: what produced the ONNX file (``torch``, ``sklearn``, ``tensorflow``).
        script: the module under ``models`` that builds it (``python -m models.<script>``).
        input_shape: the shape of one sample (the batch axis is dynamic in every file).
        data: the data spec it is evaluated on (``None``: no meaningful labels for it).
        committed: True when the file is in the repository, False when it is built on demand.
        trained: False for seeded, untrained weights (benchmark-only models).
        output: the name of the output that holds class scores.
        description: one line for tables.
    """

    name: str
    framework: str
    script: str
    input_shape: tuple[int, ...]
    data: str | None
    committed: bool
    trained: bool
    output: str
    description: str

    @property
    def file(self) -> Path:
        """Where the ONNX file is (or will be once built)."""
        return (MODELS_DIR if self.committed else BUILD_DIR) / f"{self.name}.onnx"

    @property
    def command(self) -> str:
        """The command, run from the repository root, that (re)builds the file."""
        return f"python -m models.{self.script}" + ("" if self.script == self.name else f" {self.name}")


MODELS: dict[str, ZooModel] = {
    m.name: m
    for m in [
        ZooModel("lenet5", "torch", "lenet5", (1, 28, 28), "builtin:mnist?split=test", True, True, "logits",
                 "LeNet-5 (Conv-Tanh-AvgPool x2, 3 Gemm) trained on built-in MNIST"),
        ZooModel("resnet8_mnist", "torch", "resnet8_mnist", (1, 28, 28), "builtin:mnist?split=test", True, True,
                 "logits", "ResNet-8 (stem + 3 BasicBlock stages, BatchNormalization) trained on built-in MNIST"),
        ZooModel("resnet10_cifar", "torch", "resnet_cifar", (3, 32, 32), None, False, False, "logits",
                 "CIFAR ResNet-10 (BasicBlock [1,1,1,1], widths 64-512), seeded untrained weights"),
        ZooModel("resnet18_cifar", "torch", "resnet_cifar", (3, 32, 32), None, False, False, "logits",
                 "CIFAR ResNet-18 (BasicBlock [2,2,2,2], widths 64-512), seeded untrained weights"),
        ZooModel("efficientnet_lite0", "torch", "efficientnet_lite0", (3, 224, 224), "builtin:samples-imagenet",
                 True, True, "logits",
                 "EfficientNet-Lite0, real ImageNet weights, input normalization baked in ([0,1] RGB)"),
        ZooModel("mlp_digits", "sklearn", "mlp_digits", (64,), "builtin:digits?split=test", True, True,
                 "probabilities", "scikit-learn MLPClassifier (64-64-32-10) on built-in digits, via skl2onnx"),
        ZooModel("mlp_digits_zipmap", "sklearn", "mlp_digits", (64,), "builtin:digits?split=test", True, True,
                 "output_probability",
                 "the same MLP exported with skl2onnx's default ZipMap output (a sequence of maps)"),
        ZooModel("keras_mnist", "tensorflow", "keras_mnist", (1, 28, 28), "builtin:mnist?split=test", True, True,
                 "logits", "Keras CNN (Conv-BN-ReLU-MaxPool, Conv-ReLU-MaxPool, Dense) on built-in MNIST, via tf2onnx"),
    ]
}


def names() -> list[str]:
    """All reference model names."""
    return list(MODELS)


def get(name: str) -> ZooModel:
    """The entry called ``name``.

    Raises:
        KeyError: unknown name (the message lists the known ones).
    """
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"no reference model '{name}'; known: {', '.join(MODELS)}") from None


def path(name: str, *, build: bool = True) -> Path:
    """The ONNX file of ``name``; an on-demand model is built first when missing and ``build`` is on.

    Raises:
        FileNotFoundError: the file is missing and cannot or may not be built here.
    """
    entry = get(name)
    if entry.file.is_file():
        return entry.file
    if entry.committed:
        raise FileNotFoundError(f"'{entry.file}' should be in the repository; rebuild it with `{entry.command}`")
    if not build:
        raise FileNotFoundError(f"'{entry.file}' is built on demand: run `{entry.command}` or zoo.ensure('{name}')")
    return ensure(name)


def ensure(name: str, *, force: bool = False) -> Path:
    """Build ``name`` with its script if its file is missing (or ``force``); return the file.

    Building needs torch (``pip install torch==2.13.0``), scikit-learn/skl2onnx or tensorflow-cpu/tf2onnx,
    depending on the model.

    Raises:
        FileNotFoundError: the builder's framework is not installed.
    """
    entry = get(name)
    if entry.file.is_file() and not force:
        return entry.file
    module_name = {"torch": "torch", "sklearn": "skl2onnx", "tensorflow": "tf2onnx"}[entry.framework]
    if importlib.util.find_spec(module_name) is None:
        raise FileNotFoundError(
            f"'{entry.file}' is missing and building it needs {module_name}: "
            + {"torch": "pip install torch==2.13.0", "skl2onnx": "pip install 'onnxslice[apps]'",
               "tf2onnx": "pip install tensorflow-cpu tf2onnx"}[module_name]
        )
    builder = importlib.import_module(f"models.{entry.script}")
    builder.build(name, entry.file)
    return entry.file


def predict(name: str, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Class scores of ``name`` on ``x`` from a plain onnxruntime CPU session (one row per sample)."""
    import onnx
    import onnxruntime as ort

    entry = get(name)
    proto = onnx.load(str(path(name)))
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    in_name = sess.get_inputs()[0].name
    outs = []
    for s in range(0, len(x), batch_size):
        res = sess.run([entry.output], {in_name: x[s : s + batch_size]})[0]
        if isinstance(res, list):  # ZipMap: a list of {class: probability} maps
            res = np.array([[row[k] for k in sorted(row)] for row in res], dtype=np.float32)
        outs.append(np.asarray(res))
    return np.concatenate(outs)


def accuracy(name: str, data: str | None = None) -> float:
    """Top-1 accuracy of ``name`` on ``data`` (default: its own evaluation spec), with onnxruntime.

    Raises:
        ValueError: the model has no labelled evaluation data.
    """
    from onnxslice.data import load_data

    spec = data or get(name).data
    if spec is None:
        raise ValueError(f"'{name}' has no labelled evaluation data (its weights are untrained)")
    ds = load_data(spec)
    assert ds.labels is not None
    x = ds.x.reshape((len(ds), *get(name).input_shape))
    return float(np.mean(predict(name, x).argmax(axis=1) == ds.labels))
