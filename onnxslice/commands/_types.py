"""Typed, ranged argparse types shared by every verb (``type=positive_int`` and friends).

Each type raises :class:`argparse.ArgumentTypeError` with a one-line reason, which the CLI turns into
``onnxslice VERB: error: argument --flag: ...`` and exit 2.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

__all__ = [
    "bounded_int",
    "fraction_closed01",
    "fraction_half_open01",
    "fraction_open01",
    "fraction_open_closed01",
    "nonneg_float",
    "nonneg_int",
    "positive_float",
    "positive_int",
    "repeats_help",
]


def _int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None


def _float(text: str) -> float:
    try:
        v = float(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"'{text}' is not a finite number")
    return v


def positive_int(text: str) -> int:
    """An integer >= 1."""
    v = _int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v} is not >= 1")
    return v


def nonneg_int(text: str) -> int:
    """An integer >= 0."""
    v = _int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"{v} is not >= 0")
    return v


def bounded_int(lo: int, hi: int) -> Callable[[str], int]:
    """An integer in ``[lo, hi]``."""

    def parse(text: str) -> int:
        v = _int(text)
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{v} is not in [{lo}, {hi}]")
        return v

    parse.__name__ = f"int in [{lo}, {hi}]"
    return parse


def positive_float(text: str) -> float:
    """A finite number > 0."""
    v = _float(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{v} is not > 0")
    return v


def nonneg_float(text: str) -> float:
    """A finite number >= 0."""
    v = _float(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"{v} is not >= 0")
    return v


def fraction_open01(text: str) -> float:
    """A number in (0, 1)."""
    v = _float(text)
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"{v} is not in (0, 1)")
    return v


def fraction_half_open01(text: str) -> float:
    """A number in [0, 1)."""
    v = _float(text)
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"{v} is not in [0, 1)")
    return v


def fraction_open_closed01(text: str) -> float:
    """A number in (0, 1]."""
    v = _float(text)
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"{v} is not in (0, 1]")
    return v


def fraction_closed01(text: str) -> float:
    """A number in [0, 1]."""
    v = _float(text)
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"{v} is not in [0, 1]")
    return v


def repeats_help(default: int, what: str = "latency repeats, round-robin") -> str:
    """Help text of a verb's ``--repeats``: every latency measurement raises the repeats of a fast model
    until each side ran :data:`onnxslice.session.MIN_TOTAL_MS`."""
    from onnxslice.session import MIN_TOTAL_MS

    return f"{what} (median; default {default}; more for a fast model, until each side ran {MIN_TOTAL_MS:g} ms)"
