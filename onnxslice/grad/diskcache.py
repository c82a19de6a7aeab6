"""On-disk cache of loaded models for one-shot :func:`onnxslice.gradients` calls in fresh processes.

Loading a model file runs the ONNX checker and shape inference (0.5-1 s on ResNet-18, most of the
one-shot build cost). The loaded, normalized, shape-inferred model is saved once in the cache folder
and later processes load that copy with both steps off, with the weights' fingerprint
(:attr:`~onnxslice.model.Model.weights_fingerprint`) from the entry instead of hashing them again.
Entries are keyed by a fingerprint of the file (resolved path, size, modification and change
times, inode) and of the onnxslice and onnx versions; the file's contents are not hashed on each
call (hashing ResNet-18's 45 MB alone took 0.2 s), so, like the in-process engine cache, an entry
is found again only while the file is untouched, and any write to it changes its change time and
so the key.

Folder: ``$ONNXSLICE_CACHE``, else ``$XDG_CACHE_HOME/onnxslice``, else ``~/.cache/onnxslice`` (never
the model's own folder); ``ONNXSLICE_CACHE=off`` (or ``0``) turns the cache off. Entries are written
atomically (temporary file and rename); an unreadable entry is rebuilt with a warning. Models whose
weights live in external data files are not cached.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import onnx

from onnxslice.io import atomic_write_bytes
from onnxslice.model import EXTERNAL_DATA_THRESHOLD, Model, load
from onnxslice.version import __version__

__all__ = ["CACHE_ENV", "cache_dir", "load_cached", "model_key"]

#: The environment variable naming the cache folder (``off`` or ``0``: no cache).
CACHE_ENV = "ONNXSLICE_CACHE"


def cache_dir() -> Path | None:
    """The cache folder, or None when ``$ONNXSLICE_CACHE`` turns the cache off."""
    env = os.environ.get(CACHE_ENV, "").strip()
    if env.lower() in ("off", "0", "no", "false"):
        return None
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(base) if base else Path.home() / ".cache") / "onnxslice"


def model_key(path: str | os.PathLike[str]) -> str:
    """The fingerprint of a model file's entry (see the module docstring)."""
    real = os.path.realpath(path)
    st = os.stat(real)
    ident = [real, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, __version__, onnx.__version__]
    return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:32]


def load_cached(path: str | os.PathLike[str]) -> Model:
    """``load(path)`` through the on-disk cache: the entry when there is one, else load and save one."""
    folder = cache_dir()
    if folder is None or not os.path.isfile(path):
        return load(path)  # load() reports a missing file
    key = model_key(path)
    entry, meta = folder / "models" / f"{key}.onnx", folder / "models" / f"{key}.json"
    if entry.is_file() and meta.is_file():
        try:
            info = json.loads(meta.read_text())
            if info.get("key") != key:
                raise ValueError("its fingerprint does not match")
            m = load(entry, check=False, infer_shapes=False)
            m.path, m.notes = Path(path).resolve(), list(info.get("notes", []))
            if isinstance(info.get("weights"), str):  # hashing the weights again cost ResNet-18 23 ms
                m.__dict__["weights_fingerprint"] = info["weights"]
            return m
        except Exception as e:  # a truncated or foreign entry: rebuild it
            warnings.warn(f"onnxslice cache entry '{entry}' is unreadable ({e}); rebuilding it", stacklevel=3)
    m = load(path)
    data = m.proto.SerializeToString()
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in m.proto.graph.initializer) or len(
        data
    ) >= EXTERNAL_DATA_THRESHOLD:
        return m
    try:
        atomic_write_bytes(entry, data)
        atomic_write_bytes(meta, json.dumps({"key": key, "source": str(Path(path).resolve()),
                                             "notes": list(m.notes), "weights": m.weights_fingerprint}).encode())
    except OSError as e:
        warnings.warn(f"cannot write the onnxslice cache entry '{entry}' ({e.strerror or e}); "
                      f"set {CACHE_ENV} to a writable folder or to 'off'", stacklevel=3)
    return m
