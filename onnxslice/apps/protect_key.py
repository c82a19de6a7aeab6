"""The owner's key of a protected model: hidden positions, original values, and the file format.

A key file is three parts::

    ONNXSLICE-KEY 1\\n
    {"encrypted": false, "sha256": "...", "kdf": null}\\n
    <payload>

The payload is a ``.npz`` (no pickles) holding, per protected initializer, the flat indices of the
hidden entries (``pos:NAME``, int64) and their original values (``val:NAME``, the initializer's
dtype), plus a JSON header (``__meta__``) with the hashes of the locked model it opens and of the
original weights it restores. ``sha256`` is the digest of the payload as stored, so any edit of the
file is refused before use.

With a passphrase, the payload is a Fernet token (AES-128-CBC + HMAC-SHA256, from the
``cryptography`` package) whose key is derived from the passphrase by scrypt (parameters and salt in
the header). A wrong passphrase fails Fernet's authentication. Without a passphrase the key is
plain data: whoever holds it and the locked model can restore the original.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxslice.errors import DataError

__all__ = ["KeyFileError", "ProtectKey", "WrongPassphraseError", "passphrase_from", "write_key_bytes"]

_MAGIC = b"ONNXSLICE-KEY 1\n"
_SCRYPT = {"n": 2**15, "r": 8, "p": 1}
_MAX_HEADER = 4096


class KeyFileError(DataError):
    """The key file is missing, not a key, altered, or does not belong to the model."""


class WrongPassphraseError(KeyFileError):
    """The passphrase does not open the encrypted key."""


def _fernet(passphrase: str, salt: bytes, params: Mapping[str, int]) -> Any:
    from cryptography.fernet import Fernet
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    kdf = Scrypt(salt=salt, length=32, n=int(params["n"]), r=int(params["r"]), p=int(params["p"]))
    return Fernet(base64.urlsafe_b64encode(kdf.derive(passphrase.encode("utf-8"))))


@dataclass
class ProtectKey:
    """Positions and original values of the hidden weights, and what they belong to.

    Attributes:
        positions: initializer name -> flat indices (int64, ascending) of the hidden entries.
        values: initializer name -> original values at those indices (the initializer's dtype).
        meta: ``locked_hash`` (hash of the locked model it opens), ``original_hash`` (hash of the
            weights it restores), ``fingerprint`` (graph structure), and the selection settings.
    """

    positions: dict[str, np.ndarray]
    values: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def hidden(self) -> int:
        """Number of hidden entries."""
        return int(sum(p.size for p in self.positions.values()))

    # -- bytes -------------------------------------------------------------------------------------
    def _payload(self) -> bytes:
        arrays: dict[str, np.ndarray] = {}
        for name, pos in self.positions.items():
            arrays[f"pos:{name}"] = np.asarray(pos, dtype=np.int64)
            arrays[f"val:{name}"] = np.asarray(self.values[name])
        arrays["__meta__"] = np.frombuffer(json.dumps(self.meta, sort_keys=True).encode(), dtype=np.uint8)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
        return buf.getvalue()

    def to_bytes(self, passphrase: str | None = None) -> bytes:
        """The key file's bytes; encrypted with ``passphrase`` when given."""
        payload = self._payload()
        kdf = None
        if passphrase is not None:
            if not passphrase:
                raise KeyFileError("the passphrase is empty; give a non-empty passphrase or none")
            salt = os.urandom(16)
            payload = _fernet(passphrase, salt, _SCRYPT).encrypt(payload)
            kdf = {"name": "scrypt", **_SCRYPT, "salt": base64.b64encode(salt).decode()}
        header = {"encrypted": passphrase is not None, "sha256": hashlib.sha256(payload).hexdigest(), "kdf": kdf}
        return _MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + payload

    def save(self, path: str | os.PathLike[str], passphrase: str | None = None) -> Path:
        """Write the key atomically, readable by its owner only."""
        return write_key_bytes(path, self.to_bytes(passphrase))

    @staticmethod
    def is_encrypted(path: str | os.PathLike[str]) -> bool:
        """Whether the key file at ``path`` needs a passphrase."""
        header, _ = _split(_read(Path(path)), Path(path))
        return bool(header.get("encrypted"))

    @classmethod
    def from_bytes(
        cls, data: bytes, where: str = "the key", passphrase: str | Callable[[], str] | None = None
    ) -> ProtectKey:
        """Parse (and decrypt) a key.

        Args:
            data: the file's bytes.
            where: how errors name the file.
            passphrase: the passphrase, or a function asked for it only when the key is encrypted.

        Raises:
            KeyFileError: not a key, altered, or encrypted without a passphrase.
            WrongPassphraseError: the passphrase does not open it.
        """
        header, payload = _split(data, Path(where))
        if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
            raise KeyFileError(f"key '{where}' has been altered (its checksum does not match); use the original key")
        if header.get("encrypted"):
            if passphrase is None:
                raise KeyFileError(
                    f"key '{where}' is encrypted: give its passphrase (--passphrase-env VAR or the prompt)"
                )
            secret = passphrase() if callable(passphrase) else passphrase
            kdf = header.get("kdf") or {}
            try:
                salt = base64.b64decode(kdf["salt"])
                fernet = _fernet(secret, salt, kdf)
            except (KeyError, TypeError, ValueError) as e:
                raise KeyFileError(f"key '{where}' has a damaged header ({e}); use the original key") from None
            from cryptography.fernet import InvalidToken

            try:
                payload = fernet.decrypt(payload)
            except InvalidToken:
                raise WrongPassphraseError(f"wrong passphrase for key '{where}'; nothing was unlocked") from None
        return cls._parse(payload, where)

    @classmethod
    def _parse(cls, payload: bytes, where: str) -> ProtectKey:
        try:
            with np.load(io.BytesIO(payload), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            meta = json.loads(arrays.pop("__meta__").tobytes().decode())
        except Exception as e:  # a corrupt archive raises many kinds of errors
            raise KeyFileError(f"key '{where}' cannot be read ({type(e).__name__}); use the original key") from None
        positions = {k[4:]: v for k, v in arrays.items() if k.startswith("pos:")}
        values = {k[4:]: v for k, v in arrays.items() if k.startswith("val:")}
        if set(positions) != set(values) or meta.get("kind") != "protect-key":
            raise KeyFileError(f"'{where}' is not an onnxslice protection key")
        for name, pos in positions.items():
            if pos.dtype != np.int64 or pos.ndim != 1 or pos.shape != values[name].shape:
                raise KeyFileError(f"key '{where}' has inconsistent entries for '{name}'; use the original key")
        return cls(positions, values, meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str], passphrase: str | Callable[[], str] | None = None) -> ProtectKey:
        """Read a key file (see :meth:`from_bytes`)."""
        p = Path(path)
        return cls.from_bytes(_read(p), str(p), passphrase)

    def __repr__(self) -> str:
        m = self.meta
        return (
            f"ProtectKey({self.hidden:,} hidden entries in {len(self.positions)} initializers, "
            f"select={m.get('select')}, fraction={m.get('fraction')}, classes={m.get('classes')})"
        )


def write_key_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write key bytes atomically (temporary file beside ``path``, then a rename), mode 0600."""
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".onnxslice-", suffix=".key")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o600)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def passphrase_from(env: str | None, *, prompt: bool, confirm: bool = False) -> str | None:
    """The passphrase from environment variable ``env``, else from a prompt on the terminal when ``prompt``.

    Never from a command-line value (those end up in shell histories and process lists).

    Returns:
        The passphrase, or None when neither ``env`` nor ``prompt`` asks for one.

    Raises:
        KeyFileError: ``env`` is unset or empty, the prompt has no terminal, or the two entries differ.
    """
    import getpass
    import sys

    if env:
        value = os.environ.get(env)
        if not value:
            raise KeyFileError(f"environment variable {env} (from --passphrase-env) is unset or empty; export it first")
        return value
    if not prompt:
        return None
    if not sys.stdin.isatty():
        raise KeyFileError("a passphrase is needed but there is no terminal to ask on; use --passphrase-env VAR")
    first = getpass.getpass("key passphrase: ")
    if not first:
        raise KeyFileError("the passphrase is empty; nothing was written")
    if confirm and getpass.getpass("again: ") != first:
        raise KeyFileError("the two passphrases differ; nothing was written")
    return first


def _read(path: Path) -> bytes:
    if not path.is_file():
        raise KeyFileError(f"key file '{path}' does not exist")
    return path.read_bytes()


def _split(data: bytes, path: Path) -> tuple[dict[str, Any], bytes]:
    if not data.startswith(_MAGIC):
        raise KeyFileError(f"'{path}' is not an onnxslice protection key (give the file written by --key)")
    rest = data[len(_MAGIC) :]
    end = rest.find(b"\n", 0, _MAX_HEADER)
    if end < 0:
        raise KeyFileError(f"key '{path}' has a damaged header; use the original key")
    try:
        header = json.loads(rest[:end].decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise KeyFileError(f"key '{path}' has a damaged header; use the original key") from None
    if not isinstance(header, dict):
        raise KeyFileError(f"key '{path}' has a damaged header; use the original key")
    return header, rest[end + 1 :]
