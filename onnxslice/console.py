"""What the user sees on the terminal: tables, progress bars and up-front warnings, drawn with ``rich``.

Tables render to plain text (no colour, no terminal codes) so that they read the same in a terminal,
a pipe and a test. Progress goes to stderr, only when stderr is a terminal or ``ONNXSLICE_PROGRESS=1``;
``ONNXSLICE_PROGRESS=0`` silences it everywhere, so pipelines and CI logs stay clean.
This module computes nothing; it only formats.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

__all__ = ["fmt", "format_table", "progress", "progress_bar", "progress_enabled", "warn_if_long"]

T = TypeVar("T")

#: Work estimated to take longer than this (seconds) is announced before it starts.
LONG_WORK_S = 60.0


def fmt(v: Any) -> str:
    """Human formatting: thousands separators for ints, 4 significant digits for floats."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v != v:
            return "nan"
        if v == 0:
            return "0"
        if abs(v) >= 1e5 or abs(v) < 1e-3:
            return f"{v:.3e}"
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "x".join(str(x) for x in v) if all(isinstance(x, int) for x in v) else ", ".join(map(str, v))
    return str(v)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, title: str = "") -> str:
    """Rows of dicts as a plain-text table (numbers right-aligned), rendered by ``rich``."""
    if not rows:
        return (title + "\n" if title else "") + "(empty)"
    cols = list(columns) if columns else list(rows[0].keys())
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="", title=None)
    for c in cols:
        numeric = all(_is_number(r.get(c)) for r in rows)
        table.add_column(c, justify="right" if numeric else "left", no_wrap=True)
    for r in rows:
        table.add_row(*(Text(fmt(r.get(c, ""))) for c in cols))
    buf = io.StringIO()
    Console(file=buf, width=10_000, color_system=None, force_terminal=False, highlight=False).print(table)
    body = "\n".join(line.rstrip() for line in buf.getvalue().splitlines() if line.strip())
    return f"{title}\n{body}" if title else body


def progress_enabled(enabled: bool | None = None) -> bool:
    """Whether to draw progress: explicit flag, else ``ONNXSLICE_PROGRESS``, else ``stderr.isatty()``."""
    if enabled is not None:
        return enabled
    env = os.environ.get("ONNXSLICE_PROGRESS")
    if env is not None:
        return env not in ("0", "", "false", "no")
    return sys.stderr.isatty()


class _RateColumn(ProgressColumn):
    """Items per second, or seconds per item when slower than one a second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if not speed:
            return Text("-- it/s")
        return Text(f"{speed:.1f} it/s" if speed >= 1 else f"{1 / speed:.1f} s/it")


def progress(items: Iterable[T], total: int | None = None, desc: str = "", enabled: bool | None = None) -> Iterator[T]:
    """Yield ``items`` while drawing ``desc ━━━━ k/total rate elapsed eta`` on stderr."""
    if not progress_enabled(enabled):
        yield from items
        return
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _RateColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(desc or "working", total=total)
        for item in items:
            yield item
            bar.advance(task)


def warn_if_long(estimate_s: float, what: str, hint: str = "") -> bool:
    """Say on stderr, before it starts, that ``what`` will take minutes; returns whether it warned.

    Args:
        estimate_s: the estimated duration in seconds (from sample count x layers x a measured unit cost).
        what: the work, e.g. ``"rank --criterion ig on 64 samples x 52 layers"``.
        hint: how to make it shorter (e.g. ``"--samples 32"``).
    """
    if estimate_s < LONG_WORK_S or os.environ.get("ONNXSLICE_PROGRESS") == "0":
        return False
    minutes = estimate_s / 60
    when = f"about {minutes:.0f} min" if minutes >= 1.5 else "about a minute"
    sys.stderr.write(f"note: {what} will take {when} on this machine" + (f"; {hint}" if hint else "") + "\n")
    return True


@contextmanager
def progress_bar(total: int, desc: str, enabled: bool | None = None) -> Iterator[Callable[[str], None]]:
    """A progress bar for work that is not one loop: yields ``advance(label)``, called once per step done."""
    if not progress_enabled(enabled):

        def skip(label: str = "") -> None:
            return None

        yield skip
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _RateColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(desc, total=total)

        def advance(label: str = "") -> None:
            bar.update(task, advance=1, description=f"{desc}: {label}" if label else desc)

        yield advance
