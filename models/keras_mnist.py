"""A Keras CNN on built-in MNIST, exported with tf2onnx: ``python -m models.keras_mnist``.

The third framework of the zoo. Writes ``models/keras_mnist.onnx``. Needs ``tensorflow-cpu`` and
``tf2onnx`` (not in any extra: TensorFlow is a ~270 MB wheel, 1.3 GB installed; the ONNX file is
committed so nothing else needs them). Keras is channels-last; the export is given ``inputs_as_nchw``
so the ONNX model takes float32[N,1,28,28] like the torch MNIST models (tf2onnx adds a Transpose).

Model: Conv2D(16, 3x3)-BatchNormalization-ReLU-MaxPool, Conv2D(32, 3x3)-ReLU-MaxPool, Flatten,
Dense(10); Adam, 15 epochs, seed 0 with deterministic TensorFlow ops. The inference-mode Keras
BatchNormalization comes out folded into the Conv before it (TensorFlow's graph freezing and tf2onnx's
optimizer fold it; keeping it was not attempted), so this file has no BatchNormalization node, unlike
the torch exports. Retraining gives the same accuracy; the file's bytes may differ in the last bits.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as `python models/keras_mnist.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import zoo
from onnxslice.data import load_data

SEED = 0
TRAIN, TEST = "builtin:mnist?split=train", "builtin:mnist?split=test"
IR_VERSION = 10
OPSET = 17


def build(name: str = "keras_mnist", dest: Path | None = None) -> dict[str, float]:
    """Train the Keras CNN, export it with tf2onnx to ``dest`` (default: its zoo file), measure it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # reproducible sums
    import onnx
    import onnxruntime as ort
    import tensorflow as tf
    import tf2onnx

    tf.keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()
    tf.config.threading.set_intra_op_parallelism_threads(2)
    train, test = load_data(TRAIN), load_data(TEST)
    to_nhwc = (0, 2, 3, 1)
    layers = tf.keras.layers
    net = tf.keras.Sequential([
        tf.keras.Input((28, 28, 1), name="x"),
        layers.Conv2D(16, 3, use_bias=False, name="conv1"),
        layers.BatchNormalization(name="bn1"),
        layers.ReLU(name="relu1"),
        layers.MaxPooling2D(name="pool1"),
        layers.Conv2D(32, 3, activation="relu", name="conv2"),
        layers.MaxPooling2D(name="pool2"),
        layers.Flatten(name="flatten"),
        layers.Dense(10, name="fc"),
    ], name="keras_mnist")
    net.compile(optimizer=tf.keras.optimizers.Adam(2e-3),
                loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    net.fit(train.x.transpose(to_nhwc), train.labels, epochs=15, batch_size=64, verbose=2, shuffle=True)
    keras_logits = net.predict(test.x.transpose(to_nhwc), verbose=0)

    spec = (tf.TensorSpec((None, 28, 28, 1), tf.float32, name="x"),)
    fn = tf.function(lambda x: {"logits": net(x, training=False)}, input_signature=spec)
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=OPSET, inputs_as_nchw=["x"])
    proto.ir_version = IR_VERSION
    for vi in [*proto.graph.input, *proto.graph.output]:  # tf2onnx names the batch axis unk__NN
        vi.type.tensor_type.shape.dim[0].dim_param = "batch"
    for k, v in {"onnxslice.model": name, "seed": str(SEED), "train_data": TRAIN, "tensorflow": tf.__version__,
                 "tf2onnx": tf2onnx.__version__, "build": "python -m models.keras_mnist"}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(proto, full_check=True)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {sess.get_inputs()[0].name: test.x})[0]
    acc = float(np.mean(logits.argmax(1) == test.labels))
    diff = float(np.max(np.abs(logits - keras_logits)))
    out = dest or zoo.get(name).file
    onnx.save_model(proto, str(out))
    hist: dict[str, int] = {}
    for n in proto.graph.node:
        hist[n.op_type] = hist.get(n.op_type, 0) + 1
    print(f"wrote {out} ({out.stat().st_size / 1024:.1f} KiB, IR {proto.ir_version}); {name}: test accuracy "
          f"{acc:.4f} on {TEST} ({len(test)} images, onnxruntime); Keras vs onnxruntime max |diff| {diff:.2e}; "
          f"ops: {', '.join(f'{k} x{v}' for k, v in hist.items())}")
    return {"test_accuracy": acc, "max_abs_diff": diff}


if __name__ == "__main__":
    build()
