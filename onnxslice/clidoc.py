"""The CLI reference (``docs/cli.md``), generated from the argument parsers so that it cannot drift.

``python -m onnxslice.clidoc > docs/cli.md`` rewrites it; ``python -m onnxslice.clidoc --check docs/cli.md``
exits 1 when the file differs from what the parsers say (a test runs the same comparison).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from onnxslice.cli import build_parser

__all__ = ["cli_reference"]


def _verbs(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _row(action: argparse.Action) -> str:
    flags = ", ".join(f"`{f}`" for f in action.option_strings) or f"`{action.metavar or action.dest}`"
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        flags += " {" + ", ".join(map(str, action.choices)) + "}"
    required = action.required or not action.option_strings
    default = "required" if required else ("" if action.default in (None, argparse.SUPPRESS) else f"`{action.default}`")
    if isinstance(action, argparse._StoreTrueAction):
        default = "off"
    return f"| {_cell(flags)} | {_cell(default)} | {_cell(action.help or '')} |"


def cli_reference() -> str:
    """The Markdown reference of every verb: usage, then one row per argument with its default."""
    parser = build_parser()
    lines = ["# CLI reference", "",
             "Generated from the argument parsers by `python -m onnxslice.clidoc > docs/cli.md`; a test fails when",
             "this file and the parsers disagree. Exit codes: 0 ok, 2 bad usage or input, 3 unsupported model or op,",
             "130 interrupted; see [guarantees](guarantees.md).", ""]
    verbs = _verbs(parser)
    lines += ["| verb | what it does |", "|---|---|"]
    lines += [f"| [`{name}`](#{name}) | {_cell(p.description or '')} |" for name, p in verbs.items()]
    for name, p in verbs.items():
        lines += _section(name, p, 2)
    return "\n".join(lines) + "\n"


def _section(name: str, p: argparse.ArgumentParser, depth: int) -> list[str]:
    usage = " ".join(p.format_usage().split())[len("usage: "):]
    lines = ["", f"{'#' * depth} {name}", "", p.description or "", "", "```", usage, "```", "",
             "| argument | default | meaning |", "|---|---|---|"]
    lines += [_row(a) for a in p._actions if not isinstance(a, argparse._HelpAction)]
    for sub_name, child in _verbs(p).items():
        lines += _section(f"{name} {sub_name}", child, depth + 1)
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Print the reference, or with ``--check FILE`` compare it with FILE."""
    args = list(sys.argv[1:] if argv is None else argv)
    text = cli_reference()
    if args[:1] == ["--check"] and len(args) == 2:
        with open(args[1], encoding="utf-8") as f:
            same = f.read() == text
        if not same:
            sys.stderr.write(f"{args[1]} is out of date: run python -m onnxslice.clidoc > {args[1]}\n")
        return 0 if same else 1
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
