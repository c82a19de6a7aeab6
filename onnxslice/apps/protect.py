"""Model protection (NNSlicer's third application): hide the synapses that matter for chosen classes.

The owner slices the model for the target classes (the samples of those classes, seeded at their
output neurons), ranks every layer weight by ``|CONTRIB|`` and hides the top ``fraction``: their
values move into a key file and the model ships with other values in their place (by default drawn
from a normal with the layer's own mean and standard deviation, so the file does not show which
entries were replaced). :func:`unlock` puts the original values back, bit for bit.

Selection (``select``):

- ``slice``: ``|CONTRIB_target| / n_target`` (per-sample significance for the target classes); with
  ``keep_others``, minus ``|CONTRIB_others| / n_others`` (weights that matter for the targets but little
  for the remaining classes, so those keep working).
- ``weight``: ``|w|`` (the magnitude baseline).
- ``random``: uniform scores (the random baseline).

``scope="layer"`` hides ``fraction`` of every layer weight; ``"global"`` ranks all layer weights
together (CONTRIB counts are comparable across layers; magnitudes are not). Ties are broken by a
seeded random order. Only the layers' main weights are hidden (not biases or batch-norm terms).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnxslice.apps.protect_key import KeyFileError, ProtectKey
from onnxslice.data import Dataset
from onnxslice.errors import DataError
from onnxslice.model import Model
from onnxslice.profile import Profile
from onnxslice.profile import profile as make_profile
from onnxslice.record import Device, make_session, runtime_proto, validate_inputs
from onnxslice.rewrite.passes import PassManager, ReplaceInitializers
from onnxslice.slicing import slice as slice_model
from onnxslice.targets import default_output

__all__ = [
    "FILLS",
    "SCOPES",
    "SELECTS",
    "ProtectResult",
    "accuracy",
    "check_fraction",
    "choose",
    "lock",
    "parse_classes",
    "protect",
    "protected_weights",
    "selection_scores",
    "slice_scores",
    "unlock",
    "weights_hash",
]

SELECTS = ("slice", "weight", "random")
SCOPES = ("layer", "global")
FILLS = ("normal", "zero")


# -- hashes and names ------------------------------------------------------------------------------
def weights_hash(model: Model) -> str:
    """SHA-256 of the graph structure and every initializer's name, dtype, shape and bytes."""
    h = hashlib.sha256(model.fingerprint.encode())
    for name in sorted(model.initializer_names):
        arr = np.ascontiguousarray(model.initializer(name))
        h.update(f"{name}:{arr.dtype.str}:{list(arr.shape)};".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def protected_weights(model: Model) -> list[str]:
    """The initializers protection may hide: every layer's main (float) weight."""
    names = list(dict.fromkeys(layer.weight for layer in model.layers))
    if not names:
        raise DataError("the model has no layer weights (Conv/Gemm/MatMul initializers) to protect")
    return names


def _num_classes(model: Model) -> int:
    out = model.outputs[0]
    shape = out.shape or ()
    if len(shape) != 2 or not isinstance(shape[1], int):
        raise DataError(f"protection needs a classifier output [batch, classes]; '{out.name}' is {out.describe()}")
    return int(shape[1])


def parse_classes(text: str | Sequence[int], model: Model) -> list[int]:
    """Classes ``"3,5"`` (or a list), checked against the model's number of classes.

    Raises:
        DataError: not integers, empty, repeated, or out of range.
    """
    n = _num_classes(model)
    if isinstance(text, str):
        try:
            classes = [int(t) for t in text.split(",") if t.strip()]
        except ValueError:
            raise DataError(f"classes must be integers separated by commas (e.g. 3,5), not '{text}'") from None
    else:
        classes = [int(c) for c in text]
    if not classes:
        raise DataError("give at least one class to protect (e.g. --classes 3,5)")
    bad = [c for c in classes if not 0 <= c < n]
    if bad:
        raise DataError(f"class {bad[0]} is out of range: the model has {n} classes (0..{n - 1})")
    if len(set(classes)) != len(classes):
        raise DataError(f"classes {classes} repeat a class; list each once")
    if len(classes) == n:
        raise DataError(f"all {n} classes are targets; leave at least one class out to compare against")
    return sorted(classes)


def check_fraction(fraction: float) -> float:
    if not (isinstance(fraction, (int, float)) and np.isfinite(fraction) and 0.0 < float(fraction) < 1.0):
        raise DataError(f"the fraction must lie strictly between 0 and 1, got {fraction}")
    return float(fraction)


# -- scores ------------------------------------------------------------------------------------------
def _class_samples(ds: Dataset, classes: Sequence[int], samples: int) -> np.ndarray:
    if ds.labels is None:
        raise DataError(f"data set '{ds.name}' has no labels: protection needs labelled samples of the classes")
    idx = np.flatnonzero(np.isin(ds.labels, list(classes)))[:samples]
    if idx.size == 0:
        raise DataError(f"no sample of '{ds.name}' has class {', '.join(map(str, classes))}")
    return idx


def slice_scores(
    model: Model,
    data: Dataset,
    classes: Sequence[int],
    *,
    profile: Profile | None = None,
    keep_others: bool = False,
    samples: int = 256,
    theta: float = 0.3,
    others_weight: float = 16.0,
    batch_size: int = 8,
    workers: int | None = 1,
    device: Device = "cpu",
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Per-synapse scores from NNSlicer slices: ``|CONTRIB_target|/n`` (minus the others' with ``keep_others``).

    With ``keep_others`` the score is ``|C_target|/n_target - others_weight * |C_others|/n_others``, where
    the second slice runs over ``2 * samples`` samples of the other classes seeded at their outputs: a
    large ``others_weight`` ranks first the synapses that (almost) never matter for the other classes.

    Args:
        model: the model.
        data: labelled samples; the first ``samples`` of the target classes form the criterion.
        classes: target classes.
        profile: the model's profile (default: profiled on the first 1,000 samples of ``data``).
        keep_others: subtract the per-sample ``|CONTRIB|`` of a slice for the other classes.
        samples: criterion samples of the target classes (twice as many of the other classes).
        theta: NNSlicer's threshold.
        others_weight: weight of the other classes' term with ``keep_others``.
        batch_size: samples per unit of slicing work.
        workers: slicing processes.
        device: onnxruntime device.

    Returns:
        (scores by weight name, information: samples used per slice).
    """
    prof = (
        profile if profile is not None else make_profile(model, data.subset(slice(0, 1000)), 256, show_progress=False)
    )
    names = protected_weights(model)

    def run(cls: Sequence[int], count: int) -> tuple[dict[str, np.ndarray], int]:
        idx = _class_samples(data, cls, count)
        s = slice_model(model, prof, data, [f"class:{c}" for c in cls], theta, samples=idx,
                        batch_size=batch_size, workers=workers, device=device)  # fmt: skip
        return {n: np.abs(s.synapses[n]).astype(np.float64) / len(idx) for n in names if n in s.synapses}, len(idx)

    target, n_t = run(classes, samples)
    info: dict[str, Any] = {"target_samples": n_t, "theta": theta}
    scores = {n: target.get(n, np.zeros(model.initializer(n).shape)) for n in names}
    if keep_others:
        others = [c for c in range(_num_classes(model)) if c not in classes]
        other, n_o = run(others, 2 * samples)
        info.update(other_samples=n_o, others_weight=others_weight)
        scores = {n: v - others_weight * other.get(n, np.zeros_like(v)) for n, v in scores.items()}
    return scores, info


def selection_scores(
    model: Model, select: str, *, slice_scores: Mapping[str, np.ndarray] | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    """Scores per protected weight for ``select`` (``slice`` needs the scores from :func:`slice_scores`)."""
    names = protected_weights(model)
    if select == "slice":
        if slice_scores is None:
            raise DataError("select 'slice' needs slice scores (a profile and labelled data)")
        return {n: np.asarray(slice_scores[n], dtype=np.float64) for n in names}
    if select == "weight":
        return {n: np.abs(model.initializer(n)).astype(np.float64) for n in names}
    if select == "random":
        rng = np.random.default_rng(seed + 7919)
        return {n: rng.random(model.initializer(n).shape) for n in names}
    raise DataError(f"unknown selection '{select}'; use {', '.join(SELECTS)}")


def choose(
    scores: Mapping[str, np.ndarray], fraction: float, *, scope: str = "layer", seed: int = 0
) -> dict[str, np.ndarray]:
    """Flat indices (ascending) of the top ``fraction`` of entries by score, per weight or over all of them."""
    fraction = check_fraction(fraction)
    if scope not in SCOPES:
        raise DataError(f"unknown scope '{scope}'; use {' or '.join(SCOPES)}")
    rng = np.random.default_rng(seed + 104729)
    if scope == "layer":
        out = {}
        for name, s in scores.items():
            flat = s.reshape(-1)
            k = max(1, round(fraction * flat.size))
            order = np.lexsort((rng.random(flat.size), -flat))
            out[name] = np.sort(order[:k]).astype(np.int64)
        return out
    names = list(scores)
    flat = np.concatenate([scores[n].reshape(-1) for n in names])
    k = max(1, round(fraction * flat.size))
    top = np.lexsort((rng.random(flat.size), -flat))[:k]
    bounds = np.cumsum([0] + [scores[n].size for n in names])
    return {n: np.sort(top[(top >= bounds[i]) & (top < bounds[i + 1])] - bounds[i]).astype(np.int64)
            for i, n in enumerate(names)}  # fmt: skip


# -- lock / unlock ---------------------------------------------------------------------------------
def _replaced(model: Model, new: Mapping[str, np.ndarray], name: str, extra: dict[str, Any] | None = None) -> Model:
    """``model`` with the initializers in ``new`` swapped, through the pass manager (checked, provenance)."""
    return PassManager(name, [ReplaceInitializers(new)]).run(model, extra=extra).model


def lock(
    model: Model,
    positions: Mapping[str, np.ndarray],
    *,
    fill: str = "normal",
    seed: int = 0,
    meta: Mapping[str, Any] | None = None,
) -> tuple[Model, ProtectKey]:
    """Hide the entries at ``positions``: the locked model and the key that restores it.

    Args:
        model: the original model.
        positions: initializer -> flat indices to hide.
        fill: ``"normal"`` (values drawn from a normal with the initializer's own mean and standard
            deviation, over all its entries) or ``"zero"`` (shows where the hidden entries are).
        seed: seed of the fill values.
        meta: settings recorded in the key (selection, fraction, classes, ...).

    Returns:
        (locked model, key).
    """
    if fill not in FILLS:
        raise DataError(f"unknown fill '{fill}'; use {' or '.join(FILLS)}")
    rng = np.random.default_rng(seed + 15485863)
    new: dict[str, np.ndarray] = {}
    pos_out: dict[str, np.ndarray] = {}
    vals: dict[str, np.ndarray] = {}
    for name, pos in positions.items():
        ref = model.initializer(name)
        p = np.unique(np.asarray(pos, dtype=np.int64))
        flat = np.array(ref, copy=True).reshape(-1)
        if p.size and (p[0] < 0 or p[-1] >= flat.size):
            raise DataError(f"positions for '{name}' fall outside its {flat.size} entries")
        pos_out[name] = p
        vals[name] = flat[p].copy()
        if fill == "normal":
            mean, std = float(ref.mean()), float(ref.std())
            flat[p] = rng.normal(mean, std, p.size).astype(ref.dtype)
        else:
            flat[p] = 0
        new[name] = flat.reshape(ref.shape)
    note = {"note": "some weights are replaced; `onnxslice unlock` with the owner's key restores them"}
    locked = _replaced(model, new, "protect", note)
    key_meta = {
        "kind": "protect-key",
        "fingerprint": model.fingerprint,
        "locked_hash": weights_hash(locked),
        "original_hash": weights_hash(model),
        "fill": fill,
        **dict(meta or {}),
    }
    return locked, ProtectKey(pos_out, vals, key_meta)


def unlock(locked: Model, key: ProtectKey) -> Model:
    """Restore the original weights of ``locked`` from ``key`` (bit-identical, checked by hash).

    Raises:
        KeyFileError: the key belongs to another model, or the locked model was changed.
    """
    meta = key.meta
    if locked.fingerprint != meta.get("fingerprint"):
        raise KeyFileError(
            f"this key belongs to another model (graph {meta.get('fingerprint')}, this model's is "
            f"{locked.fingerprint}); give the key written with this locked model"
        )
    if weights_hash(locked) != meta.get("locked_hash"):
        raise KeyFileError(
            "the locked model's weights are not those this key was made for (another locked copy, or the file "
            "was modified); give the locked model written with this key"
        )
    new = {}
    for name, pos in key.positions.items():
        if not locked.is_initializer(name):
            raise KeyFileError(f"the key names initializer '{name}', which the model lacks; use the original key")
        ref = locked.initializer(name)
        flat = np.array(ref, copy=True).reshape(-1)
        vals = key.values[name]
        if vals.dtype != ref.dtype or (pos.size and (pos.min() < 0 or pos.max() >= flat.size)):
            raise KeyFileError(f"the key's entries for '{name}' do not fit the model; use the original key")
        flat[pos] = vals
        new[name] = flat.reshape(ref.shape)
    restored = _replaced(locked, new, "unlock")
    if weights_hash(restored) != meta.get("original_hash"):
        raise KeyFileError("the restored weights do not match the original's hash; the key is damaged")
    return restored


# -- accuracy ----------------------------------------------------------------------------------------
def predict(model: Model, data: Dataset, *, batch_size: int = 512, device: Device = "cpu") -> np.ndarray:
    """Argmax of the first output for every sample (onnxruntime, one thread per session)."""
    sess = make_session(runtime_proto(model.proto), device, threads=1)
    feed = validate_inputs(model, data.bind(model))
    n = len(data)
    out = default_output(model)
    preds = []
    for s in range(0, n, batch_size):
        chunk = {k: v[s : s + batch_size] for k, v in feed.items()}
        preds.append(np.asarray(sess.run([out], chunk)[0]).argmax(axis=1))
    return np.concatenate(preds) if preds else np.zeros(0, np.int64)


def accuracy(model: Model, data: Dataset, classes: Sequence[int], *, device: Device = "cpu") -> dict[str, float]:
    """Top-1 accuracy on the samples of ``classes`` (``target``), of the other classes (``others``) and ``all``."""
    if data.labels is None:
        raise DataError(f"data set '{data.name}' has no labels: accuracy needs them")
    pred = predict(model, data, device=device)
    lab = np.asarray(data.labels)
    hit = pred == lab
    tgt = np.isin(lab, list(classes))
    return {
        "target": float(hit[tgt].mean()) if tgt.any() else float("nan"),
        "others": float(hit[~tgt].mean()) if (~tgt).any() else float("nan"),
        "all": float(hit.mean()),
    }


# -- end to end --------------------------------------------------------------------------------------
@dataclass
class ProtectResult:
    """What :func:`protect` returns.

    Attributes:
        locked: the locked model (same interface; selected weights replaced).
        key: the owner's key.
        accuracy: ``{"original": {...}, "locked": {...}}`` with target/others/all accuracies.
        hidden: hidden entries per weight.
        info: settings and slicing information.
    """

    locked: Model
    key: ProtectKey
    accuracy: dict[str, dict[str, float]] = field(default_factory=dict)
    hidden: dict[str, int] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """One row per model (original, locked): accuracy on target classes, others, all."""
        return [{"model": k, **v} for k, v in self.accuracy.items()]

    def __repr__(self) -> str:
        o, lk = self.accuracy.get("original", {}), self.accuracy.get("locked", {})
        return (
            f"ProtectResult({self.key.hidden:,} entries hidden, select={self.info.get('select')}, "
            f"target acc {o.get('target', float('nan')):.3f} -> {lk.get('target', float('nan')):.3f}, "
            f"others {o.get('others', float('nan')):.3f} -> {lk.get('others', float('nan')):.3f})"
        )


def protect(
    model: Model,
    data: Dataset,
    classes: Sequence[int] | str,
    fraction: float = 0.5,
    *,
    select: str = "slice",
    profile: Profile | None = None,
    keep_others: bool = False,
    scope: str | None = None,
    fill: str = "normal",
    samples: int = 256,
    theta: float = 0.3,
    seed: int = 0,
    eval_data: Dataset | None = None,
    workers: int | None = 1,
    device: Device = "cpu",
    scores: Mapping[str, np.ndarray] | None = None,
) -> ProtectResult:
    """Lock ``model``: hide the ``fraction`` of layer weights chosen by ``select`` for ``classes``.

    Args:
        model: the model (a classifier with output ``[batch, classes]``).
        data: labelled samples for the slices (and for accuracy unless ``eval_data``).
        classes: target classes (``"3,5"`` or a list).
        fraction: share of every layer weight (``scope="layer"``) or of all of them to hide, in (0, 1).
        select: ``slice``, ``weight`` or ``random``.
        profile: the model's profile for ``slice`` (default: profiled on ``data``).
        keep_others: ``slice`` only: prefer weights that matter little for the other classes.
        scope: ``layer`` or ``global`` (default: ``global`` with ``keep_others``, so the hidden entries
            gather where the other classes do not depend on them, else ``layer``).
        fill: ``normal`` or ``zero`` replacement values.
        samples: criterion samples per slice.
        theta: NNSlicer's threshold.
        seed: seed of tie-breaks, random selection and fill values.
        eval_data: labelled data for the accuracy report (default ``data``).
        workers: slicing processes.
        device: onnxruntime device.
        scores: precomputed slice scores (from :func:`slice_scores`), to reuse one slicing.

    Returns:
        :class:`ProtectResult`.

    Raises:
        DataError: classes out of range, fraction outside (0, 1), unknown options, unlabelled data.
    """
    cls = parse_classes(classes, model)
    fraction = check_fraction(fraction)
    if select not in SELECTS:
        raise DataError(f"unknown selection '{select}'; use {', '.join(SELECTS)}")
    scope = scope or ("global" if keep_others else "layer")
    if scope not in SCOPES:
        raise DataError(f"unknown scope '{scope}'; use {' or '.join(SCOPES)}")
    if fill not in FILLS:
        raise DataError(f"unknown fill '{fill}'; use {' or '.join(FILLS)}")
    if keep_others and select != "slice":
        raise DataError("--keep-others needs --select slice (it compares slices of the target and other classes)")
    if data.labels is None:
        raise DataError(f"data set '{data.name}' has no labels: protection needs labelled samples")
    if profile is not None:
        profile.check_model(model)
    info: dict[str, Any] = {"select": select, "fraction": fraction, "classes": cls, "scope": scope,
                            "keep_others": keep_others, "seed": seed}  # fmt: skip
    s: Mapping[str, np.ndarray] | None = None
    if select == "slice":
        if scores is None:
            s, sinfo = slice_scores(model, data, cls, profile=profile, keep_others=keep_others, samples=samples,
                                    theta=theta, workers=workers, device=device)  # fmt: skip
            info.update(sinfo)
        else:
            s = scores
    sel = selection_scores(model, select, slice_scores=s, seed=seed)
    positions = choose(sel, fraction, scope=scope, seed=seed)
    locked, key = lock(model, positions, fill=fill, seed=seed, meta=info)
    ev = eval_data if eval_data is not None else data
    acc = {"original": accuracy(model, ev, cls, device=device), "locked": accuracy(locked, ev, cls, device=device)}
    hidden = {n: int(p.size) for n, p in key.positions.items()}
    return ProtectResult(locked, key, acc, hidden, info)
