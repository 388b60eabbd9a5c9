"""Core tests of execution, limits, traps, WASI and determinism run on every engine: ``pyphase.run`` is pinned to
the engine of the test's ``engine`` parameter (wasmtime is in the test extra, so its cases fail, not skip, when
it cannot load)."""

from __future__ import annotations

import functools
from typing import Iterator

import pytest

import pyphase
from pyphase import runtime

ENGINE_MODULES = ("test_limits", "test_traps", "test_wasi", "test_deterministic")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    name = metafunc.module.__name__.rpartition(".")[2]
    if name in ENGINE_MODULES and "engine" not in metafunc.fixturenames:
        metafunc.fixturenames.append("engine")
        metafunc.parametrize("engine", ["wasm3", "wasmtime"])


@pytest.fixture(autouse=True)
def _run_on_engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    if "engine" in request.fixturenames:
        engine = request.getfixturevalue("engine")
        monkeypatch.setattr(pyphase, "run", functools.partial(runtime.run, engine=engine))
    yield


def wasm3_only(why: str) -> pytest.MarkDecorator:
    """For a test of how wasm3 counts or reuses: on the compiling engine the thing tested does not exist."""
    return pytest.mark.parametrize("engine", ["wasm3"], ids=[f"wasm3-only({why})"])
