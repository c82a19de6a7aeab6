"""The ``onnxslice`` command: one verb per module in ``onnxslice/commands``.

Each verb module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.
A user error (:class:`OnnxSliceError`) prints one line on stderr and exits 2 (3 for an unsupported
model); a bug keeps its traceback. Exit codes: 0 ok, 2 bad usage or bad input, 3 unsupported model.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType

from onnxslice import __version__
from onnxslice.errors import OnnxSliceError

__all__ = ["main"]


def _verbs() -> list[ModuleType]:
    import onnxslice.commands as pkg

    mods = [importlib.import_module(f"{pkg.__name__}.{m.name}") for m in pkgutil.iter_modules(pkg.__path__)]
    mods = [m for m in mods if hasattr(m, "NAME") and hasattr(m, "run")]
    return sorted(mods, key=lambda m: getattr(m, "ORDER", 50))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"onnxslice: error: {message}\n")
        raise SystemExit(2)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, unless the help text already states it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text.lower() or action.default is None or action.default is argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every verb."""
    parser = _Parser(prog="onnxslice", description="Slice, rank and rewrite ONNX models (NNSlicer + SAfER).")
    parser.add_argument("--version", action="version", version=f"onnxslice {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    sub.required = True
    for mod in _verbs():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP, formatter_class=HelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            if not getattr(args, "verbose", False):
                warnings.simplefilter("ignore", DeprecationWarning)
            return int(args._run(args) or 0)
    except OnnxSliceError as e:
        sys.stderr.write(f"onnxslice {args.verb}: {e}\n")
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("onnxslice: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
