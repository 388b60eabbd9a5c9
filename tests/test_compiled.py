"""Compiled code on disk (pyphase.compiled) and what ``auto`` keeps in the data dir (pyphase.engines.use_data_dir):
a fresh process starts compiled, every damaged or foreign file is refused and rebuilt, the directory stays bounded;
a validation record lets a later process skip the validator for the same bytes, and a bad one is refused."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from pyphase import Limits, _core, engines
from pyphase.compiled import (
    RECORD_SUFFIX,
    CacheRefused,
    CompiledCache,
    CompiledCacheError,
    ValidationRecords,
    configuration,
)
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
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not cache.load(fresh, LIMITS, False)
    said = [str(w.message) for w in caught if issubclass(w.category, CacheRefused)]
    if kind == "another engine build":
        assert said == []  # an upgrade's leftovers go quietly
    else:
        assert len(said) == 1 and said[0].startswith(f"{path}: refused and removed"), said
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
    count = 3000000
    result = run(module, args=["count", str(count)])
    while result.wall_us < engines.AUTO_WALL_US:  # a job long enough for auto to call it long, however fast the CPU
        assert result.engine == "wasm3", (count, result.wall_us, result.engine)
        count *= engines.AUTO_WALL_US // max(result.wall_us, 1) + 2
        result = run(module, args=["count", str(count)])
    assert result.engine == "wasm3", (count, result.wall_us, result.engine)
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
    # 80 million rounds: ≈ 0.8 s of wasm3 on an idle machine, well past AUTO_WALL_US (20 million once read 0.19 s)
    cmd += [str(module), "--arg", "count", "--arg", "80000000"]
    runs = [json.loads(subprocess.run(cmd, capture_output=True, check=True, timeout=300).stdout) for _ in range(2)]
    assert runs[0]["engine"] == "wasm3" and runs[0]["wall_us"] >= engines.AUTO_WALL_US, runs[0]
    assert runs[1]["engine"] == "wasmtime" and runs[1]["compile_us"] == 0, runs[1]
    assert runs[0]["stdout"] == runs[1]["stdout"] and runs[1]["receipt"]["node"]["fuel_unit"] == engines.UNMETERED


# ---- validation records ------------------------------------------------------------------------------------------


def test_the_core_hashes_as_hashlib_does_at_every_length_around_the_block_size():
    """phase_sha256 (the CPU's SHA instructions where it has them, else libsodium) against OpenSSL's."""
    data = os.urandom(3 * 64 * 64 + 7)
    for n in [*range(0, 200), 447, 448, 449, 511, 512, 513, 4095, 4096, 4097, len(data)]:
        assert _core.sha256(data[:n]) == hashlib.sha256(data[:n]).digest(), (n, _core.SHA256_ACCELERATED)
    big = os.urandom(3 << 20)
    assert _core.sha256(big) == hashlib.sha256(big).digest()


def test_a_module_made_from_its_record_is_the_validated_module(probe_bytes):
    validated = _core.CoreModule(probe_bytes)
    digest = hashlib.sha256(probe_bytes).digest()
    recorded = _core.CoreModule(probe_bytes, digest, validated.facts)
    assert (recorded.digest, recorded.facts, recorded.info) == (validated.digest, validated.facts, validated.info)
    assert run(Module.from_record(probe_bytes, digest, validated.facts), b"xy", args=["cat"]).stdout == b"xy"
    with pytest.raises(ValueError, match="not the module the record names"):
        _core.CoreModule(probe_bytes[:-1] + b"\0", digest, validated.facts)
    for i, bad in ((0, 2), (1, 1 << 32), (_core.MODULE_FACTS - 1, 1 << 63)):
        facts = list(validated.facts)
        facts[i] = bad
        with pytest.raises(ValueError):
            _core.CoreModule(probe_bytes, digest, tuple(facts))


def _forged(records: ValidationRecords, kind: str, data: bytes, digest: bytes, facts: tuple[int, ...]) -> bytes:
    if kind == "flipped fact":
        i = len(data) - 40
        return data[:i] + bytes([data[i] ^ 1]) + data[i + 1 :]
    if kind == "truncated":
        return data[:-1]
    if kind == "another node's key":
        stranger = ValidationRecords.__new__(ValidationRecords)
        stranger._key = os.urandom(32)
        return stranger.encode(digest, facts)
    if kind == "another module's record":
        return records.encode(b"\1" * 32, facts)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["flipped fact", "truncated", "another node's key", "another module's record"])
def test_a_forged_or_damaged_record_is_refused_with_a_warning_and_the_module_validated(data_dir, probe_bytes, kind):
    digest = hashlib.sha256(probe_bytes).digest()
    module = Module(probe_bytes)
    engines.record_validated(module)
    records = engines.validation_records()
    path = records.path(digest)
    assert path.name == digest.hex() + RECORD_SUFFIX and records.read(digest) == module._core.facts
    path.write_bytes(_forged(records, kind, path.read_bytes(), digest, module._core.facts))
    Module._cache.clear()  # as a fresh process
    with pytest.warns(CacheRefused, match="refused and removed"):
        again = engines.module_for(probe_bytes, digest)
    assert not path.exists() and not again.recorded  # validated, not taken from the record
    assert run(again, b"q", args=["cat"]).stdout == b"q"


def test_a_record_of_another_validator_build_is_not_used(data_dir, probe_bytes, monkeypatch):
    from pyphase import compiled

    digest = hashlib.sha256(probe_bytes).digest()
    engines.record_validated(Module(probe_bytes))
    monkeypatch.setattr(compiled, "VALIDATOR_ID", bytes(32))  # as after an upgrade of the validator
    Module._cache.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # quietly: no one's fault
        assert not engines.module_for(probe_bytes, digest).recorded
    assert not engines.validation_records().path(digest).exists()


def test_phase_run_validates_once_then_uses_the_record_and_refuses_a_forged_one(tmp_path, probe_bytes):
    """Real processes: a compiled run leaves a record with the code; the next run is made from it; a forged record
    is refused on stderr and that run validates, runs and writes a good record again."""
    module = tmp_path / "probe.wasm"
    module.write_bytes(probe_bytes)
    data = tmp_path / "d"
    cmd = [sys.executable, "-m", "pyphase", "run", "--no-sandbox", "--engine", "wasmtime", "--data-dir", str(data)]
    cmd += [str(module), "--arg", "cat", "--input", "hi"]
    probe = "import sys, runpy; from pyphase import runtime; made = []; orig = runtime.Module.from_record\n"
    probe += "runtime.Module.from_record = classmethod(lambda c, *a: made.append(1) or orig(*a))\n"
    probe += "sys.argv = ['phase', *sys.argv[1:]]\ntry:\n    runpy.run_module('pyphase', run_name='__main__')\n"
    probe += "finally:\n    print('FROM_RECORD', len(made), file=sys.stderr)\n"
    traced = [sys.executable, "-c", probe, *cmd[3:]]

    def phase_run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(traced, capture_output=True, text=True, timeout=300)

    first = phase_run()
    assert first.returncode == 0 and first.stdout == "hi" and "FROM_RECORD 0" in first.stderr, first.stderr
    record = data / "compiled" / (hashlib.sha256(probe_bytes).hexdigest() + RECORD_SUFFIX)
    assert record.is_file()
    second = phase_run()
    assert second.returncode == 0 and second.stdout == "hi" and "FROM_RECORD 1" in second.stderr, second.stderr
    forged = bytearray(record.read_bytes())
    forged[-1] ^= 1
    record.write_bytes(bytes(forged))
    third = phase_run()
    assert third.returncode == 0 and third.stdout == "hi", third.stderr
    assert "FROM_RECORD 0" in third.stderr and f"{record}: refused and removed (MAC does not verify" in third.stderr
    assert record.is_file() and record.read_bytes() != bytes(forged)  # validated, then recorded again
    assert "FROM_RECORD 1" in phase_run().stderr
