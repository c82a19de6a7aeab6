"""The docs live in the repository: every link resolves, the README stays short, the CLI reference is
generated from the parsers, and every option's help states its default."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
from _common import ROOT

from onnxslice.cli import build_parser
from onnxslice.clidoc import cli_reference

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "models" / "README.md"]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_links_resolve_inside_the_repository(page: Path) -> None:
    for target in LINK.findall(page.read_text("utf-8")):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # external scheme or an anchor on the same page
        path = (page.parent / target.split("#", 1)[0]).resolve()
        assert path.is_relative_to(ROOT.resolve()), f"{page.name} links outside the repository: {target}"
        assert path.exists(), f"{page.name} links a file that does not exist: {target}"


def test_readme_is_short() -> None:
    assert len((ROOT / "README.md").read_bytes()) <= 15_000


def test_cli_reference_is_generated_from_the_parsers() -> None:
    assert (ROOT / "docs" / "cli.md").read_text("utf-8") == cli_reference(), \
        "docs/cli.md is out of date: run python -m onnxslice.clidoc > docs/cli.md"


def _children(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _verbs() -> dict[str, argparse.ArgumentParser]:
    """Every verb and every verb's own sub-command (``detect fit``), by their full names."""
    out: dict[str, argparse.ArgumentParser] = {}
    todo = list(_children(build_parser()).items())
    while todo:
        name, parser = todo.pop(0)
        out[name] = parser
        todo += [(f"{name} {k}", v) for k, v in _children(parser).items()]
    return out


@pytest.mark.parametrize("verb", sorted(_verbs()))
def test_every_option_help_states_its_default(verb: str) -> None:
    parser = _verbs()[verb]
    for action in parser._actions:
        if not action.option_strings or action.default in (None, argparse.SUPPRESS) or action.help is None:
            continue
        if isinstance(action, argparse._HelpAction):
            continue
        helptext = " ".join(parser._get_formatter()._expand_help(action).split())
        assert "default" in helptext.lower(), f"{verb} {action.option_strings[0]}: the help does not state the default"
