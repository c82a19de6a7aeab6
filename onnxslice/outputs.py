"""The one output policy every command writes through.

A command declares, before any work, every file it reads (:meth:`Outputs.reads`) and every file it
will write (:meth:`Outputs.writes`); a write path that resolves to a read path (or to another write
path) is an error at once, before anything is computed. Results are not written when produced: a
command registers a writer with :meth:`Outputs.defer` and calls :meth:`Outputs.commit` only after
every check and fidelity step has passed. Each writer writes atomically (temporary file beside the
target, then a rename), so an existing output is replaced only by a complete new file.

This module never decides *what* is written; it only decides *whether* and *when*.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxslice.errors import OnnxSliceError

__all__ = ["OutputClashError", "Outputs"]


class OutputClashError(OnnxSliceError):
    """An output path would overwrite one of the command's inputs, or two outputs collide."""


def _key(path: str | os.PathLike[str]) -> Path:
    """The path as the filesystem will see it: symlinks and ``..`` resolved, even if it does not exist yet."""
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


@dataclass
class Outputs:
    """The files one command reads and writes, checked up front and written last.

    Example::

        outs = Outputs("prune")
        outs.reads(args.model, "MODEL")
        out = outs.writes(args.out, "--out")
        ...                                   # all the work, every check, the fidelity run
        outs.defer(out, lambda p: pruned.save(p))
        outs.commit()                         # only now is anything written
    """

    verb: str
    _reads: dict[Path, str] = field(default_factory=dict)
    _writes: dict[Path, str] = field(default_factory=dict)
    _pending: list[tuple[Path, Callable[[Path], Any]]] = field(default_factory=list)

    def reads(self, path: str | os.PathLike[str] | None, what: str) -> None:
        """Declare a file the command reads (``what`` names it in errors: ``MODEL``, ``--profile``...)."""
        if path is None:
            return
        key = _key(path)
        self._reads.setdefault(key, what)
        clash = self._writes.get(key)
        if clash is not None:
            raise OutputClashError(f"{clash} '{path}' is also read as {what}; choose another path for {clash}")

    def reads_all(self, paths: Iterable[str | os.PathLike[str]], what: str) -> None:
        """Declare several read files at once (a model's external-data files, say)."""
        for p in paths:
            self.reads(p, what)

    def writes(self, path: str | os.PathLike[str] | None, flag: str) -> Path | None:
        """Declare an output; returns its path, or raises if it would overwrite an input or another output."""
        if path is None:
            return None
        key = _key(path)
        if key in self._reads:
            raise OutputClashError(
                f"{flag} '{path}' is the {self._reads[key]} this command reads; refusing to overwrite it, "
                f"choose another path for {flag}"
            )
        if key in self._writes and self._writes[key] != flag:
            raise OutputClashError(
                f"{flag} '{path}' is also given as {self._writes[key]}; give each output its own path"
            )
        if key.is_dir():
            raise OutputClashError(f"{flag} '{path}' is a folder; give a file path")
        self._writes[key] = flag
        return Path(path)

    def defer(self, path: Path | None, write: Callable[[Path], Any]) -> None:
        """Register ``write(path)`` to run at :meth:`commit`; ``write`` must write atomically."""
        if path is None:
            return
        if _key(path) not in self._writes:
            raise RuntimeError(f"{self.verb}: output '{path}' was not declared with Outputs.writes")  # a bug
        self._pending.append((path, write))

    def commit(self) -> list[Path]:
        """Run every deferred writer, in order; returns the paths written."""
        written: list[Path] = []
        for path, write in self._pending:
            write(path)
            written.append(path)
        self._pending.clear()
        return written
