"""The engines that run a job, and how ``auto`` picks one.

``wasm3`` interprets: it starts a job in microseconds and is always there. ``wasmtime`` compiles with Cranelift
(wasmtime's C API, loaded from the ``wasmtime`` wheel: ``pip install 'pyphase[jit]'``): it runs compute close to
native speed but compiles first (milliseconds to seconds, cached per module). Both see the module after our
validator, the same WASI layer, the same limits and statuses; fuel is counted in each engine's own unit
(:data:`FUEL_UNITS`), which the receipt names (:func:`fuel_unit`: ``none`` when the compiling engine ran without a
fuel limit and so did not count).

``auto`` (the default) keeps short jobs on wasm3 and sends a job to the compiler when its own budget says it is
long (:data:`AUTO_FUEL`, :data:`AUTO_TIMEOUT_MS`), when a wasm3 job of its module took long
(:data:`AUTO_WALL_US`; kept in the data dir's history when :func:`use_data_dir` names one, so it outlives the
process). Compiled code alone sends no job to the compiler: a short job of a compiled module still starts on wasm3,
in about a third of the time an instance of compiled code takes. A long job of a big module whose code is not ready
runs on wasm3 while the code is compiled in the background for the next one; so does a module whose wasm3 job just
ran long. Compiled code is kept by module hash in memory and, with a data dir, on disk (:mod:`pyphase.compiled`).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pyphase import _core
from pyphase.compiled import DEFAULT_MAX_BYTES, CompiledCache, ValidationRecords, configuration
from pyphase.errors import PhaseError

if TYPE_CHECKING:
    from pyphase.history import ModuleRuns
    from pyphase.limits import Limits
    from pyphase.runtime import Module

ENGINES = ("wasm3", "wasmtime")
CHOICES = (*ENGINES, "auto")
#: the wasmtime release whose C API csrc/phase_wasmtime_api.h declares
WASMTIME_VERSION: str = _core.WASMTIME_VERSION
#: what ``fuel_used`` and ``limits.fuel`` count on each engine
FUEL_UNITS = {"wasm3": "wasm3-ticks", "wasmtime": "wasmtime-fuel"}
#: the unit of a ``fuel_used`` that was not counted (it reads 0)
UNMETERED = "none"


def fuel_unit(engine: str, fuel_limit: int) -> str:
    """What a job's ``fuel_used`` counts: wasm3 always counts its ticks; the compiling engine counts its fuel only
    under a fuel limit (metering would slow compiled code by up to 1.6x), so without one it reads 0 in unit
    :data:`UNMETERED`."""
    if engine == "wasmtime" and not fuel_limit:
        return UNMETERED
    return FUEL_UNITS.get(engine, FUEL_UNITS["wasm3"])


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
_compiling: dict[tuple[bytes, int], threading.Thread] = {}
_HISTORY_MAX = 4096
_runs: ModuleRuns | None = None
_cache: CompiledCache | None = None
_cache_dir: tuple[Path, int] | None = None
_records: ValidationRecords | None = None
_data_dir: Path | None = None
#: names the compiler build whose code the disk cache holds: wasmtime's release and our engine settings (bump the
#: suffix when phase_wasmtime.c changes a setting that changes generated code)
ENGINE_TAG = f"wasmtime-{WASMTIME_VERSION}/phase-2"


@functools.cache
def _library_path() -> Path:
    """The installed wheel's ``_libwasmtime.so`` (found once: a sandbox's parent asks again for its fork server)."""
    spec = importlib.util.find_spec("wasmtime")
    if spec is None or not spec.submodule_search_locations:
        raise EngineUnavailable(
            "the compiling engine needs the wasmtime wheel: pip install 'pyphase[jit]' "
            f"(wasmtime=={WASMTIME_VERSION}); without it jobs run on wasm3"
        )
    base = Path(next(iter(spec.submodule_search_locations)))
    version = _installed_version(base)
    if version != WASMTIME_VERSION:
        raise EngineUnavailable(
            f"wasmtime {version} is installed, pyphase's compiling engine is built for {WASMTIME_VERSION}: "
            f"pip install 'wasmtime=={WASMTIME_VERSION}'"
        )
    machine = os.uname().machine.lower()  # what platform.machine() says, without importing platform
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    path = base / f"linux-{machine}" / "_libwasmtime.so"
    if not path.is_file():
        raise EngineUnavailable(f"the wasmtime wheel has no C library for linux-{machine} ({path} is missing)")
    return path


def _installed_version(package: Path) -> str:
    """The installed wasmtime wheel's version: read from the name of the one ``wasmtime-*.dist-info`` beside the
    package (what pip writes; a listing of one directory), else asked of importlib.metadata, which a ``phase run``
    would pay 25-80 ms of imports for (email, zipfile, csv: BENCHMARKS.md, "Start-up")."""
    prefix, suffix = "wasmtime-", ".dist-info"
    try:
        found = [n for n in os.listdir(package.parent) if n.startswith(prefix) and n.endswith(suffix)]
    except OSError:
        found = []
    if len(found) == 1:
        return found[0][len(prefix) : -len(suffix)]
    from importlib import metadata  # several or no dist-info here (an odd install): the full lookup

    return metadata.version("wasmtime")


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


def looks_long(digest: bytes, limits: Limits) -> bool:
    """Whether ``auto`` takes a job of this module for a long one: its own budget, or an earlier job's time on wasm3."""
    return limits.fuel >= AUTO_FUEL or limits.timeout_ms >= AUTO_TIMEOUT_MS or _past(digest) >= AUTO_WALL_US


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
    if engine == "wasmtime" and not _loaded:
        load_wasmtime()
    return engine


