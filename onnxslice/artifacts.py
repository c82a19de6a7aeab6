"""Load-time validation of saved artifacts (Profile, Slice, Gradients, LayerScores, plans).

Every check raises :class:`DataError` (or the caller's error class) with one line that names the file
and what is wrong. Artifacts store the structure fingerprint (:attr:`Model.fingerprint`) and the
weights fingerprint (:attr:`Model.weights_fingerprint`) of the model they were computed on;
:func:`check_belongs` refuses one computed on another model. Files saved before the weights
fingerprint existed (or hand-written plans and scores without any fingerprint) are still accepted:
they are checked by what they name (layers, values, shapes) only.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxslice.errors import DataError, OnnxSliceError
from onnxslice.limits import check_size

if TYPE_CHECKING:
    from onnxslice.model import Model

__all__ = [
    "check_array",
    "check_belongs",
    "check_finite_number",
    "check_keys",
    "check_shapes",
    "read_json",
    "stamp",
]

_Err = type[OnnxSliceError]


def stamp(meta: dict[str, Any], model: Model) -> dict[str, Any]:
    """Record ``model``'s fingerprints in ``meta`` (in place); returns it."""
    meta["fingerprint"] = model.fingerprint
    meta["weights"] = model.weights_fingerprint
    return meta


def check_belongs(path: str | os.PathLike[str] | None, kind: str, meta: Mapping[str, Any], model: Model,
                  error: _Err = DataError) -> None:
    """Raise when ``meta``'s fingerprints name another model than ``model`` (absent ones pass)."""
    where = f"{kind} '{path}'" if path else f"the {kind}"
    fp = str(meta.get("fingerprint") or "")
    if fp and fp != model.fingerprint:
        raise error(f"{where} was computed on another model (structure {fp}, this model's is {model.fingerprint}); "
                    f"recompute it on this model")
    w = str(meta.get("weights") or "")
    if w and w != model.weights_fingerprint:
        raise error(f"{where} was computed on the same graph with other weights (weights {w}, this model's are "
                    f"{model.weights_fingerprint}); recompute it on this model")


def check_keys(path: str | os.PathLike[str], kind: str, meta: Mapping[str, Any], types: Mapping[str, Any],
               error: _Err = DataError) -> None:
    """Each key of ``types`` must be in ``meta`` with that type (a type or a tuple of types)."""
    if not isinstance(meta, Mapping):
        raise error(f"{kind} '{path}' is not a JSON object")
    for key, t in types.items():
        if key not in meta:
            raise error(f"{kind} '{path}' has no '{key}'; it is incomplete or not written by onnxslice")
        v = meta[key]
        if not isinstance(v, t) or (isinstance(v, bool) and t in (int, float, (int, float))):
            raise error(f"{kind} '{path}': '{key}' is {type(v).__name__}, expected {_tname(t)}")


def _tname(t: Any) -> str:
    if isinstance(t, tuple):
        return " or ".join(x.__name__ for x in t)
    return str(t.__name__)


def check_finite_number(path: str | os.PathLike[str], kind: str, key: str, v: Any, error: _Err = DataError) -> float:
    """``v`` as a finite float, else an error naming ``key``."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        raise error(f"{kind} '{path}': '{key}' is {v!r}, not a finite number")
    return float(v)


def check_array(path: str | os.PathLike[str], kind: str, key: str, arr: np.ndarray, *, dtype: str = "float",
                ndim: int | None = None, finite: bool = True, error: _Err = DataError) -> np.ndarray:
    """Check one saved array: its dtype family (``float``, ``int``, ``bool``, ``number``), rank and finiteness."""
    ok = {
        "float": np.issubdtype(arr.dtype, np.floating),
        "int": np.issubdtype(arr.dtype, np.integer),
        "bool": arr.dtype == np.bool_,
        "number": np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_,
    }[dtype]
    if not ok:
        raise error(f"{kind} '{path}': array '{key}' has dtype {arr.dtype}, expected {dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise error(f"{kind} '{path}': array '{key}' has shape {list(arr.shape)}, expected {ndim} dimension(s)")
    if finite and np.issubdtype(arr.dtype, np.floating):
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise error(f"{kind} '{path}': array '{key}' has {bad} NaN or Inf value(s); the file is damaged")
    return arr


def check_shapes(path: str | os.PathLike[str] | None, kind: str, arrays: Mapping[str, np.ndarray],
                 expected: Mapping[str, Iterable[Any] | None], what: str, error: _Err = DataError) -> None:
    """Every array must name a known ``what`` (value, weight) and have its shape where that shape is static."""
    where = f"{kind} '{path}'" if path else f"the {kind}"
    for name, arr in arrays.items():
        if name not in expected:
            raise error(f"{where} names {what} '{name}', which this model does not have; it belongs to another model")
        shape = expected[name]
        if shape is None:
            continue
        dims = list(shape)
        if all(isinstance(d, int) for d in dims) and list(arr.shape) != dims:
            raise error(f"{where}: {what} '{name}' has shape {list(arr.shape)}, the model's is {dims}; "
                        "the file is truncated or belongs to another model")


def read_json(path: str | os.PathLike[str], kind: str, error: _Err = DataError) -> dict[str, Any]:
    """A JSON object from ``path``; one-line errors for a missing, unreadable or malformed file."""
    p = Path(path)
    if not p.exists():
        raise error(f"{kind} file '{p}' does not exist")
    if not p.is_file():
        raise error(f"{kind} file '{p}' is not a file")

    check_size(p.stat().st_size, f"{kind} file '{p}'", error)
    try:
        d = json.loads(p.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise error(f"{kind} file '{p}' is not text (UTF-8 JSON expected)") from None
    except json.JSONDecodeError as e:
        raise error(f"{kind} file '{p}' is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except ValueError as e:
        raise error(f"{kind} file '{p}' holds {e}; JSON numbers must be finite") from None
    except RecursionError:
        raise error(f"{kind} file '{p}' is nested too deeply") from None
    if not isinstance(d, dict):
        raise error(f"{kind} file '{p}' holds a JSON {type(d).__name__}, not an object")
    return d


def _no_constant(name: str) -> Any:
    raise ValueError(name)
