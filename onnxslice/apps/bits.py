"""Bit flips in stored encodings: float32/float16 by bit class, int8/uint8/int4/uint4 in two's complement.

A fault flips bit ``j`` of one element. Bit positions count from the least significant bit (0). Bit
classes:

- float32: ``sign`` = bit 31, ``exponent`` = bits 23..30, ``mantissa`` = bits 0..22;
- float16: ``sign`` = bit 15, ``exponent`` = bits 10..14, ``mantissa`` = bits 0..9;
- signed integers (int8, int4): ``sign`` = the top bit, ``mantissa`` = every other bit (the value bits);
  unsigned integers (uint8, uint4): ``mantissa`` = every bit; no ``sign``;
- ``any`` = every bit of the element. Integers have no ``exponent``.

int4/uint4 values are handled as 4-bit fields (held in int8/uint8 numpy arrays, or ml_dtypes int4):
flipping bit 3 of int4 ``1`` gives ``-7`` (``0b0001 -> 0b1001``).
"""

from __future__ import annotations

import numpy as np

from onnxslice.errors import DataError

__all__ = ["BIT_CLASSES", "class_bits", "draw_flips", "encoding", "flip_bits"]

BIT_CLASSES = ("any", "sign", "exponent", "mantissa")

#: encoding -> (bit width, signed, float exponent bits)
_ENCODINGS: dict[str, tuple[int, bool, int]] = {
    "float32": (32, True, 8),
    "float16": (16, True, 5),
    "int8": (8, True, 0),
    "uint8": (8, False, 0),
    "int4": (4, True, 0),
    "uint4": (4, False, 0),
}
_UINT = {32: np.uint32, 16: np.uint16, 8: np.uint8}


def encoding(dtype: np.dtype | str) -> str:
    """The stored encoding of ``dtype`` (``float32``, ``float16``, ``int8``, ``uint8``, ``int4``, ``uint4``).

    Raises:
        DataError: a dtype bit flips are not modelled for (float64, int32, bool, ...).
    """
    name = str(np.dtype(dtype)) if not isinstance(dtype, str) else dtype
    if name not in _ENCODINGS:
        raise DataError(
            f"bit flips are modelled for {', '.join(_ENCODINGS)} tensors, not {name}; "
            "choose layers whose weights/activations use one of these"
        )
    return name


def class_bits(enc: str, bits: str) -> np.ndarray:
    """The bit positions of class ``bits`` (``any``, ``sign``, ``exponent``, ``mantissa``) in encoding ``enc``.

    Raises:
        DataError: an unknown class, or a class the encoding lacks (``exponent`` of int8, ``sign`` of uint8).
    """
    if bits not in BIT_CLASSES:
        raise DataError(f"unknown bit class '{bits}'; valid classes are: {', '.join(BIT_CLASSES)}")
    width, signed, exp = _ENCODINGS[encoding(enc)]
    if bits == "any":
        return np.arange(width)
    if bits == "sign":
        if not signed:
            raise DataError(f"{enc} has no sign bit; use --bits any or mantissa")
        return np.array([width - 1])
    if bits == "exponent":
        if not exp:
            raise DataError(f"{enc} has no exponent bits; use --bits any, sign or mantissa")
        return np.arange(width - 1 - exp, width - 1)
    mant = width - 1 - exp if signed else width
    return np.arange(mant)


def flip_bits(values: np.ndarray, index: np.ndarray, bit: np.ndarray, enc: str | None = None) -> np.ndarray:
    """A copy of ``values`` with bit ``bit[i]`` of flat element ``index[i]`` flipped, for every ``i``.

    The same (element, bit) listed twice flips back (XOR). ``enc`` defaults to the dtype's encoding;
    pass ``"int4"``/``"uint4"`` for 4-bit values held in int8/uint8 arrays.
    """
    arr = np.array(values, copy=True)
    enc = enc or encoding(arr.dtype)
    width, signed, _ = _ENCODINGS[enc]
    index = np.asarray(index, np.int64).ravel()
    bit = np.asarray(bit, np.int64).ravel()
    if index.size == 0:
        return arr
    if np.any(bit < 0) or np.any(bit >= width):
        raise DataError(f"bit positions must be in [0, {width}) for {enc}")
    if width == 4:
        orig = arr.dtype
        v = arr.astype(np.int16).ravel() & 0xF
        np.bitwise_xor.at(v, index, (1 << bit).astype(np.int16))
        if signed:
            v = ((v ^ 0x8) - 0x8).astype(np.int16)
        return v.reshape(arr.shape).astype(orig)
    view = arr.reshape(-1).view(_UINT[width])
    np.bitwise_xor.at(view, index, (np.ones_like(bit, dtype=np.uint64) << bit.astype(np.uint64)).astype(_UINT[width]))
    return arr


def draw_flips(
    rng: np.random.Generator, elements: int, positions: np.ndarray, rate: float | None, flips: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Draw distinct (element, bit) pairs to flip among ``elements x positions``.

    Args:
        rng: the generator of this draw.
        elements: number of elements of the tensor.
        positions: the bit positions of the chosen class.
        rate: bit-error rate: every bit of the class flips independently with this probability.
        flips: exactly this many flips (capped at the number of bits) instead of a rate.

    Returns:
        ``(element index, bit position)`` arrays.
    """
    total = int(elements) * len(positions)
    if total == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    k = int(rng.binomial(total, rate)) if rate is not None else min(int(flips or 0), total)
    if k == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    pick = rng.choice(total, size=k, replace=False) if k * 4 < total or total < 1 << 20 else rng.permutation(total)[:k]
    return (pick // len(positions)).astype(np.int64), np.asarray(positions)[pick % len(positions)].astype(np.int64)
