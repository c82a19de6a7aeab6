"""Slicing criteria: which output (or intermediate) neurons seed the backward analysis.

Syntax (a string, an int, or a list of them):

- ``pred`` — the predicted class of each sample (argmax of the output's per-sample vector);
- ``class:K`` or ``K`` — class K for every sample; ``class:1,3`` or ``[1, 3]`` — several classes;
- ``value:NAME`` — every neuron of the value NAME (any intermediate value, the paper's future work);
- ``value:NAME[i,j,...]`` — one neuron, or the block of neurons a partial index selects (indices of
  one sample, batch axis left out; ``value:conv1[3]`` is channel 3 of a ``C x H x W`` value).

Class targets refer to the model's first output (or the one named by ``output=``), whose per-sample
shape must be a vector. Seeds are +1 on every selected neuron of every sample.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxslice.errors import DataError

__all__ = ["Target", "parse_targets", "seed_tables"]

_VALUE = re.compile(r"^value:(?P<name>[^\[\]]+?)(\[(?P<idx>[-0-9, ]*)\])?$")


@dataclass(frozen=True)
class Target:
    """One parsed criterion item.

    Attributes:
        kind: ``"pred"``, ``"class"`` or ``"value"``.
        value: the value it seeds (the output for pred/class).
        index: class index (class), or the per-sample index prefix (value; empty = all neurons).
    """

    kind: str
    value: str
    index: tuple[int, ...] = ()

    def __str__(self) -> str:
        if self.kind == "pred":
            return "pred"
        if self.kind == "class":
            return f"class:{self.index[0]}"
        return f"value:{self.value}" + (f"[{','.join(map(str, self.index))}]" if self.index else "")


def parse_targets(spec: str | int | Sequence[str | int], output: str, output_shape: tuple[int, ...]) -> list[Target]:
    """Parse a target spec against the output it refers to.

    Args:
        spec: see the module docstring.
        output: name of the output that ``pred`` and classes refer to.
        output_shape: its per-sample shape (a vector for class targets).

    Raises:
        DataError: unknown syntax, a class out of range, or class targets on a non-vector output.
    """
    items: list[str | int] = list(spec) if isinstance(spec, (list, tuple)) else [spec]  # type: ignore[list-item]
    if not items:
        raise DataError("no slicing target given; use 'pred', 'class:K' or 'value:NAME[idx]'")
    out: list[Target] = []
    for item in items:
        if isinstance(item, (int, np.integer)):
            out.append(_class_target(int(item), output, output_shape))
            continue
        text = str(item).strip()
        if text == "pred":
            _check_vector(output, output_shape, text)
            out.append(Target("pred", output))
        elif text.startswith("class:") or re.fullmatch(r"-?\d+", text):
            body = text.split(":", 1)[-1]
            try:
                classes = [int(c) for c in body.split(",")]
            except ValueError as e:
                raise DataError(f"bad class target '{text}'; use class:K or class:K1,K2") from e
            out.extend(_class_target(c, output, output_shape) for c in classes)
        elif (m := _VALUE.match(text)) is not None:
            idx = tuple(int(v) for v in (m.group("idx") or "").split(",") if v.strip())
            out.append(Target("value", m.group("name").strip(), idx))
        else:
            raise DataError(f"unknown slicing target '{text}'; use pred, class:K, class:K1,K2 or value:NAME[i,j,...]")
    return out


def _check_vector(output: str, shape: tuple[int, ...], what: str) -> None:
    if len(shape) != 1:
        raise DataError(
            f"target '{what}' needs a vector output, but '{output}' has per-sample shape {list(shape)}; "
            "pick another output (output=...) or a value:NAME[idx] target"
        )


def _class_target(k: int, output: str, shape: tuple[int, ...]) -> Target:
    _check_vector(output, shape, f"class:{k}")
    if not 0 <= k < shape[0]:
        raise DataError(
            f"target class {k} is out of range: output '{output}' has {shape[0]} classes (0..{shape[0] - 1})"
        )
    return Target("class", output, (k,))


def seed_tables(targets: Sequence[Target], values: dict[str, np.ndarray], channel: bool) -> dict[str, np.ndarray]:
    """CONTRIB seeds (+1 per selected neuron and sample) keyed by value, batch axis first.

    At channel granularity the seed tables of rank >= 3 values are ``(B, C)``.

    Raises:
        DataError: a value target names no recorded value or indexes outside it.
    """
    seeds: dict[str, np.ndarray] = {}
    for t in targets:
        if t.value not in values:
            raise DataError(f"target value '{t.value}' is not a value of this model (see `onnxslice inspect`)")
        arr = values[t.value]
        shape = arr.shape if not channel or arr.ndim <= 2 else arr.shape[:2]
        table = seeds.setdefault(t.value, np.zeros(shape, np.int32))
        if t.kind == "pred":
            pred = arr.reshape(arr.shape[0], -1).argmax(axis=1)
            table[np.arange(arr.shape[0]), pred] += 1
        elif t.kind == "class":
            if t.index[0] >= shape[1]:
                raise DataError(f"target {t} is out of range: '{t.value}' has {shape[1]} classes")
            table[:, t.index[0]] += 1
        else:
            if len(t.index) > len(shape) - 1:
                raise DataError(f"target {t}: index has {len(t.index)} axes, the value has {len(shape) - 1} per sample")
            for axis, (i, size) in enumerate(zip(t.index, shape[1:], strict=False)):
                if not -size <= i < size:
                    raise DataError(f"target {t}: index {i} on axis {axis} is out of range (size {size})")
            sel: tuple[Any, ...] = (slice(None), *t.index)
            table[sel] += 1
    return seeds
