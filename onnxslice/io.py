"""Atomic ``.npz``/``.json`` writing for result objects (Trace, Profile, Slice, ...).

Every result saves as arrays plus a JSON header stored under the key ``__meta__``; the header's
``kind`` is checked at load so a file of one kind is never read as another.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from onnxslice.errors import DataError
from onnxslice.limits import check_size
from onnxslice.outputs import temp_prefix

__all__ = ["atomic_path", "atomic_write_bytes", "load_npz", "save_json", "save_npz"]


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """A temporary path beside ``dest``; on success it is renamed to ``dest``, else removed.

    The temporary name is ``.onnxslice-<pid>-*`` (see :func:`onnxslice.outputs.clean_stale`); it is
    removed on any exception, including ``KeyboardInterrupt`` and the CLI's SIGTERM interrupt.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = ""
    try:
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=temp_prefix(), suffix=dest.suffix)
        os.close(fd)
        yield Path(tmp)
        os.chmod(tmp, _umask_mode())  # mkstemp creates 0600; results are ordinary files
        os.replace(tmp, dest)
    finally:
        if tmp and os.path.lexists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    dest = Path(path)
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    return dest


def save_npz(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> Path:
    """Save arrays and a JSON header atomically as a compressed ``.npz``."""
    dest = Path(path)
    if dest.suffix != ".npz":
        dest = dest.with_name(dest.name + ".npz")
    payload = dict(arrays)
    payload["__meta__"] = np.frombuffer(json.dumps(dict(meta)).encode(), dtype=np.uint8)
    with atomic_path(dest) as tmp:
        np.savez_compressed(tmp, **payload)  # type: ignore[arg-type]
    return dest


def load_npz(path: str | os.PathLike[str], kind: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Load a file written by :func:`save_npz`, checking its ``kind``.

    Declared array sizes are checked against :mod:`onnxslice.limits` before anything is inflated.

    Raises:
        DataError: missing, empty, truncated or corrupt file, not an onnxslice file, or a file of
            another kind. The message names the file.
    """
    import zipfile

    p = Path(path)
    if not p.exists():
        raise DataError(f"{kind} file '{p}' does not exist")
    if not p.is_file():
        raise DataError(f"{kind} file '{p}' is not a file")
    if not zipfile.is_zipfile(p):
        raise DataError(f"{kind} file '{p}' is not an .npz archive (empty, truncated or another format)")
    try:
        with zipfile.ZipFile(p) as zf:
            for info in zf.infolist():
                check_size(info.file_size, f"{kind} file '{p}': array '{info.filename}'")
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError, RuntimeError, TypeError) as e:
        raise DataError(f"cannot read {kind} file '{p}' (corrupt or truncated .npz): {e}") from e
    if "__meta__" not in arrays:
        raise DataError(f"'{p}' is not an onnxslice {kind} file (no header)")
    try:
        meta = json.loads(arrays.pop("__meta__").tobytes().decode())
    except (UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{kind} file '{p}' has a damaged header: {e}") from e
    if not isinstance(meta, dict):
        raise DataError(f"{kind} file '{p}' has a damaged header (not a JSON object)")
    if meta.get("kind") != kind:
        raise DataError(f"'{p}' holds a {meta.get('kind')}, not a {kind}")
    return arrays, meta


def save_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically."""
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_default) + "\n").encode())


def _default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot serialise {type(o).__name__}")
