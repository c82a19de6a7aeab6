"""A minimal progress bar on stderr for long work (no dependency).

Shown when stderr is a terminal, or when forced with ``ONNXSLICE_PROGRESS=1``; silent otherwise
(pipelines and CI logs stay clean). ``ONNXSLICE_PROGRESS=0`` silences it everywhere.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

__all__ = ["progress", "progress_enabled"]

T = TypeVar("T")


def progress_enabled(enabled: bool | None = None) -> bool:
    """Whether to draw progress: explicit flag, else ``ONNXSLICE_PROGRESS``, else ``stderr.isatty()``."""
    if enabled is not None:
        return enabled
    env = os.environ.get("ONNXSLICE_PROGRESS")
    if env is not None:
        return env not in ("0", "", "false", "no")
    return sys.stderr.isatty()


def progress(items: Iterable[T], total: int | None = None, desc: str = "", enabled: bool | None = None) -> Iterator[T]:
    """Yield ``items`` while drawing ``desc [#####.....] k/total elapsed eta`` on stderr."""
    if not progress_enabled(enabled):
        yield from items
        return
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    start = last = time.perf_counter()
    k = 0

    def draw(final: bool = False) -> None:
        el = time.perf_counter() - start
        if total:
            frac = k / total
            bar = "#" * int(frac * 24)
            eta = el / k * (total - k) if k else 0.0
            line = f"\r{desc} [{bar:<24}] {k}/{total} {el:5.1f}s eta {eta:5.1f}s"
        else:
            line = f"\r{desc} {k} {el:5.1f}s"
        sys.stderr.write(line + ("\n" if final else ""))
        sys.stderr.flush()

    for item in items:
        yield item
        k += 1
        now = time.perf_counter()
        if now - last > 0.2:
            draw()
            last = now
    draw(final=True)
