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

An entry is three files: ``KEY.onnx``, the model whose weights of at least
:data:`~onnxslice.model.DETACH_MIN` bytes are ONNX external-data references into ``KEY.bin`` (64-byte
aligned), ``KEY.bin``, and ``KEY.json`` (written last: an entry without it is not read; it records both
files' sizes, so a cut file is rebuilt, not read). A hit parses only the small ``.onnx`` and maps
``KEY.bin`` read-only: the weights become arrays without being read, parsed or copied (on ResNet-18's 45
MB the load went from 73 to 3 ms), and the model holds them once
(:attr:`~onnxslice.model.Model.detached`).

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

import numpy as np
import onnx

from onnxslice.io import atomic_write_bytes
from onnxslice.model import DETACH_MIN, EXTERNAL_DATA_THRESHOLD, Model, load, raw_dtype
from onnxslice.session import copy_replacing_initializers
from onnxslice.version import __version__

__all__ = ["CACHE_ENV", "DETACH_MIN", "cache_dir", "load_cached", "model_key"]

#: The environment variable naming the cache folder (``off`` or ``0``: no cache).
CACHE_ENV = "ONNXSLICE_CACHE"
_ALIGN = 64


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


def _split(m: Model, bin_name: str) -> tuple[onnx.ModelProto, bytes]:
    """The entry's model (``m``'s detached weights as external-data references into ``bin_name``) and the
    bytes of ``bin_name``, taken from the arrays (the held proto has no copy of them)."""
    parts: list[bytes] = []
    size = 0

    def move(t: onnx.TensorProto) -> onnx.TensorProto | None:
        nonlocal size
        dt = raw_dtype(t)
        if t.name not in m.detached or dt is None:
            return None
        raw = np.ascontiguousarray(m.initializer(t.name), dtype=dt).tobytes()
        pad = -size % _ALIGN
        parts.append(b"\0" * pad + raw)
        size += pad
        ref = onnx.TensorProto(name=t.name, data_type=t.data_type, dims=list(t.dims))
        ref.data_location = onnx.TensorProto.EXTERNAL
        for k, v in (("location", bin_name), ("offset", str(size)), ("length", str(len(raw)))):
            entry = ref.external_data.add()
            entry.key, entry.value = k, v
        size += len(raw)
        return ref

    entry_proto = copy_replacing_initializers(m.skeleton, move)
    return entry_proto, b"".join(parts)


def _mapped(proto: onnx.ModelProto, bin_path: Path) -> dict[str, np.ndarray]:
    """Read-only arrays of the entry's external weights, mapped from ``bin_path`` (nothing is read yet)."""
    data = np.memmap(bin_path, dtype=np.uint8, mode="r") if bin_path.stat().st_size else np.zeros(0, np.uint8)
    out: dict[str, np.ndarray] = {}
    for t in proto.graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        dt = raw_dtype(t)
        if dt is None or info.get("location") != bin_path.name:
            raise ValueError(f"initializer '{t.name}' does not point into {bin_path.name}")
        offset, length = int(info["offset"]), int(info["length"])
        if offset + length > data.size or length != dt.itemsize * int(np.prod(t.dims, dtype=np.int64)):
            raise ValueError(f"initializer '{t.name}' lies outside {bin_path.name}")
        out[t.name] = np.frombuffer(data, dtype=dt, count=length // dt.itemsize, offset=offset).reshape(tuple(t.dims))
    return out


def load_cached(path: str | os.PathLike[str]) -> Model:
    """``load(path)`` through the on-disk cache: the entry when there is one, else load and save one."""
    folder = cache_dir()
    if folder is None or not os.path.isfile(path):
        return load(path)  # load() reports a missing file
    key = model_key(path)
    base = folder / "models"
    entry, meta, weights = base / f"{key}.onnx", base / f"{key}.json", base / f"{key}.bin"
    if entry.is_file() and meta.is_file():
        try:
            info = json.loads(meta.read_text())
            if info.get("key") != key:
                raise ValueError("its fingerprint does not match")
            if info.get("bin") != weights.name or not weights.is_file() or (
                weights.stat().st_size != info.get("bin_bytes")
            ):
                raise ValueError("its weights file is missing or of another size")
            data = entry.read_bytes()
            if len(data) != info.get("onnx_bytes"):  # protobuf parses a cut message without a word
                raise ValueError("its model file is of another size")
            proto = onnx.load_model_from_string(data)
            m = Model(proto, Path(path).resolve(), list(info.get("notes", [])), _mapped(proto, weights))
            if isinstance(info.get("weights"), str):  # hashing the weights again cost ResNet-18 23 ms
                m.__dict__["weights_fingerprint"] = info["weights"]
            return m
        except Exception as e:  # a truncated or foreign entry: rebuild it
            warnings.warn(f"onnxslice cache entry '{entry}' is unreadable ({e}); rebuilding it", stacklevel=3)
    m = load(path)  # holds its large weights as arrays (Model.detached): the entry's .bin takes them from there
    held = m.skeleton.graph.initializer
    if any(t.data_location == onnx.TensorProto.EXTERNAL and t.name not in m.detached for t in held) or (
        m.skeleton.ByteSize() + sum(m.initializer(k).nbytes for k in m.detached) >= EXTERNAL_DATA_THRESHOLD
    ):
        return m
    small, blob = _split(m, weights.name)
    data = small.SerializeToString()
    try:
        atomic_write_bytes(weights, blob)
        atomic_write_bytes(entry, data)
        atomic_write_bytes(meta, json.dumps({"key": key, "source": str(Path(path).resolve()), "bin": weights.name,
                                             "bin_bytes": len(blob), "onnx_bytes": len(data), "notes": list(m.notes),
                                             "weights": m.weights_fingerprint}).encode())
    except OSError as e:
        warnings.warn(f"cannot write the onnxslice cache entry '{entry}' ({e.strerror or e}); "
                      f"set {CACHE_ENV} to a writable folder or to 'off'", stacklevel=3)
    return m
