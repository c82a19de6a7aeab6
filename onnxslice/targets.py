"""Targets: which scalar per sample an analysis explains, for any model output. One implementation.

A target spec (``--target`` on every verb) is one of:

- ``pred``: the logit of the predicted class; ``class:K`` (or ``K``): the logit of class K;
  ``class:K1,K2``: several classes (slicing seeds them all; gradients take the first);
- ``loss``: softmax cross-entropy against the data's labels (``[N, C]`` outputs only);
- ``output-norm``: the L2 norm of the output per sample;
- ``value:NAME`` / ``value:NAME[i,j]`` / ``value:NAME[0:4,2]``: the sum of the selected elements of any
  value (indices of one sample, batch axis left out; a ``start:stop`` slice or ``:`` selects a block);
- ``cotangent``: ``<cotangent, output>`` per sample (API only: pass the cotangent array).

The output (``--output``, default the first) need not be ``[N, C]``. Its layout is read once:

- the **batch axis** is the axis that carries the model *input's* batch: the output dimension with
  the same symbolic name as the first input's batch dimension, else the axis whose size is the number
  of samples (axis 0 first), so a time-first ``[T, N, C]`` output is read correctly;
- the **class axis**: a rank-4+ batch-first output is channels-first (``[N, C, H, W]``, per pixel;
  ``[N, C, 1, 1]`` is ``[N, C]``; ``[N, 1, H, W]`` has no class axis and is its own score); otherwise
  singleton dimensions are ignored and the one axis left holds the classes (``[N, C]``, ``[N, 1, C]``),
  or with several left the last one does (sequences ``[N, T, C]`` and ``[T, N, C]``); ``[N]`` and
  ``[N, 1]`` are their own score.

``pred`` and ``class:K`` sum, over every position (time step, pixel), that position's predicted (or
K-th) class logit; on a single-channel map that is the sum of the map. When the output is computed by
Softmax/LogSoftmax (through Identity), ``pred``, ``class:K`` and ``loss`` read the Softmax input.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxslice.errors import DataError

if TYPE_CHECKING:
    from onnxslice.model import Model

__all__ = [
    "TARGET_KINDS",
    "BoundTarget",
    "Layout",
    "TargetSpec",
    "batch_axis",
    "check_output",
    "default_output",
    "layout",
    "logits_value",
    "parse_target",
    "parse_targets",
    "symbolic_batch_axis",
]

TARGET_KINDS = ("pred", "class", "loss", "output-norm", "value", "cotangent")
_VALUE = re.compile(r"^value:(?P<name>[^\[\]]+?)(\[(?P<idx>[-0-9,: ]*)\])?$")
HELP = "pred (default), class:K, class:K1,K2, loss, output-norm, value:NAME[idx] (see docs/targets.md)"

Index = tuple["int | slice", ...]


@dataclass(frozen=True)
class TargetSpec:
    """One parsed target.

    Attributes:
        kind: one of :data:`TARGET_KINDS`.
        classes: the class indices of ``class:K1,K2``.
        value: the value a ``value:`` target reads.
        index: per-sample index of a ``value:`` target (ints and slices; empty = all elements).
    """

    kind: str
    classes: tuple[int, ...] = ()
    value: str = ""
    index: Index = ()

    @property
    def cls(self) -> int | None:
        """The (first) class of a ``class:K`` target."""
        return self.classes[0] if self.classes else None

    @property
    def spec(self) -> str:
        """The spec string."""
        if self.kind == "class":
            return "class:" + ",".join(map(str, self.classes))
        if self.kind == "value":
            if not self.index:
                return f"value:{self.value}"
            parts = [_fmt(i) for i in self.index]
            return f"value:{self.value}[{','.join(parts)}]"
        return self.kind

    def __str__(self) -> str:
        return self.spec

    @property
    def reads_logits(self) -> bool:
        """Whether the target reads the logits (the Softmax input) rather than the output itself."""
        return self.kind in ("pred", "class", "loss")


def _fmt(i: int | slice) -> str:
    if isinstance(i, slice):
        return f"{'' if i.start is None else i.start}:{'' if i.stop is None else i.stop}"
    return str(i)


def _parse_index(text: str, spec: str) -> Index:
    out: list[int | slice] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if ":" in part:
                a, _, b = part.partition(":")
                out.append(slice(int(a) if a.strip() else None, int(b) if b.strip() else None))
            else:
                out.append(int(part))
        except ValueError:
            raise DataError(f"target '{spec}': index '{part}' is not an integer or a start:stop slice") from None
    return tuple(out)


def parse_target(spec: str | int | TargetSpec) -> TargetSpec:
    """Parse one spec (see the module docstring).

    Raises:
        DataError: an unknown spec, a class that is not an integer, a bad index.
    """
    if isinstance(spec, TargetSpec):
        return spec
    if isinstance(spec, (int, np.integer)):
        return TargetSpec("class", (int(spec),))
    s = str(spec).strip()
    if s.startswith("class:") or re.fullmatch(r"-?\d+(,\s*-?\d+)*", s):
        body = s.split(":", 1)[-1]
        items = body.split(",")
        if body.strip() and any(not c.strip() for c in items):
            raise DataError(f"target '{s}' has an empty class between commas; use class:K1,K2")
        try:
            classes = tuple(int(c) for c in items if c.strip())
        except ValueError:
            raise DataError(f"target '{s}': the class after 'class:' must be an integer (class:3, class:1,3)") from None
        if not classes:
            raise DataError(f"target '{s}' names no class; use class:K")
        return TargetSpec("class", classes)
    if (m := _VALUE.match(s)) is not None:
        return TargetSpec("value", value=m.group("name").strip(), index=_parse_index(m.group("idx") or "", s))
    if s in ("pred", "loss", "output-norm", "cotangent"):
        return TargetSpec(s)
    raise DataError(f"unknown target '{s}'; use {HELP}")


def parse_targets(spec: str | int | TargetSpec | Sequence[str | int | TargetSpec]) -> list[TargetSpec]:
    """Parse a spec or a list of specs (slicing seeds several at once).

    Raises:
        DataError: an empty list or an unknown spec.
    """
    items = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    if not items:
        raise DataError(f"no target given; use {HELP}")
    return [parse_target(x) for x in items]  # type: ignore[arg-type]


# -- where a target reads --------------------------------------------------------------------------

def logits_value(model: Model, output: str) -> str:
    """The input of the Softmax/LogSoftmax (through Identity) that computes ``output``, else ``output``."""
    v = output
    node = model.producer(v)
    while node is not None and node.op_type == "Identity":
        v = node.inputs[0]
        node = model.producer(v)
    if node is not None and node.op_type in ("Softmax", "LogSoftmax") and node.domain == "":
        return node.inputs[0]
    return output


def default_output(model: Model) -> str:
    """The output a target reads when none is named: the first float tensor output (a scikit-learn
    classifier's first output is its integer label, the scores come second), else the first output."""
    for o in model.output_names:
        vi = model.value_info.get(o)
        if vi is not None and vi.dtype is not None and np.issubdtype(vi.dtype, np.floating):
            return o
    return model.output_names[0]


def check_output(model: Model, output: str | None) -> str:
    """The output name a target reads (:func:`default_output` when none is named).

    Raises:
        DataError: no output of that name.
    """
    if output is None:
        return default_output(model)
    if output not in model.output_names and model.producer(output) is None:
        raise DataError(f"no output named '{output}'; the model's outputs are {', '.join(model.output_names)} "
                        "(choose one with --output)")
    return output


def _input_batch_symbol(model: Model) -> str | None:
    for vi in model.inputs:
        if vi.shape and isinstance(vi.shape[0], str) and vi.shape[0]:
            return vi.shape[0]
    return None


def symbolic_batch_axis(model: Model, name: str, shape: tuple[int, ...]) -> int | None:
    """The axis of value ``name`` that shape inference named like the first input's batch dimension."""
    sym = _input_batch_symbol(model)
    vi = model.value_info.get(name)
    if sym is None or vi is None or not vi.shape or len(vi.shape) != len(shape):
        return None
    axes = [i for i, d in enumerate(vi.shape) if d == sym]
    return axes[0] if len(axes) == 1 else None


def batch_axis(model: Model, names: Sequence[str], shape: tuple[int, ...], n: int | None) -> int:
    """The axis of a value (known as any of ``names``) that carries the samples.

    The dimension named like the model input's batch dimension wins; else the first axis of size ``n``
    (the number of samples fed); else axis 0.
    """
    if not shape:
        return 0
    sym = _input_batch_symbol(model)
    if sym is not None:
        for name in names:
            vi = model.value_info.get(name)
            if vi is None or not vi.shape or len(vi.shape) != len(shape):
                continue
            axes = [i for i, d in enumerate(vi.shape) if d == sym]
            if len(axes) == 1 and (n is None or shape[axes[0]] == n):
                return axes[0]
    if n is not None and shape[0] != n:
        cands = [i for i, s in enumerate(shape) if s == n]
        if cands:
            return cands[0]
    return 0


@dataclass(frozen=True)
class Layout:
    """How a value's axes map to samples, classes and positions.

    Attributes:
        batch: the sample axis.
        classes: the class axis, or None (the value is its own score).
        shape: the value's shape.
    """

    batch: int
    classes: int | None
    shape: tuple[int, ...]

    @property
    def kind(self) -> str:
        """``vector``, ``sequence``, ``map`` or ``scalar`` (what docs/targets.md calls the output kinds)."""
        rest = [i for i, s in enumerate(self.shape) if i != self.batch and s != 1 and i != self.classes]
        if self.classes is None:
            return "map" if rest else "scalar"
        if not rest:
            return "vector"
        return "sequence" if len(self.shape) == 3 else "map"

    @property
    def num_classes(self) -> int:
        """Number of classes (1 when the value is its own score)."""
        return 1 if self.classes is None else self.shape[self.classes]

    def canonical(self, arr: np.ndarray) -> np.ndarray:
        """``arr`` as ``[N, positions..., C]`` (C = 1 without a class axis)."""
        if self.classes is None:
            return np.moveaxis(arr, self.batch, 0)[..., None]
        return np.moveaxis(arr, (self.batch, self.classes), (0, -1))

    def restore(self, canon: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`canonical`."""
        if self.classes is None:
            return np.moveaxis(canon[..., 0], 0, self.batch)
        return np.moveaxis(canon, (0, -1), (self.batch, self.classes))


def layout(model: Model, names: Sequence[str], shape: tuple[int, ...], n: int | None = None) -> Layout:
    """The :class:`Layout` of a value of ``shape`` (see the module docstring for the rules)."""
    b = batch_axis(model, names, shape, n)
    rest = [i for i, s in enumerate(shape) if i != b and s != 1]
    if not rest:
        cls = None
    elif len(shape) >= 4 and b == 0:
        cls = 1 if shape[1] != 1 else None
    elif len(rest) == 1:
        cls = rest[0]
    else:
        cls = len(shape) - 1
    return Layout(b, cls, tuple(shape))


# -- evaluation ------------------------------------------------------------------------------------

class BoundTarget:
    """A target bound to a model output: per-sample values, seeds and fixed classes.

    Args:
        model: the model.
        spec: a spec string or :class:`TargetSpec`.
        output: the output it reads (default: the first).
        logits: read the Softmax/LogSoftmax input for ``pred``/``class``/``loss`` (default True).

    Raises:
        DataError: an unknown output, or an unknown spec.
    """

    def __init__(self, model: Model, spec: str | int | TargetSpec, output: str | None = None, *,
                 logits: bool = True) -> None:
        self.model = model
        self.spec = parse_target(spec)
        self.output = check_output(model, output)
        if self.spec.kind == "value":
            self.value = self.spec.value
        elif logits and self.spec.reads_logits:
            self.value = logits_value(model, self.output)
        else:
            self.value = self.output

    def layout(self, arr: np.ndarray, n: int | None = None) -> Layout:
        """The layout of the recorded value ``arr`` (``n``: samples fed)."""
        return layout(self.model, [self.value, self.output], tuple(arr.shape), n)

    def batch_axis(self, arr: np.ndarray, n: int | None = None) -> int:
        """The sample axis of the recorded value."""
        if self.spec.kind == "value":
            return batch_axis(self.model, [self.value], tuple(arr.shape), n)
        return self.layout(arr, n).batch

    # -- class choice --------------------------------------------------------------------------
    def choose(self, arr: np.ndarray, n: int | None = None, labels: np.ndarray | None = None) -> np.ndarray:
        """The class selected per sample and position, ``[N, positions...]`` (fixes ``pred``'s class).

        Raises:
            DataError: a class out of range, ``loss`` without labels or on a sequence/map output.
        """
        lay = self.layout(arr, n)
        z = lay.canonical(arr)
        kind = self.spec.kind
        if kind == "pred":
            return z.argmax(axis=-1)
        if kind == "class":
            k = self.spec.classes[0]
            if not 0 <= k < lay.num_classes:
                raise DataError(
                    f"target class {k} is out of range: output '{self.output}' (value '{self.value}', shape "
                    f"{list(arr.shape)}) has {lay.num_classes} classes (0..{lay.num_classes - 1})"
                )
            return np.full(z.shape[:-1], k, np.int64)
        if kind == "loss":
            if z.ndim != 2:
                raise DataError(
                    f"target 'loss' needs logits shaped [samples, classes]; '{self.value}' has shape "
                    f"{list(arr.shape)} ({lay.kind} output). Use --target pred or class:K"
                )
            return _check_labels(labels, z.shape[0], z.shape[1])
        raise DataError(f"target '{self.spec}' selects no class")

    def score(self, arr: np.ndarray, choice: np.ndarray, n: int | None = None) -> np.ndarray:
        """Per-sample ``f`` for a fixed class choice (from :meth:`choose`), float64."""
        z = self.layout(arr, n).canonical(np.asarray(arr, np.float64))
        picked = np.take_along_axis(z, choice[..., None], axis=-1)[..., 0]
        if self.spec.kind == "loss":
            m = z.max(axis=-1)
            lse = np.log(np.exp(z - m[..., None]).sum(axis=-1)) + m
            return lse - picked
        return picked.reshape(len(picked), -1).sum(axis=1)

    def onehot(self, arr: np.ndarray, choice: np.ndarray, n: int | None = None) -> np.ndarray:
        """The cotangent of ``arr`` for a fixed choice (pred/class: one-hot; loss: softmax - one-hot)."""
        lay = self.layout(arr, n)
        z = lay.canonical(arr)
        oh = np.zeros(z.shape, arr.dtype)
        np.put_along_axis(oh, choice[..., None], 1, axis=-1)
        if self.spec.kind == "loss":
            zz = z.astype(np.float64)
            p = np.exp(zz - zz.max(axis=-1, keepdims=True))
            p /= p.sum(axis=-1, keepdims=True)
            oh = (p - oh).astype(arr.dtype)
        return lay.restore(oh)

    # -- gradients -----------------------------------------------------------------------------
    def seed(self, arr: np.ndarray, *, labels: np.ndarray | None = None, cotangent: np.ndarray | None = None,
             n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per-sample target values ``[N]`` and the cotangent of ``arr`` that seeds a backward walk.

        Raises:
            DataError: see :meth:`choose`; a cotangent of the wrong shape; an index out of range.
        """
        kind = self.spec.kind
        if kind == "cotangent":
            if cotangent is None:
                raise DataError("target 'cotangent' needs cotangent=<array shaped like the output>")
            if cotangent.shape != arr.shape:
                raise DataError(f"the cotangent for output '{self.output}' has shape {list(cotangent.shape)}, "
                                f"the output has {list(arr.shape)}")
            c = cotangent.astype(arr.dtype, copy=False)
            b = self.batch_axis(arr, n)
            return np.moveaxis(c * arr, b, 0).reshape(arr.shape[b], -1).sum(axis=1), c
        if kind == "output-norm":
            b = self.batch_axis(arr, n)
            flat = np.moveaxis(arr, b, 0).reshape(arr.shape[b], -1).astype(np.float64)
            norm = np.sqrt((flat * flat).sum(axis=1))
            safe = np.where(norm > 0, norm, 1.0)
            cot = (flat / safe[:, None]).reshape(np.moveaxis(arr, b, 0).shape)
            return norm, np.moveaxis(cot, 0, b).astype(arr.dtype)
        if kind == "value":
            mask = self.mask(arr, n).astype(arr.dtype)
            b = self.batch_axis(arr, n)
            return np.moveaxis(mask * arr, b, 0).reshape(arr.shape[b], -1).sum(axis=1).astype(np.float64), mask
        choice = self.choose(arr, n, labels)
        return self.score(arr, choice, n), self.onehot(arr, choice, n)

    # -- slicing -------------------------------------------------------------------------------
    def mask(self, arr: np.ndarray, n: int | None = None) -> np.ndarray:
        """0/1 per element of ``arr``: the neurons this target seeds (every class of ``class:K1,K2``).

        Raises:
            DataError: a class or index out of range; ``loss``/``output-norm``/``cotangent`` (no neurons).
        """
        kind = self.spec.kind
        if kind == "value":
            b = self.batch_axis(arr, n)
            per = np.moveaxis(np.zeros(arr.shape, np.int32), b, 0)
            idx = self.spec.index
            if len(idx) > per.ndim - 1:
                raise DataError(f"target {self.spec}: index has {len(idx)} axes, the value has {per.ndim - 1} "
                                f"per sample (shape {list(arr.shape)})")
            sizes: tuple[int, ...] = tuple(per.shape[1:])
            for axis, (i, size) in enumerate(zip(idx, sizes, strict=False)):
                if isinstance(i, int) and not -size <= i < size:
                    raise DataError(f"target {self.spec}: index {i} on axis {axis} is out of range (size {size})")
            sel: tuple[Any, ...] = (slice(None), *idx)
            per[sel] = 1
            if not per.any():
                raise DataError(f"target {self.spec} selects no element of '{self.value}' (shape {list(arr.shape)})")
            return np.moveaxis(per, 0, b)
        if kind == "class":
            out = np.zeros(arr.shape, np.int32)
            for k in self.spec.classes:
                single = BoundTarget(self.model, TargetSpec("class", (k,)), self.output)
                single.value = self.value
                out += single.onehot(arr, single.choose(arr, n), n).astype(np.int32)
            return out
        if kind == "pred":
            return self.onehot(arr, self.choose(arr, n), n).astype(np.int32)
        raise DataError(f"target '{self.spec}' selects no neurons to slice from; use pred, class:K or value:NAME[idx]")


def _check_labels(labels: np.ndarray | None, n: int, classes: int) -> np.ndarray:
    if labels is None:
        raise DataError("target 'loss' needs labels (data with y, one integer class per sample)")
    lab = np.asarray(labels)
    if lab.shape != (n,):
        raise DataError(f"labels must have shape [{n}] (one per sample), got {list(lab.shape)}")
    if not np.issubdtype(lab.dtype, np.integer):
        if not np.all(np.mod(lab, 1) == 0):
            raise DataError("labels must be integer class indices")
        lab = lab.astype(np.int64)
    if lab.min(initial=0) < 0 or lab.max(initial=0) >= classes:
        raise DataError(f"labels must lie in 0..{classes - 1}; got values {lab.min()}..{lab.max()}")
    return lab.astype(np.int64)
