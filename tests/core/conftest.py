"""Core tests of execution, limits, traps, WASI and determinism run on every engine, in this process and in sandbox
workers: ``pyphase.run`` is pinned to the test's ``engine`` parameter (wasmtime is in the test extra, so its cases
fail, not skip, when it cannot load); ``sandbox-*`` cases run the job in a worker of one shared
:class:`pyphase.Sandbox`, after loading the module here as :func:`pyphase.run` does (so that a module our validator
refuses raises the same :class:`~pyphase.InvalidModule`)."""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterator

import pytest

import pyphase
from pyphase import _sandbox, engines, runtime
from pyphase.result import Result

ENGINE_MODULES = ("test_limits", "test_traps", "test_wasi", "test_deterministic")
ENGINES = ("wasm3", "wasmtime", "sandbox-wasm3", "sandbox-wasmtime")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    name = metafunc.module.__name__.rpartition(".")[2]
    marked = any("engine" in str(m.args[0]) for m in metafunc.definition.iter_markers("parametrize") if m.args)
    if name in ENGINE_MODULES and not marked:
        if "engine" not in metafunc.fixturenames:
            metafunc.fixturenames.append("engine")
        metafunc.parametrize("engine", ENGINES)


@pytest.fixture(scope="session")
def _core_sandbox() -> Iterator[pyphase.Sandbox]:
    with pyphase.Sandbox(workers=2, grace_ms=1000) as sandbox:
        yield sandbox


def _run_in(sandbox: pyphase.Sandbox, engine: str, module: Any, *args: Any, **kwargs: Any) -> Result:
    return sandbox.run(
        module if isinstance(module, pyphase.Module) else pyphase.Module(module), *args, engine=engine, **kwargs
    )


@pytest.fixture(autouse=True)
def _run_on_engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    callspec = getattr(request.node, "callspec", None)
    engine = callspec.params.get("engine") if callspec is not None else None
    if engine is not None and engine.startswith("sandbox-"):
        sandbox = request.getfixturevalue("_core_sandbox")
        monkeypatch.setattr(pyphase, "run", functools.partial(_run_in, sandbox, engine.removeprefix("sandbox-")))
    elif engine is not None:
        monkeypatch.setattr(pyphase, "run", functools.partial(runtime.run, engine=engine))
    yield


@pytest.fixture(params=ENGINES)
def runner(request: pytest.FixtureRequest) -> Callable[..., Result]:
    """For tests with directories: each job on one engine, in this process or in a worker of the shared sandbox
    (``pyphase.run``'s keywords, ``dirs`` and ``quota`` included); the result says that engine ran it."""
    where = request.param
    engine = where.removeprefix("sandbox-")
    if engine not in engines.available():
        pytest.skip("the compiling engine is not installed (pyphase[jit])")
    sandbox: pyphase.Sandbox | None = None
    if where.startswith("sandbox-"):
        if _sandbox.landlock_abi() <= 0:
            pytest.skip(
                "this kernel has no Landlock: sandboxed jobs with directories are refused (test_without_landlock)"
            )
        sandbox = request.getfixturevalue("_core_sandbox")

    def on_engine(module: bytes, **kw: Any) -> Result:
        if sandbox is not None:
            result = sandbox.run_prepared(runtime.prepare_job(module, engine=engine, **kw))
        else:
            result = runtime.run(module, engine=engine, **kw)
        assert result.engine == engine, result
        return result

    return on_engine
