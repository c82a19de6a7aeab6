"""Fixtures of the bad-input suite: one base workspace per session, a fresh copy per case."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from _bad import Workspace, build_base


@pytest.fixture(scope="session")
def base_ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_base(tmp_path_factory.mktemp("badinput-base") / "w")


@pytest.fixture
def ws(base_ws: Path, tmp_path: Path) -> Workspace:
    root = tmp_path / "w"
    shutil.copytree(base_ws, root, symlinks=True)
    return Workspace(root)