def use_data_dir(data_dir: str | os.PathLike[str] | None, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
    """Keep ``auto``'s module history in ``DATA_DIR/history.sqlite`` and compiled code in ``DATA_DIR/compiled/``
    (at most ``max_bytes``), so both outlive this process; None: in memory only (Private mode). Loads nothing: the
    compiled-code directory is opened once the compiling engine is."""
    from pyphase.history import HISTORY_FILE, ModuleRuns  # only a process that keeps a data dir needs it

    global _runs, _cache, _cache_dir, _data_dir, _records
    runs = None if data_dir is None else ModuleRuns(Path(data_dir) / HISTORY_FILE)
    with _lock:
        _data_dir = None if data_dir is None else Path(data_dir)
        old, _runs, _cache, _records = _runs, runs, None, None
        _cache_dir = None if data_dir is None else (Path(data_dir) / "compiled", max_bytes)
        _history.clear()
    if old is not None:
        old.close()


def data_dir() -> Path | None:
    """The data dir :func:`use_data_dir` named last (None: in memory only)."""
    return _data_dir


def compiled_cache() -> CompiledCache | None:
    """The data dir's compiled code (None without a data dir, or before the compiling engine is loaded)."""
    global _cache, _cache_dir
    if not _loaded:
        return None
    with _lock:
        if _cache is None and _cache_dir is not None:
            try:
                _cache = CompiledCache(_cache_dir[0], ENGINE_TAG, _cache_dir[1])
            except (OSError, PhaseError):
                _cache_dir = None  # an unwritable data dir: compiled code stays in memory
        return _cache


def validation_records() -> ValidationRecords | None:
    """The data dir's records of modules our validator accepted (None without a data dir, or an unwritable one)."""
    global _records
    with _lock:
        if _records is None and _cache_dir is not None:
            try:
                _records = ValidationRecords(_cache_dir[0])
            except (OSError, PhaseError):
                pass  # an unwritable data dir: every process validates
        return _records


def module_for(data: bytes, digest: bytes) -> Module:
    """The module of ``data`` (sha256 ``digest``) for a job in this process: validated at most once per process
    (:meth:`Module.cached`), and not at all when the data dir has a record, made by this validator's build, that it
    accepted these exact bytes, with the facts it found (:mod:`pyphase.compiled`). A damaged or forged record is
    refused with a :class:`~pyphase.compiled.CacheRefused` warning and the module validated as if there were none."""
    from pyphase.runtime import Module

    known = Module.lookup(digest)
    if known is not None:
        return known
    records = validation_records()
    facts = records.read(digest) if records is not None else False
    if isinstance(facts, tuple):
        try:
            return Module.from_record(data, digest, facts)
        except ValueError:  # facts that do not fit these bytes: the record goes, the validator decides
            records.forget(digest)  # type: ignore[union-attr]
    return Module.cached(data, digest)


def record_validated(module: Module) -> None:
    """Keep a record that our validator accepted ``module`` (validated in this process), with its facts, for the
    next process (:func:`module_for`)."""
    if module.recorded:
        return
    records = validation_records()
    if records is not None:
        try:
            records.write(module.digest, module._core.facts)
            module.recorded = True
        except OSError:
            pass  # a full or read-only disk: the next process validates


def _past(digest: bytes) -> int:
    """The wall time of the module's longest wasm3 job (as this process knows it, else the data dir), 0 if none."""
    past = _history.get(digest)  # the tiny job's path: a dict read needs no lock
    if past is not None:
        return past
    with _lock:
        past = _history.get(digest)
        runs = _runs
    if past is not None:
        return past
    past = 0
    if runs is not None:
        import sqlite3  # loaded already with the data dir's history (only a process that keeps one needs it)

        try:
            past = runs.get(digest) or 0
        except sqlite3.Error:
            pass
    with _lock:
        _remember(digest, past)
    return past


def _remember(digest: bytes, wall_us: int) -> None:
    if len(_history) >= _HISTORY_MAX and digest not in _history:
        _history.pop(next(iter(_history)))
    _history[digest] = wall_us


def record(digest: bytes, engine: str, wall_us: int) -> None:
    """Remember the longest wasm3 job of this module (``auto`` reads it for the next job; a module once long stays
    long, since a short job of it on compiled code costs a fraction of a millisecond); a long one is written to the
    data dir's history too."""
    if engine != "wasm3" or wall_us <= _history.get(digest, -1):
        return  # the tiny job's path: nothing new (a dict read needs no lock)
    with _lock:
        before = _history.get(digest, 0)
        _remember(digest, max(before, wall_us))
        runs = _runs
    if runs is not None and wall_us >= AUTO_WALL_US and wall_us > before:
        _persist(runs, digest, wall_us)


def _persist(runs: ModuleRuns, digest: bytes, wall_us: int) -> None:
    import sqlite3

    try:
        runs.put(digest, wall_us)
    except sqlite3.Error:
        pass  # a full or damaged disk loses the history for the next process, never a job


def forget(digest: bytes) -> None:
    """Drop what ``auto`` remembers of a module (in this process and in the data dir)."""
    with _lock:
        _history.pop(digest, None)
        runs = _runs
    if runs is not None:
        _persist(runs, digest, 0)


def _store(module: Module, limits: Limits, deterministic: bool) -> None:
    cache = compiled_cache()
    if cache is not None:
        try:
            cache.store(module, limits, deterministic)
        except (OSError, PhaseError):
            return  # a full or read-only disk costs the next process a compile, nothing else
        record_validated(module)


def compile_in_background(module: Module, limits: Limits, deterministic: bool) -> None:
    """Compile ``module`` for jobs with these limits on a thread of its own (and keep the code in the data dir), unless
    it is compiled or compiling already; jobs meanwhile run on wasm3."""
    key = (module.digest, configuration(limits, deterministic))
    try:
        load_wasmtime()  # a short-looking job did not load it
    except EngineUnavailable:
        return
    if module._core.is_compiled(limits, deterministic):
        return

    def work() -> None:
        try:
            module._core.compile(limits, deterministic)
            _store(module, limits, deterministic)
        except PhaseError:
            pass
        finally:
            with _lock:
                _compiling.pop(key, None)

    with _lock:
        if key in _compiling:
            return
        thread = _compiling[key] = threading.Thread(target=work, name=f"phase-compile-{module.hash[7:19]}", daemon=True)
    thread.start()


def wait_for_compiles(timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for background compiles (``phase run`` before it exits); True when none is left."""
    deadline = time.monotonic() + timeout
    while True:
        with _lock:
            threads = list(_compiling.values())
        if not threads:
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        threads[0].join(left)


def _ready(module: Module, limits: Limits, deterministic: bool) -> bool:
    """Whether ``module``'s code for these limits is compiled in memory, or could be loaded from the data dir."""
    if module._core.is_compiled(limits, deterministic):
        return True
    cache = compiled_cache()
    return cache is not None and cache.load(module, limits, deterministic)


def choose(engine: str, module: Module | None, limits: Limits, deterministic: bool) -> str:
    """The engine a job runs on: ``engine`` itself unless it is ``auto`` (see the module's docstring)."""
    if engine != "auto":
        check(engine)
        if engine == "wasmtime" and module is not None:
            _ready(module, limits, deterministic)  # compiled code from the data dir, when it has it
        return engine
    if module is None or not looks_long(module.digest, limits):
        return "wasm3"
    if not _loaded and "wasmtime" not in available():
        return "wasm3"
    if _ready(module, limits, deterministic) or module.size <= AUTO_INLINE_COMPILE_BYTES:
        return "wasmtime"
    compile_in_background(module, limits, deterministic)
    return "wasm3"


def after_job(
    module: Module, limits: Limits, deterministic: bool, asked: str, ran: str, wall_us: int, compile_us: int
) -> None:
    """What ``auto`` learns from a finished job: its wasm3 time (history), and whether to compile the module now (a
    long wasm3 job) or keep the code the job compiled (on disk)."""
    if ran == "wasm3":
        if asked == "auto":
            record(module.digest, ran, wall_us)
            if wall_us >= AUTO_WALL_US:
                compile_in_background(module, limits, deterministic)
    elif compile_us and compiled_cache() is not None:
        threading.Thread(target=_store, args=(module, limits, deterministic), daemon=True).start()
