"""The one output policy every command writes through.

A command declares, before any work, every file it reads (:meth:`Outputs.reads`, or
:meth:`Outputs.reads_model` for a model and its external-data files) and every file it will write
(:meth:`Outputs.writes`); a write path that resolves to a read path (or to another write path) is
an error at once, before anything is computed. So is an output whose folder cannot be written (a
file where a folder should be, no write permission). Results are not written when produced: a
command registers a writer with :meth:`Outputs.defer` and calls :meth:`Outputs.commit` only after
every check and fidelity step has passed. Each writer writes atomically (a temporary
``.onnxslice-<pid>-*`` file beside the target, then a rename), so an existing output is replaced
only by a complete new file; a failed write (disk full, say) is a one-line :class:`OutputError`.

Temporary files are removed on any exit the process sees (errors, Ctrl-C, SIGTERM: the CLI turns it
into an exception). A SIGKILL cannot be seen, so the next run that declares an output in that folder
removes the leftovers of processes that no longer exist (:func:`clean_stale`) and leaves those of
live processes (a concurrent writer) alone.

This module never decides *what* is written; it only decides *whether* and *when*.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxslice.errors import OnnxSliceError

__all__ = ["TEMP_PREFIX", "OutputClashError", "OutputError", "Outputs", "clean_stale", "temp_prefix"]

#: Every temporary file or folder onnxslice creates starts with this (then the writer's pid).
TEMP_PREFIX = ".onnxslice-"
#: Leftovers without a readable pid (older releases) are removed once they are this old.
_STALE_SECONDS = 3600.0


class OutputClashError(OnnxSliceError):
    """An output path would overwrite one of the command's inputs, or two outputs collide."""


class OutputError(OnnxSliceError):
    """An output cannot be written: its folder is missing, read-only or full, or it is a folder."""


def temp_prefix() -> str:
    """The prefix of this process's temporary files: ``.onnxslice-<pid>-``."""
    return f"{TEMP_PREFIX}{os.getpid()}-"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def clean_stale(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove ``.onnxslice-<pid>-*`` leftovers of dead processes in ``folder``; returns what was removed.

    Leftovers of live processes (another onnxslice writing into the same folder) are left alone.
    """
    removed: list[Path] = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    now = time.time()
    for p in entries:
        if not p.name.startswith(TEMP_PREFIX):
            continue
        pid_text = p.name[len(TEMP_PREFIX) :].split("-", 1)[0]
        try:
            if pid_text.isdigit():
                if _alive(int(pid_text)):
                    continue
            elif now - p.lstat().st_mtime < _STALE_SECONDS:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
        except OSError:
            continue
    return removed


def _key(path: str | os.PathLike[str]) -> Path:
    """The path as the filesystem will see it: symlinks and ``..`` resolved, even if it does not exist yet."""
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def _check_folder(path: Path, flag: str) -> None:
    """Raise :class:`OutputError` when ``path``'s folder cannot hold a new file."""
    parent = _key(path).parent
    probe = parent
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"{flag} '{path}': '{probe}' is a file, not a folder; choose another path for {flag}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"{flag} '{path}': the folder '{probe}' is not writable; choose another path for {flag}")


@dataclass
class Outputs:
    """The files one command reads and writes, checked up front and written last.

    Example::

        outs = Outputs("prune")
        outs.reads_model(args.model)          # the model and its external-data files
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

    def reads_model(self, path: str | os.PathLike[str] | None, what: str = "MODEL") -> None:
        """Declare a model file and every external-data file it names (read without loading any data)."""
        if path is None:
            return
        self.reads(path, what)
        self.reads_all(external_files(path), f"external data of {what}")

    def reads_data(self, spec: str | None, what: str = "--data") -> None:
        """Declare a data spec's file or folder (``builtin:`` specs read no file)."""
        if not spec or spec.startswith("builtin:"):
            return
        base = spec.split("?", 1)[0]
        self.reads(base, what)
        p = Path(base)
        if p.is_dir():
            try:
                files = [f for f in p.rglob("*") if f.is_file()]
            except OSError:
                return
            self.reads_all(files[:100_000], what)

    def writes(self, path: str | os.PathLike[str] | None, flag: str, suffix: str | None = None) -> Path | None:
        """Declare an output; returns its path, or raises if it would overwrite an input or another output.

        Args:
            path: the path the user gave (None: the output is not wanted).
            flag: the option that named it, for messages (``--out``).
            suffix: the suffix the writer appends when the path lacks it (``save_npz`` appends
                ``.npz``); the returned path carries it, so the clash check sees the real file.
        """
        if path is None:
            return None
        p = Path(path)
        if suffix and p.suffix != suffix:
            p = p.with_name(p.name + suffix)
        key = _key(p)
        if key in self._reads:
            raise OutputClashError(
                f"{flag} '{p}' is the {self._reads[key]} this command reads; refusing to overwrite it, "
                f"choose another path for {flag}"
            )
        if key in self._writes and self._writes[key] != flag:
            raise OutputClashError(f"{flag} '{p}' is also given as {self._writes[key]}; give each output its own path")
        if key.is_dir() or _key(path).is_dir() or os.fspath(path).endswith(os.sep):
            raise OutputClashError(f"{flag} '{path}' is a folder; give a file path")
        _check_folder(p, flag)
        if key.parent.is_dir():
            clean_stale(key.parent)
        self._writes[key] = flag
        return p

    def defer(self, path: Path | None, write: Callable[[Path], Any]) -> None:
        """Register ``write(path)`` to run at :meth:`commit`; ``write`` must write atomically."""
        if path is None:
            return
        if _key(path) not in self._writes:
            raise RuntimeError(f"{self.verb}: output '{path}' was not declared with Outputs.writes")  # a bug
        self._pending.append((path, write))

    def commit(self) -> list[Path]:
        """Run every deferred writer, in order; returns the paths written.

        Raises:
            OutputError: a write failed (folder vanished, read-only, disk full); the message names the
                output's flag and path. Outputs already renamed into place stay complete.
        """
        written: list[Path] = []
        for path, write in self._pending:
            flag = self._writes.get(_key(path), "output")
            try:
                write(path)
            except OnnxSliceError:
                raise
            except OSError as e:
                why = "the disk is full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else (e.strerror or str(e))
                raise OutputError(f"cannot write {flag} '{path}': {why}; nothing was left at '{path}'") from e
            written.append(path)
        self._pending.clear()
        return written


def external_files(path: str | os.PathLike[str]) -> list[Path]:
    """The external-data files a model file names (resolved against its folder; none when unreadable)."""
    import onnx
    from onnx import external_data_helper

    p = Path(path)
    if not p.is_file():
        return []
    try:
        proto = onnx.load(str(p), load_external_data=False)
    except Exception:
        return []
    files: list[Path] = []
    for t in external_data_helper._get_all_tensors(proto):
        if external_data_helper.uses_external_data(t):
            for e in t.external_data:
                if e.key == "location" and e.value:
                    f = p.parent / e.value
                    if f not in files:
                        files.append(f)
    return files
