"""Fixtures of the sandbox tests: one pool shared by a test module (a crash must not hurt the next test,
which is the point)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest

from pyphase.sandbox import Sandbox

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(workers=2, grace_ms=300) as sb:
        yield sb


@pytest.fixture(autouse=True)
def _no_data_dir(no_data_dir: None) -> None:
    """Each sandbox test starts with compiled code in memory only: a data dir an in-process node or phase run of an
    earlier test named would let a module's code come from disk, and a compile under test never happen."""
