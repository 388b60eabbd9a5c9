"""Shared fixtures: real wasm built from sources under tests/ (cached in tests/.wasm-cache)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import wasm_build  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello" / "hello.wasm"


@pytest.fixture(scope="session")
def hello_bytes() -> bytes:
    return HELLO.read_bytes()


@pytest.fixture(scope="session")
def probe_bytes() -> bytes:
    """tests/programs/wasi_probe.c built with zig's default flags (as users build)."""
    return wasm_build.build_c("wasi_probe.c").read_bytes()


@pytest.fixture(scope="session")
def probe_mvp_bytes() -> bytes:
    return wasm_build.build_c("wasi_probe.c", wasm_build.ZIG_MVP).read_bytes()


@pytest.fixture(scope="session")
def wat():
    return wasm_build.build_wat
