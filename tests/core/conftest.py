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
    marked = any("engine" in str(m.args[0]) for m in metafunc.definition.iter_markers("parametrize") if m.args)
    if name in ENGINE_MODULES and not marked:
        if "engine" not in metafunc.fixturenames:
            metafunc.fixturenames.append("engine")
        metafunc.parametrize("engine", ["wasm3", "wasmtime"])


@pytest.fixture(autouse=True)
def _run_on_engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    callspec = getattr(request.node, "callspec", None)
    engine = callspec.params.get("engine") if callspec is not None else None
    if engine is not None:
        monkeypatch.setattr(pyphase, "run", functools.partial(runtime.run, engine=engine))
    yield
