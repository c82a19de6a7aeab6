"""The ``onnxslice`` command: one verb per module in ``onnxslice/commands``.

Each verb module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.

Exit codes (see docs/guarantees.md):

- 0: done.
- 2: bad usage or bad input (one line on stderr: ``onnxslice VERB: ...``).
- 3: an unsupported model or op, including ops onnxruntime itself has no kernel for (one line).
- 130: interrupted (Ctrl-C or SIGTERM); temporary files are removed, nothing half-written remains.
- 1: a bug in onnxslice: the traceback, then a line asking to report it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import pkgutil
import re
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Iterator, Sequence
from types import FrameType, ModuleType
from typing import Any, NoReturn

from onnxslice.commands import deferred_warnings
from onnxslice.commands._types import positive_float
from onnxslice.errors import OnnxSliceError
from onnxslice.limits import DEFAULT_MAX_BYTES, set_max_bytes
from onnxslice.version import __version__

__all__ = ["Interrupted", "build_parser", "main"]

#: What an error message from onnxruntime says when it has no kernel for an op (exit 3, not 2).
_ORT_UNSUPPORTED = re.compile(
    r"NOT_IMPLEMENTED|Could not find an implementation|is not a registered function/op|"
    r"No Op registered for|No opset import for domain|not supported|Unsupported",
    re.IGNORECASE,
)


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM, so ``finally`` blocks remove temporary files."""


def _verbs() -> list[ModuleType]:
    import onnxslice.commands as pkg

    mods = [importlib.import_module(f"{pkg.__name__}.{m.name}") for m in pkgutil.iter_modules(pkg.__path__)]
    mods = [m for m in mods if hasattr(m, "NAME") and hasattr(m, "run")]
    return sorted(mods, key=lambda m: getattr(m, "ORDER", 50))


def one_line(text: str) -> str:
    """``text`` collapsed to one line (onnxruntime and onnx put newlines in their messages)."""
    return " ".join(str(text).split())


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: the reason, then the verb's usage."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {one_line(message)} (usage: {self.short_usage()}; "
                         f"see '{self.prog} --help')\n")
        raise SystemExit(2)

    def short_usage(self) -> str:
        """``onnxslice VERB MODEL --out OUT [options]``: the positionals and required options only."""
        parts = [self.prog]
        optional = False
        for a in self._actions:
            if isinstance(a, argparse._SubParsersAction):
                parts.append("VERB")
            elif not a.option_strings:
                parts.append(a.metavar if isinstance(a.metavar, str) else a.dest.upper())
            elif a.required:
                parts.append(f"{a.option_strings[0]} {a.metavar or a.dest.upper()}")
            elif a.dest != "help":
                optional = True
        return " ".join(parts + (["[options]"] if optional else []))


class _TopParser(_Parser):
    """The top-level parser: unknown arguments are reported by the verb they were given to."""

    verb_parsers: dict[str, _Parser]

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        ns, extra = self.parse_known_args(args, namespace)
        if extra:
            target = self.verb_parsers.get(getattr(ns, "verb", "") or "", self)
            target.error(f"unrecognized arguments: {' '.join(extra)}")
        return ns


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, unless the help text already states it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text.lower() or action.default is None or action.default is argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every verb."""
    parser = _TopParser(prog="onnxslice", description="Slice, rank and rewrite ONNX models (NNSlicer + SAfER).")
    parser.add_argument("--version", action="version", version=f"onnxslice {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    sub.required = True
    parser.verb_parsers = {}
    for mod in _verbs():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP, formatter_class=HelpFormatter)
        mod.add_arguments(p)
        if not any("--verbose" in a.option_strings for a in p._actions):
            p.add_argument("--verbose", action="store_true",
                           help="show warnings and onnxruntime's log (default: quiet)")
        p.add_argument("--max-size", type=positive_float, default=DEFAULT_MAX_BYTES / 1e9, metavar="GB",
                       help="refuse any one declared array (data, initializer, external data) above this many GB "
                            f"before allocating it (default {DEFAULT_MAX_BYTES / 1e9:g})")
        p.set_defaults(_run=mod.run)
        _format_nested(p)
        parser.verb_parsers[mod.NAME] = p
    return parser


def _format_nested(parser: argparse.ArgumentParser) -> None:
    """Give a verb's own sub-commands (``detect fit``, ...) the same help formatter, at any depth."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                child.formatter_class = HelpFormatter
                _format_nested(child)


def _quiet_onnxruntime(verbose: bool) -> None:
    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover - onnxruntime is a dependency
        return
    ort.set_default_logger_severity(2 if verbose else 3)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises :class:`Interrupted` in the main thread (so temporary files are cleaned up)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _ort_exit_code(exc: BaseException) -> int | None:
    """2 or 3 for an onnxruntime error that is the model's or the input's fault; None otherwise."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        mod = type(e).__module__ or ""
        name = type(e).__name__
        if "onnxruntime" in mod:
            if name in ("NotImplemented", "NoSuchFile") or _ORT_UNSUPPORTED.search(str(e)):
                return 3
            if name in ("InvalidArgument", "InvalidGraph", "InvalidProtobuf", "Fail"):
                return 2
        e = e.__cause__ or e.__context__
    return None


def _report(verb: str, message: str) -> None:
    sys.stderr.write(f"onnxslice {verb}: {one_line(message)}\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for bad usage, 0 after ``--help``)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    verbose = bool(getattr(args, "verbose", False))
    verb = str(args.verb)
    set_max_bytes(max(1, int(float(getattr(args, "max_size", DEFAULT_MAX_BYTES / 1e9)) * 1e9)))
    _quiet_onnxruntime(verbose)
    try:
        with warnings.catch_warnings(), _sigterm_as_interrupt():
            if not verbose:
                warnings.simplefilter("ignore")
            with deferred_warnings() as pending:
                code = int(args._run(args) or 0)
                sys.stderr.write("".join(pending))
            return code
    except OnnxSliceError as e:
        code = e.exit_code
        if code == 2 and _ORT_UNSUPPORTED.search(str(e)) and _ort_exit_code(e) == 3:
            code = 3
        _report(verb, str(e))
        return code
    except KeyboardInterrupt:
        sys.stderr.write(f"onnxslice {verb}: interrupted; no partial file was left\n")
        return 130
    except MemoryError:
        _report(verb, "out of memory; use smaller data (?n=...) or a smaller --batch-size")
        return 2
    except Exception as e:
        if isinstance(e, OSError) and e.filename is not None:  # a file the user named cannot be read
            _report(verb, f"cannot access '{e.filename}': {e.strerror or e}")
            return 2
        ort_code = _ort_exit_code(e)
        if ort_code is not None:
            _report(verb, f"onnxruntime cannot run this model: {e}")
            return ort_code
        traceback.print_exc()
        sys.stderr.write(
            f"onnxslice {verb}: this is a bug in onnxslice {__version__}; please report it with the command line "
            "and the traceback above\n"
        )
        return 1
    finally:
        sys.stderr.flush()


if __name__ == "__main__":
    raise SystemExit(main())
