"""The engines that run a job, and how ``auto`` picks one.

``wasm3`` interprets: it starts a job in microseconds and is always there. ``wasmtime`` compiles with Cranelift
(wasmtime's C API, loaded from the ``wasmtime`` wheel: ``pip install 'pyphase[jit]'``): it runs compute close to
native speed but compiles first (milliseconds to seconds, cached per module). Both see the module after our
validator, the same WASI layer, the same limits and statuses; fuel is counted in each engine's own unit
(:data:`FUEL_UNITS`), which the receipt names.

``auto`` (the default) keeps short jobs on wasm3 and sends a job to the compiler when its own budget says it is
long (:data:`AUTO_FUEL`, :data:`AUTO_TIMEOUT_MS`), when earlier jobs of its module in this process took long
(:data:`AUTO_WALL_US`), or when the module's compiled code is ready already. A long job of a big module whose code
is not ready runs on wasm3 while the code is compiled in the background for the next one.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from pyphase import _core
from pyphase.errors import PhaseError

if TYPE_CHECKING:
    from pyphase.limits import Limits
    from pyphase.runtime import Module

ENGINES = ("wasm3", "wasmtime")
CHOICES = (*ENGINES, "auto")
#: the wasmtime release whose C API csrc/phase_wasmtime_api.h declares
WASMTIME_VERSION: str = _core.WASMTIME_VERSION
#: what ``fuel_used`` and ``limits.fuel`` count on each engine
FUEL_UNITS = {"wasm3": "wasm3-ticks", "wasmtime": "wasmtime-fuel"}
VERSIONS = {"wasm3": _core.RUNTIME_VERSION, "wasmtime": WASMTIME_VERSION}

#: a fuel budget at least this large says the job is long
AUTO_FUEL = 10**10
#: a wall-clock budget at least this long says the job is long (0, no limit, says nothing)
AUTO_TIMEOUT_MS = 60_000
#: an earlier job of the module that ran at least this long on wasm3 says the next one will too
AUTO_WALL_US = 200_000
#: a long job of a module up to this size waits for its compile (tens of ms); bigger ones compile in the background
AUTO_INLINE_COMPILE_BYTES = 512 << 10


class EngineUnavailable(PhaseError):
    """The engine asked for is not installed here (or is another version than the one pyphase was built for)."""


_lock = threading.Lock()
_load_error: str | None = None
_loaded = False
_history: dict[bytes, int] = {}
_compiling: set[tuple[bytes, bool, bool]] = set()
_HISTORY_MAX = 4096


def _library_path() -> Path:
    spec = importlib.util.find_spec("wasmtime")
    if spec is None or not spec.submodule_search_locations:
        raise EngineUnavailable(
            "the compiling engine needs the wasmtime wheel: pip install 'pyphase[jit]' "
            f"(wasmtime=={WASMTIME_VERSION}); without it jobs run on wasm3"
        )
    from importlib import (
        metadata,
    )  # here, not at the top: it brings email, zipfile, csv (2.5 MB an idle node never needs)

    version = metadata.version("wasmtime")
    if version != WASMTIME_VERSION:
        raise EngineUnavailable(
            f"wasmtime {version} is installed, pyphase's compiling engine is built for {WASMTIME_VERSION}: "
            f"pip install 'wasmtime=={WASMTIME_VERSION}'"
        )
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine().lower())
    base = Path(next(iter(spec.submodule_search_locations)))
    path = base / f"linux-{machine}" / "_libwasmtime.so"
    if not path.is_file():
        raise EngineUnavailable(f"the wasmtime wheel has no C library for linux-{machine} ({path} is missing)")
    return path


def load_wasmtime() -> None:
    """Load the compiling engine into this process (once); :class:`EngineUnavailable` says why it cannot be."""
    global _loaded, _load_error
    with _lock:
        if _loaded:
            return
        if _load_error is not None:
            raise EngineUnavailable(_load_error)
        try:
            path = os.environ.get("PHASE_WASMTIME_LIBRARY") or str(_library_path())
            _core.load_wasmtime(path)
        except PhaseError as exc:
            _load_error = str(exc)
            raise EngineUnavailable(_load_error) from None
        _loaded = True


def library() -> str:
    """The path of the loaded compiling engine's library (a sandbox's fork server loads the same one)."""
    load_wasmtime()
    return os.environ.get("PHASE_WASMTIME_LIBRARY") or str(_library_path())


def config_index(limits: Limits, deterministic: bool) -> int:
    """Which of the compiling engine's configurations a job uses (fuel metering | NaN canonicalisation << 1): its
    compiled code is per configuration (csrc/phase_wasmtime.c)."""
    return (limits.fuel != 0) | (int(deterministic) << 1)


def looks_long(digest: bytes, limits: Limits) -> bool:
    """Whether ``auto`` takes a job of this module for a long one: its own budget, or an earlier job's time on wasm3."""
    with _lock:
        past = _history.get(digest, 0)
    return limits.fuel >= AUTO_FUEL or limits.timeout_ms >= AUTO_TIMEOUT_MS or past >= AUTO_WALL_US


def available() -> list[str]:
    """The engines this process can run jobs on (a node's ``caps.engines``)."""
    if _loaded:
        return list(ENGINES)
    try:
        load_wasmtime()
    except EngineUnavailable:
        return ["wasm3"]
    return list(ENGINES)


def check(engine: str) -> str:
    """``engine`` if it is a known choice (``ValueError`` otherwise); loads wasmtime when it is asked for."""
    if engine not in CHOICES:
        raise ValueError(f"unknown engine {engine!r}: choose one of {', '.join(CHOICES)}")
    if engine == "wasmtime":
        load_wasmtime()
    return engine


def record(digest: bytes, engine: str, wall_us: int) -> None:
    """Remember how long a job of this module ran on wasm3 (``auto`` reads it for the next job)."""
    if engine != "wasm3":
        return
    with _lock:
        if len(_history) >= _HISTORY_MAX and digest not in _history:
            _history.pop(next(iter(_history)))
        _history[digest] = wall_us


def _compile_in_background(module: Module, limits: Limits, deterministic: bool) -> None:
    key = (module.digest, limits.fuel != 0, deterministic)
    with _lock:
        if key in _compiling:
            return
        _compiling.add(key)

    def work() -> None:
        try:
            module._core.compile(limits, deterministic)
        except PhaseError:
            pass
        finally:
            with _lock:
                _compiling.discard(key)

    threading.Thread(target=work, name=f"phase-compile-{module.hash[7:19]}", daemon=True).start()


def choose(engine: str, module: Module | None, limits: Limits, deterministic: bool) -> str:
    """The engine a job runs on: ``engine`` itself unless it is ``auto`` (see the module's docstring)."""
    if engine != "auto":
        return check(engine)
    if module is None or (not _loaded and "wasmtime" not in available()):
        return "wasm3"
    if module._core.is_compiled(limits, deterministic):
        return "wasmtime"
    if not looks_long(module.digest, limits):
        return "wasm3"
    if module.size <= AUTO_INLINE_COMPILE_BYTES:
        return "wasmtime"
    _compile_in_background(module, limits, deterministic)
    return "wasm3"
