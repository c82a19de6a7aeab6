"""Adversarial-input detection from slices (NNSlicer's first application) and its two baselines.

A slice abstracts the model's decision: a classifier trained on the slices of *normal*, correctly
classified samples learns which slice goes with which label. At test time the criterion is (sample,
predicted class); the detector predicts a label from the sample's slice features
(:func:`~onnxslice.apps.features.extract_features`) and the input is **flagged** when that label
differs from the model's (the paper's rule). The **score** of an input is ``1 - p``, where ``p`` is
the detector's probability of the model's label (higher: more suspicious), for ROC curves. A second,
calibrated rule also flags inputs whose ``p`` falls below a threshold set on the training samples'
cross-validated probabilities so that a fraction ``flag_rate`` (default 5%) of normal samples would be
flagged: the paper's rule alone misses adversarial inputs whose slice the classifier half-recognises.

Two choices differ from a literal reading of the paper, both measured (docs/detect.md):

- the blocks of the output layer are left out by default (``skip_output=True``): with the predicted
  class as the only seed, that layer's synapse CONTRIB is non-zero in the predicted class's row
  only, so the classifier reads the model's label off it and never disagrees;
- the default classifier is a random forest, not a single decision tree: its probabilities rank
  far better (``--classifier tree`` gives the paper's tree).

The fitted scikit-learn classifier is stored as ONNX (skl2onnx; checked against scikit-learn's
probabilities when fitted) inside the detector file, with the profile, the model fingerprints and
the feature options, so scoring needs only the model and the file, runs in onnxruntime, and never
unpickles anything. :meth:`Detector.save_onnx` writes the classifier alone: an ONNX model taking the
feature vector ``features [N, F]`` and returning ``label`` and ``probabilities``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxslice.apps.features import FEATURE_KINDS, Features, extract_features
from onnxslice.data import Dataset, load_data
from onnxslice.errors import DataError
from onnxslice.io import atomic_write_bytes, load_npz, save_npz
from onnxslice.model import Model
from onnxslice.parallel import Backend
from onnxslice.profile import Profile
from onnxslice.record import max_ort_ir_version
from onnxslice.targets import default_output

__all__ = [
    "CLASSIFIERS",
    "Detection",
    "Detector",
    "detection_metrics",
    "fit_detector",
    "model_digest",
    "profile_digest",
]

CLASSIFIERS = ("forest", "tree", "boosting")


def model_digest(model: Model) -> str:
    """The structure fingerprint plus a hash of every initializer's bytes (same structure, other weights differ)."""
    h = hashlib.sha1(model.fingerprint.encode())
    for name in sorted(model.initializer_names):
        h.update(name.encode())
        h.update(np.ascontiguousarray(model.initializer(name)).tobytes())
    return h.hexdigest()[:16]


