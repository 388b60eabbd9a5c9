"""Compiled code on disk (pyphase.compiled) and what ``auto`` keeps in the data dir (pyphase.engines.use_data_dir):
a fresh process starts compiled, every damaged or foreign file is refused and rebuilt, the directory stays bounded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyphase import Limits, engines
from pyphase.compiled import CompiledCache, CompiledCacheError, configuration
from pyphase.history import ModuleRuns
from pyphase.runtime import Module, run

LIMITS = Limits()
CONFIG = configuration(LIMITS, False)  # a node's default limits: epoch checks for the wall-clock limit
pytestmark = pytest.mark.usefixtures("no_data_dir")


@pytest.fixture
def cache(tmp_path: Path) -> CompiledCache:
    engines.load_wasmtime()
    return CompiledCache(tmp_path / "compiled", engines.ENGINE_TAG)


@pytest.fixture
def data_dir(tmp_path: Path):
    engines.load_wasmtime()
    engines.use_data_dir(tmp_path)
    yield tmp_path
    engines.use_data_dir(None)


def test_compiled_code_stored_on_disk_is_used_by_a_fresh_module_without_compiling(cache, probe_bytes):
    path = cache.store(Module(probe_bytes), LIMITS, False)
    assert path.name == f"{Module(probe_bytes).digest.hex()}-{CONFIG}.cwasm" and path.stat().st_mode & 0o777 == 0o600
    fresh = Module(probe_bytes)  # a new object: nothing compiled in memory
    assert not fresh._core.is_compiled(LIMITS)
    assert cache.load(fresh, LIMITS, False) and fresh._core.is_compiled(LIMITS)
    result = run(fresh, b"abc", args=["cat"], engine="wasmtime")
    assert (result.status, result.stdout, result.engine, result.compile_us) == ("ok", b"abc", "wasmtime", 0)
    # another configuration (fuel metering) is another file: not there yet
    assert not cache.load(fresh, Limits(fuel=10**9), False)


def _damage(kind: str, data: bytes, cache: CompiledCache, other: bytes, digest: bytes) -> bytes:
    if kind == "garbage":
        return os.urandom(len(data))
    if kind == "truncated":
        return data[: len(data) // 2]
    if kind == "empty":
        return b""
    if kind == "longer":
        return data + b"\0"
    if kind == "flipped code byte":
        i = len(data) // 2
        return data[:i] + bytes([data[i] ^ 1]) + data[i + 1 :]
    if kind == "another module's file":
        return other
    if kind == "another engine build":
        foreign = CompiledCache(cache.directory, "wasmtime-49.0.0/phase-1")
        return foreign.encode(digest, CONFIG, bytes(cache.decode(digest, CONFIG, data)))
    if kind == "another node's key":
        (cache.directory / "key").rename(cache.directory / "key.mine")
        stranger = CompiledCache(cache.directory, engines.ENGINE_TAG)
        (cache.directory / "key.mine").replace(cache.directory / "key")
        return stranger.encode(digest, CONFIG, bytes(cache.decode(digest, CONFIG, data)))
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "garbage",
        "truncated",
        "empty",
        "longer",
        "flipped code byte",
        "another module's file",
        "another engine build",
        "another node's key",
    ],
)
def test_a_damaged_or_foreign_file_is_refused_removed_and_rebuilt(cache, probe_bytes, hello_bytes, kind):
    path = cache.store(Module(probe_bytes), LIMITS, False)
    other = cache.store(Module(hello_bytes), LIMITS, False).read_bytes()
    path.write_bytes(_damage(kind, path.read_bytes(), cache, other, Module(probe_bytes).digest))
    fresh = Module(probe_bytes)
    assert not cache.load(fresh, LIMITS, False)
    assert not path.exists() and not fresh._core.is_compiled(LIMITS)
    result = run(fresh, b"z", args=["cat"], engine="wasmtime")  # compiles again, runs right
    assert result.stdout == b"z" and result.compile_us > 0
    assert cache.store(fresh, LIMITS, False).exists() and cache.load(Module(probe_bytes), LIMITS, False)


def test_decode_names_the_check_that_failed(cache, probe_bytes):
    module = Module(probe_bytes)
    data = cache.store(module, LIMITS, False).read_bytes()
    with pytest.raises(CompiledCacheError, match="another module or configuration"):
        cache.decode(module.digest, configuration(Limits(fuel=1), True), data)
    with pytest.raises(CompiledCacheError, match="bad magic"):
        cache.decode(module.digest, CONFIG, b"X" + data[1:])
    with pytest.raises(CompiledCacheError, match="truncated"):
        cache.decode(module.digest, CONFIG, data[:20])


def test_the_directory_stays_within_its_bound_least_recently_used_out_first(tmp_path, probe_bytes, hello_bytes):
    engines.load_wasmtime()
    unbounded = CompiledCache(tmp_path, engines.ENGINE_TAG)
    old = unbounded.store(Module(hello_bytes), LIMITS, False)
    os.utime(old, (time.time() - 100, time.time() - 100))
    unbounded.store(Module(hello_bytes), Limits(fuel=10**9), False)
    bound = sum(f.stat().st_size for f in unbounded.files())
    cache = CompiledCache(tmp_path, engines.ENGINE_TAG, max_bytes=bound)
    newest = cache.store(Module(hello_bytes), LIMITS, True)  # a third file: the least recently used goes
    files = cache.files()
    assert old not in files and newest in files
    assert sum(f.stat().st_size for f in files) <= cache.max_bytes
    assert not cache.load(Module(probe_bytes), LIMITS, False)  # a file above the bound is never read
    tiny = CompiledCache(tmp_path, engines.ENGINE_TAG, max_bytes=100)
    assert tiny.trim() == len(files) and tiny.files() == []


def test_auto_remembers_a_long_module_across_a_restart_and_starts_it_compiled(data_dir, probe_bytes):
    module = Module(probe_bytes)
    assert module.size > engines.AUTO_INLINE_COMPILE_BYTES  # compiled in the background, never on the job's path
    engines.record(module.digest, "wasm3", engines.AUTO_WALL_US + 1)
    assert ModuleRuns(data_dir / "history.sqlite").get(module.digest) == engines.AUTO_WALL_US + 1
    first = run(module, b"a", args=["cat"])
    assert first.engine == "wasm3"  # its code is compiling meanwhile
    assert engines.wait_for_compiles(120)
    assert len(list((data_dir / "compiled").glob("*.cwasm"))) == 1

    engines.use_data_dir(data_dir)  # as a restarted node: nothing in memory
    fresh = Module(probe_bytes)
    later = run(fresh, b"b", args=["cat"])
    assert (later.engine, later.stdout, later.compile_us) == ("wasmtime", b"b", 0)


def test_a_long_wasm3_job_has_its_module_compiled_for_the_next(data_dir, probe_bytes):
    module = Module(probe_bytes)
    result = run(module, args=["count", "3000000"])
    assert result.engine == "wasm3"
    if result.wall_us < engines.AUTO_WALL_US:
        result = run(module, args=["count", str(3000000 * (engines.AUTO_WALL_US // max(result.wall_us, 1) + 2))])
    assert result.wall_us >= engines.AUTO_WALL_US
    assert engines.wait_for_compiles(120) and module._core.is_compiled(LIMITS)
    assert run(module, args=["count", "10"]).engine == "wasmtime"
    assert ModuleRuns(data_dir / "history.sqlite").get(module.digest) == result.wall_us


def test_module_runs_stay_bounded(tmp_path):
    runs = ModuleRuns(tmp_path / "h.sqlite", max_modules=3)
    for i in range(5):
        runs.put(bytes([i]) * 32, i)
        time.sleep(0.002)
    assert [runs.get(bytes([i]) * 32) for i in range(5)] == [None, None, 2, 3, 4]


def test_phase_run_starts_compiled_the_second_time(tmp_path, probe_bytes):
    """Two real processes: the first runs on wasm3 and leaves the compiled code; the second starts compiled."""
    module = tmp_path / "probe.wasm"
    module.write_bytes(probe_bytes)
    cmd = [sys.executable, "-m", "pyphase", "run", "--no-sandbox", "--json", "--data-dir", str(tmp_path / "d")]
    cmd += [str(module), "--arg", "count", "--arg", "20000000"]
    runs = [json.loads(subprocess.run(cmd, capture_output=True, check=True, timeout=300).stdout) for _ in range(2)]
    assert runs[0]["engine"] == "wasm3" and runs[0]["wall_us"] >= engines.AUTO_WALL_US, runs[0]
    assert runs[1]["engine"] == "wasmtime" and runs[1]["compile_us"] == 0, runs[1]
    assert runs[0]["stdout"] == runs[1]["stdout"] and runs[1]["receipt"]["node"]["fuel_unit"] == engines.UNMETERED
