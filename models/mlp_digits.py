"""A scikit-learn MLPClassifier on built-in digits, exported with skl2onnx: ``python -m models.mlp_digits``.

The second framework of the zoo (the "any framework" promise). Writes two files from one fitted model:

- ``models/mlp_digits.onnx``: exported with ``options={"zipmap": False}``, outputs ``label`` (int64[N])
  and ``probabilities`` (float32[N,10]): plain tensors that onnxslice records like any other value.
- ``models/mlp_digits_zipmap.onnx``: skl2onnx's default export, whose ``output_probability`` is a
  ZipMap (``ai.onnx.ml``): a sequence of {class: probability} maps, not a tensor.

Model: 64 inputs (8x8 digits scaled to [0, 1]), hidden layers (64, 32) with ReLU, Adam, seed 0,
trained on ``builtin:digits?split=train`` (1,438 images); accuracy on ``split=test`` (359 images).
Opsets: ai.onnx 17, ai.onnx.ml 3.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as `python models/mlp_digits.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import zoo
from onnxslice.data import load_data

SEED = 0
TRAIN, TEST = "builtin:digits?split=train", "builtin:digits?split=test"
IR_VERSION = 10
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}


def fit() -> object:
    """The fitted MLPClassifier (deterministic for the seed)."""
    from sklearn.neural_network import MLPClassifier

    train = load_data(TRAIN)
    clf = MLPClassifier(hidden_layer_sizes=(64, 32), activation="relu", solver="adam", max_iter=500,
                        random_state=SEED)
    return clf.fit(train.x, train.labels)


def export(clf: object, zipmap: bool) -> object:
    """The skl2onnx ModelProto of ``clf`` with IR version 10 and provenance metadata."""
    import onnx
    from skl2onnx import to_onnx

    x = load_data(TEST).x[:1]
    opts = None if zipmap else {id(clf): {"zipmap": False}}
    proto = to_onnx(clf, x, target_opset=TARGET_OPSET, options=opts)
    proto.ir_version = IR_VERSION
    for k, v in {"onnxslice.model": "mlp_digits" + ("_zipmap" if zipmap else ""), "seed": str(SEED),
                 "train_data": TRAIN, "build": "python -m models.mlp_digits"}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _set_dynamic_batch(proto: object) -> None:
    for vi in [*proto.graph.input, *proto.graph.output]:  # type: ignore[attr-defined]
        tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
        if tt is not None and tt.HasField("shape") and len(tt.shape.dim):
            tt.shape.dim[0].dim_param = "batch"


def build(name: str = "mlp_digits", dest: Path | None = None) -> dict[str, float]:
    """Fit the MLP and write both files (``name`` and ``dest`` pick the one the caller asked for)."""
    import onnx
    import onnxruntime as ort

    clf = fit()
    test = load_data(TEST)
    sk_acc = float(np.mean(clf.predict(test.x) == test.labels))  # type: ignore[attr-defined]
    results: dict[str, float] = {"sklearn_accuracy": sk_acc}
    for zipmap in (False, True):
        key = "mlp_digits" + ("_zipmap" if zipmap else "")
        proto = export(clf, zipmap)
        _set_dynamic_batch(proto)
        sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])  # type: ignore[attr-defined]
        label, probs = sess.run(None, {sess.get_inputs()[0].name: test.x})
        if zipmap:
            probs = np.array([[row[k] for k in sorted(row)] for row in probs], dtype=np.float32)
        acc = float(np.mean(np.asarray(label) == test.labels))
        diff = float(np.max(np.abs(probs - clf.predict_proba(test.x))))  # type: ignore[attr-defined]
        out = dest if (dest is not None and key == name) else zoo.get(key).file
        onnx.save_model(proto, str(out))  # type: ignore[arg-type]
        ops = sorted({f"{n.domain + '::' if n.domain else ''}{n.op_type}" for n in proto.graph.node})  # type: ignore[attr-defined]
        print(f"wrote {out} ({out.stat().st_size / 1024:.1f} KiB); {key}: test accuracy {acc:.4f} on {TEST} "
              f"({len(test)} samples, onnxruntime; sklearn {sk_acc:.4f}); max |onnx - predict_proba| {diff:.2e}; "
              f"ops: {', '.join(ops)}")
        results[f"{key}_accuracy"] = acc
    return results


if __name__ == "__main__":
    build()
