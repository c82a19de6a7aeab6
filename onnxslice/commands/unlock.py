"""``onnxslice unlock LOCKED --key owner.key --out restored.onnx``: put the hidden weights back.

The key must belong to this locked model (graph fingerprint and a hash of every initializer); the
restored weights are checked against the original's hash before anything is written.
"""

from __future__ import annotations

import argparse
from typing import Any

from onnxslice.commands import emit_json
from onnxslice.outputs import Outputs

NAME = "unlock"
HELP = "restore a model locked by `onnxslice protect` with its owner's key (bit-identical weights)"
ORDER = 81


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="LOCKED", help="the locked .onnx file written by `onnxslice protect`")
    p.add_argument("--key", "-k", required=True, help="the owner's key written by `onnxslice protect --key` (required)")
    p.add_argument("--out", "-o", required=True, help="where to write the restored model (never LOCKED)")
    p.add_argument("--passphrase-env", default=None, metavar="VAR",
                   help="environment variable holding the key's passphrase, for an encrypted key (default: ask on "
                        "the terminal when the key is encrypted)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of text (default off)")


def run(args: argparse.Namespace) -> int:
    from onnxslice.apps.protect import unlock, weights_hash
    from onnxslice.apps.protect_key import ProtectKey, passphrase_from
    from onnxslice.model import load

    outs = Outputs(NAME)
    outs.reads(args.model, "LOCKED")
    outs.reads(args.key, "--key")
    out_path = outs.writes(args.out, "--out")
    encrypted = ProtectKey.is_encrypted(args.key)
    secret = passphrase_from(args.passphrase_env, prompt=encrypted) if encrypted else None
    key = ProtectKey.load(args.key, secret)
    locked = load(args.model)
    restored = unlock(locked, key)
    outs.defer(out_path, lambda p: restored.save(p))
    outs.commit()
    result: dict[str, Any] = {
        "out": str(out_path),
        "restored_entries": key.hidden,
        "weights": {n: int(p.size) for n, p in key.positions.items()},
        "weights_sha256": weights_hash(restored),
    }
    if args.json:
        emit_json(result)
        return 0
    print(f"restored {key.hidden:,} hidden entries in {len(key.positions)} weights; weights sha256 "
          f"{result['weights_sha256'][:16]}… matches the original")  # fmt: skip
    print(f"saved {out_path}")
    return 0
