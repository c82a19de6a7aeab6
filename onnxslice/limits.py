"""Resource limits: declared sizes are checked against these before anything is allocated.

The CLI's ``--max-size GB`` (every verb) raises the limit; library users call :func:`set_max_bytes`.
"""

from __future__ import annotations

from onnxslice.errors import DataError

__all__ = ["DEFAULT_MAX_BYTES", "check_size", "max_bytes", "set_max_bytes"]

#: Default limit on one declared array (a data array, an initializer, an external-data tensor): 8 GB.
DEFAULT_MAX_BYTES = 8 * 10**9
_max = DEFAULT_MAX_BYTES


def max_bytes() -> int:
    """The current limit in bytes."""
    return _max


def set_max_bytes(n: int) -> None:
    """Set the limit (bytes, > 0)."""
    global _max
    if n <= 0:
        raise ValueError(f"the size limit must be positive, got {n}")
    _max = int(n)


def check_size(nbytes: int, what: str, error: type[DataError] | type[Exception] = DataError) -> None:
    """Raise ``error`` when ``what`` declares more than the limit; the message names the flag that raises it."""
    if nbytes > _max:
        raise error(
            f"{what} declares {nbytes / 1e9:.3g} GB, above the {_max / 1e9:.3g} GB limit; "
            f"raise it with --max-size GB if this is intended"
        )