def profile_digest(profile: Profile) -> str:
    """A hash of a profile's means (and the model it belongs to)."""
    h = hashlib.sha1(profile.fingerprint.encode())
    for k in sorted(profile.mean):
        h.update(k.encode())
        h.update(np.ascontiguousarray(profile.mean[k], dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


def _classifier(name: str, seed: int) -> Any:
    if name == "tree":
        from sklearn.tree import DecisionTreeClassifier

        return DecisionTreeClassifier(random_state=seed)
    if name == "forest":
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(n_estimators=100, random_state=seed, n_jobs=1)
    if name == "boosting":
        from sklearn.ensemble import GradientBoostingClassifier

        return GradientBoostingClassifier(n_estimators=50, max_depth=3, random_state=seed)
    raise DataError(f"unknown classifier '{name}'; use {', '.join(CLASSIFIERS)}")


def _to_onnx(clf: Any, length: int) -> bytes:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    onx = convert_sklearn(
        clf,
        initial_types=[("features", FloatTensorType([None, length]))],
        options={id(clf): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    onx.ir_version = min(onx.ir_version, max_ort_ir_version())
    onx.producer_name = "onnxslice.apps.detect"
    return bytes(onx.SerializeToString())


@dataclass
class Detection:
    """The detector's verdict on a batch of inputs.

    Attributes:
        predictions: the model's class per sample.
        detector_labels: the class the detector reads from the features.
        probability: the detector's probability of the model's class.
        disagree: ``detector_labels != predictions`` (the paper's rule).
        flagged: ``disagree`` or ``probability < threshold`` (the calibrated rule).
        seconds: feature extraction time.
    """

    predictions: np.ndarray
    detector_labels: np.ndarray
    probability: np.ndarray
    disagree: np.ndarray
    flagged: np.ndarray
    seconds: float = 0.0

    @property
    def scores(self) -> np.ndarray:
        """``1 - probability``: higher is more suspicious (for ROC curves)."""
        return 1.0 - self.probability


@dataclass
class Detector:
    """A fitted adversarial-input detector (see the module docstring).

    Attributes:
        classifier_onnx: the fitted classifier as an ONNX model (``features [N, F]`` in).
        classes: the classes it predicts.
        profile: the model's profile (the slice features' forward analysis).
        kind: feature kind (``slice``, ``activation``, ``gradient``).
        classifier: ``forest``, ``tree`` or ``boosting``.
        feature_length: ``F``.
        columns: indices of the feature columns used (the output layer's are left out by default).
        model_fingerprint: :func:`model_digest` of the model it was fitted on.
        profile_fingerprint: :func:`profile_digest` of its profile.
        options: feature options (theta, granularity, aggregate, skip_output).
        stats: fitting statistics (samples, per-class counts, training agreement, time).
        threshold: the calibrated rule's probability threshold (0: the paper's rule only).
    """

    classifier_onnx: bytes
    classes: list[int]
    profile: Profile | None
    kind: str
    classifier: str
    feature_length: int
    columns: np.ndarray
    model_fingerprint: str
    profile_fingerprint: str
    options: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    threshold: float = 0.0
    _session: Any = field(default=None, repr=False, compare=False)

    # -- use --------------------------------------------------------------------------------------
    def check(self, model: Model, profile: Profile | None = None) -> None:
        """Raise DataError when ``model`` (or ``profile``) is not the one the detector was fitted on."""
        digest = model_digest(model)
        if digest != self.model_fingerprint:
            raise DataError(
                f"this detector was fitted on another model (fingerprint {self.model_fingerprint}, this model's is "
                f"{digest}); fit a detector for this model with `onnxslice detect fit`"
            )
        if profile is not None and profile_digest(profile) != self.profile_fingerprint:
            raise DataError(
                f"this detector was fitted with another profile (fingerprint {self.profile_fingerprint}, the given "
                f"profile's is {profile_digest(profile)}); use the detector's own profile or refit"
            )

    def features(self, model: Model, inputs: Any, **kwargs: Any) -> Features:
        """The feature vectors this detector reads (all columns; :meth:`classify` selects)."""
        opts = {k: v for k, v in self.options.items() if k in ("theta", "granularity", "aggregate")}
        return extract_features(model, inputs, self.kind, profile=self.profile, **opts, **kwargs)

    def classify(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities ``[N, classes]`` and labels from feature vectors ``[N, F]`` (onnxruntime)."""
        values = np.asarray(values, dtype=np.float32)
        if values.ndim != 2 or values.shape[1] != self.feature_length:
            raise DataError(
                f"feature vectors have length {values.shape[-1] if values.ndim else 0}; this detector takes "
                f"{self.feature_length} ({self.kind} features of its model)"
            )
        if self._session is None:
            import onnxruntime as ort

            self._session = ort.InferenceSession(self.classifier_onnx, providers=["CPUExecutionProvider"])
        sel = np.ascontiguousarray(values[:, self.columns])
        labels, probs = self._session.run(None, {"features": sel})
        return np.asarray(probs, np.float64), np.asarray(labels, np.int64).reshape(-1)

    def detect(self, model: Model, inputs: Any, **kwargs: Any) -> Detection:
        """Flag and score every input: features, then the classifier (see the module docstring).

        Args:
            model: the model the detector was fitted on (checked).
            inputs: a Dataset, data spec, arrays or one array.
            kwargs: executor options for :func:`extract_features` (``backend``, ``workers``...).

        Raises:
            DataError: another model, bad inputs.
        """
        self.check(model)
        f = self.features(model, inputs, **kwargs)
        probs, labels = self.classify(f.values)
        index = {c: i for i, c in enumerate(self.classes)}
        col = np.array([index.get(int(p), -1) for p in f.predictions])
        p = np.where(col >= 0, probs[np.arange(len(col)), np.maximum(col, 0)], 0.0)
        disagree = labels != f.predictions
        return Detection(f.predictions, labels, p, disagree, disagree | (p < self.threshold), f.seconds)

    # -- files ------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Save as ``.npz`` (atomic): the classifier's ONNX bytes, the profile and a JSON header."""
        arrays = {"classifier_onnx": np.frombuffer(self.classifier_onnx, np.uint8), "columns": self.columns}
        if self.profile is not None:
            arrays.update({f"profile/{k}": v for k, v in self.profile.mean.items()})
        meta = {
            "kind": "Detector",
            "features": self.kind,
            "classifier": self.classifier,
            "classes": self.classes,
            "feature_length": self.feature_length,
            "model_fingerprint": self.model_fingerprint,
            "profile_fingerprint": self.profile_fingerprint,
            "profile_meta": None
            if self.profile is None
            else {"count": self.profile.count, "fingerprint": self.profile.fingerprint, "data": self.profile.data},
            "options": self.options,
            "stats": self.stats,
            "threshold": self.threshold,
        }
        return save_npz(path, arrays, meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Detector:
        """Load a detector written by :meth:`save`.

        Raises:
            DataError: not a detector file, or a damaged one (its profile no longer matches its fingerprint).
        """
        arrays, meta = load_npz(path, kind="Detector")
        prof = None
        if meta.get("profile_meta") is not None:
            pm = meta["profile_meta"]
            means = {k[8:]: v for k, v in arrays.items() if k.startswith("profile/")}
            prof = Profile(means, int(pm["count"]), str(pm["fingerprint"]), str(pm.get("data", "")))
            if profile_digest(prof) != meta["profile_fingerprint"]:
                raise DataError(f"'{path}': the stored profile does not match its fingerprint; the file is damaged")
        return cls(
            classifier_onnx=arrays["classifier_onnx"].tobytes(),
            classes=[int(c) for c in meta["classes"]],
            profile=prof,
            kind=str(meta["features"]),
            classifier=str(meta["classifier"]),
            feature_length=int(meta["feature_length"]),
            columns=arrays["columns"].astype(np.int64),
            model_fingerprint=str(meta["model_fingerprint"]),
            profile_fingerprint=str(meta["profile_fingerprint"]),
            options=dict(meta.get("options", {})),
            stats=dict(meta.get("stats", {})),
            threshold=float(meta.get("threshold", 0.0)),
        )

    def save_onnx(self, path: str | os.PathLike[str]) -> Path:
        """Write the classifier alone as ONNX (input ``features [N, len(columns)]``; atomic).

        The model's metadata records the columns of the full feature vector it takes and the fingerprints.
        """
        import onnx

        proto = onnx.load_from_string(self.classifier_onnx)
        for k, v in {
            "onnxslice.detector.features": self.kind,
            "onnxslice.detector.columns": ",".join(map(str, self.columns.tolist())),
            "onnxslice.detector.model_fingerprint": self.model_fingerprint,
            "onnxslice.detector.profile_fingerprint": self.profile_fingerprint,
        }.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = k, v
        return atomic_write_bytes(path, proto.SerializeToString())


def _columns(f: Features, skip_output: bool) -> np.ndarray:
    layers = list(dict.fromkeys(name.rsplit("/", 1)[0] for name, _ in f.blocks))
    last = layers[-1] if skip_output and len(layers) > 1 else None
    keep = np.concatenate([np.full(n, name.rsplit("/", 1)[0] != last) for name, n in f.blocks])
    return np.nonzero(keep)[0].astype(np.int64)


def fit_detector(
    model: Model,
    data: Any,
    labels: np.ndarray | None = None,
    *,
    profile: Profile | None = None,
    features: str = "slice",
    classifier: str = "forest",
    skip_output: bool = True,
    theta: float = 0.3,
    granularity: str = "element",
    aggregate: str = "channel",
    min_per_class: int = 10,
    flag_rate: float = 0.05,
    seed: int = 0,
    backend: Backend = "local",
    workers: int | None = None,
    address: str | None = None,
    show_progress: bool | None = None,
    precomputed: Features | None = None,
    device: str = "cpu",
    batch_size: int = 16,
) -> Detector:
    """Fit a detector on normal samples: the classifier learns the model's label from their features.

    Only samples the model classifies correctly are used; every class of the model must have at least
    ``min_per_class`` of them.

    Args:
        model: the classifier to protect.
        data: a labelled Dataset or data spec (or arrays with ``labels``).
        labels: true labels when ``data`` carries none.
        profile: the model's profile (required for slice features; stored in the detector).
        features: ``slice`` (NNSlicer), ``activation`` or ``gradient`` (the baselines).
        classifier: ``forest`` (default), ``tree`` (the paper's) or ``boosting``.
        skip_output: leave the output layer's feature blocks out (see the module docstring).
        theta, granularity, aggregate: slice feature options (:func:`extract_features`).
        min_per_class: the fewest correctly classified samples a class needs.
        flag_rate: the fraction of normal samples the calibrated rule may flag (3-fold cross-validated
            probabilities on the training samples; 0 turns the rule off).
        seed: the classifier's random seed.
        backend, workers, address: the executor for slicing the training samples.
        show_progress: progress bar on stderr.
        precomputed: features of ``data`` already extracted with the same options (skips extraction).
        device: onnxruntime device for the feature extraction.
        batch_size: samples per unit of slicing work.

    Raises:
        DataError: no labels, too few samples in a class, an unknown option, a profile of another model.
    """
    if features not in FEATURE_KINDS:
        raise DataError(f"unknown feature kind '{features}'; use {', '.join(FEATURE_KINDS)}")
    clf = _classifier(classifier, seed)
    if not 0.0 <= flag_rate < 1.0:
        raise DataError(f"flag_rate must lie in [0, 1), got {flag_rate}")
    ds = data if isinstance(data, Dataset) else load_data(data) if isinstance(data, str) else None
    y = labels if labels is not None else (ds.labels if ds is not None else None)
    if y is None:
        raise DataError("fitting a detector needs labelled data (a data set with labels, or .npz with 'y')")
    y = np.asarray(y, np.int64)
    if features == "slice" and profile is None:
        raise DataError("slice features need the model's profile (--profile, from `onnxslice profile`)")
    if profile is not None:
        profile.check_model(model)
    f = precomputed or extract_features(
        model,
        ds if ds is not None else data,
        features,
        profile=profile,
        theta=theta,
        granularity=granularity,
        aggregate=aggregate,
        backend=backend,
        workers=workers,
        address=address,
        device=device,
        batch_size=batch_size,
        show_progress=show_progress,
    )
    if len(y) != len(f.predictions):
        raise DataError(f"{len(y)} labels for {len(f.predictions)} samples")
    ok = f.predictions == y
    out = model.value_info.get(default_output(model))
    width = out.shape[-1] if out is not None and out.shape and isinstance(out.shape[-1], int) else None
    classes = list(range(width)) if width else sorted(set(y.tolist()))
    counts = {c: int((f.predictions[ok] == c).sum()) for c in classes}
    short = {c: n for c, n in counts.items() if n < min_per_class}
    if short:
        worst = ", ".join(f"class {c}: {n}" for c, n in list(short.items())[:4])
        raise DataError(
            f"too few correctly classified samples to fit ({worst}); every class needs >= {min_per_class}: "
            "give more labelled data"
        )
    cols = _columns(f, skip_output)
    xs, ys = f.values[ok][:, cols], f.predictions[ok]
    threshold = 0.0
    splits = min(3, *counts.values())
    if flag_rate > 0 and splits >= 2:
        from sklearn.model_selection import StratifiedKFold, cross_val_predict

        folds = StratifiedKFold(n_splits=splits, shuffle=True, random_state=seed)
        cv = cross_val_predict(_classifier(classifier, seed), xs, ys, cv=folds, method="predict_proba")
        index = {c: i for i, c in enumerate(sorted(set(ys.tolist())))}
        p_cv = cv[np.arange(len(ys)), [index[int(v)] for v in ys]]
        threshold = float(np.quantile(p_cv, flag_rate))
    clf.fit(xs, ys)
    onx = _to_onnx(clf, len(cols))
    det = Detector(
        classifier_onnx=onx,
        classes=[int(c) for c in clf.classes_],
        profile=profile if features == "slice" else None,
        kind=features,
        classifier=classifier,
        feature_length=f.length,
        columns=cols,
        model_fingerprint=model_digest(model),
        profile_fingerprint=profile_digest(profile) if profile is not None and features == "slice" else "",
        options={**f.options, "skip_output": skip_output},
        stats={"samples": len(y), "used": int(ok.sum()), "per_class": counts, "seconds": f.seconds},
        threshold=threshold,
    )
    # fidelity: the ONNX classifier must give scikit-learn's probabilities
    probs, _ = det.classify(f.values[ok][: min(256, int(ok.sum()))])
    ref = clf.predict_proba(f.values[ok][: len(probs)][:, cols].astype(np.float32))
    err = float(np.abs(probs - ref).max()) if len(probs) else 0.0
    if err > 1e-4:
        raise DataError(f"the ONNX export of the {classifier} classifier differs from scikit-learn by {err:.2e}")
    det.stats["onnx_max_abs_diff"] = err
    return det


def detection_metrics(
    clean_scores: np.ndarray, clean_flags: np.ndarray, adv_scores: np.ndarray, adv_flags: np.ndarray
) -> dict[str, float]:
    """Precision, recall, F1 (adversarial = positive) of the flags, and ROC-AUC of the scores."""
    from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

    y = np.r_[np.zeros(len(clean_flags)), np.ones(len(adv_flags))]
    pred = np.r_[clean_flags, adv_flags].astype(int)
    sc = np.r_[clean_scores, adv_scores]
    return {
        "precision": float(precision_score(y, pred, zero_division=0)),
        "recall": float(recall_score(y, pred, zero_division=0)),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "auc": float(roc_auc_score(y, sc)) if len(adv_flags) and len(clean_flags) else float("nan"),
        "adversarial": len(adv_flags),
        "clean": len(clean_flags),
    }
