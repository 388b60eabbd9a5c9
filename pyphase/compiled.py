"""Compiled code kept on disk by module hash (``DATA_DIR/compiled/``), so a node or ``phase run`` compiles a module
once, not once per process.

Each file is one module compiled for one engine configuration (fuel metering, canonical NaNs, epoch checks)::

    header   magic "PHASECW1" | module sha256 (32) | configuration (1) | engine tag (32, NUL-padded) | length (8)
    payload  wasmtime's serialized module
    mac      HMAC-SHA256 of header and payload under DATA_DIR/compiled/key (32 random bytes, this node's own)

A file is machine code that this process will map executable, so nothing in it is trusted: a file that is short,
long, of another module, configuration or engine build, or whose MAC does not verify is deleted and the module
compiled again; wasmtime's own check (its version and engine settings) then runs on what is left. The directory is
bounded (``max_bytes``): the least recently used files go first.

Beside the code, a **validation record** per module says that our validator accepted these exact bytes, so that a
later process skips validating them again (a 3 MB module: tens of ms of every ``phase run``)::

    record   magic "PHASEVR1" | module sha256 (32) | validator id (32) | has facts (1) | facts (19 x 8)
    mac      HMAC-SHA256 of the record under the same key

The validator id is the sha256 of the validator's sources (``_core.VALIDATOR_ID``): a record of another build is
not used. The facts are what that validation found (memory, table, counts, WASI imports: ``CoreModule.facts``); a
record made where the module was validated in a sandbox's worker and fork server has none, and serves only to send
the module to a fork server (which validates it again) without a worker validating it first. A record that fails a
check is removed with a :class:`CacheRefused` warning, and the module is validated as if there were none.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import struct
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from pyphase import _core
from pyphase.errors import PhaseError

if TYPE_CHECKING:
    from pyphase.limits import Limits
    from pyphase.runtime import Module

MAGIC = b"PHASECW1"
_HEADER = struct.Struct(">8s32sB32sQ")
_MAC_BYTES = 32
#: the compiled files a data directory keeps at most (bytes), least recently used out first
DEFAULT_MAX_BYTES = 1 << 30
SUFFIX = ".cwasm"
RECORD_MAGIC = b"PHASEVR1"
RECORD_SUFFIX = ".valid"
_RECORD = struct.Struct(f">8s32s32sB{_core.MODULE_FACTS}Q")
#: the validator build whose records count here (empty: a build without one keeps and uses no record)
VALIDATOR_ID = bytes.fromhex(_core.VALIDATOR_ID) if len(_core.VALIDATOR_ID) == 64 else b""


class CompiledCacheError(PhaseError):
    """A compiled-code file or validation record was refused (and removed): the reason says which check failed."""


class CacheRefused(RuntimeWarning):
    """A file of the data dir's compiled-code directory failed its checks (damaged, or written by someone without
    its key): it was removed, and the module is validated or compiled again."""


class _Stale(CompiledCacheError):
    """A file of another build (engine or validator): removed quietly, it is no one's fault."""


def _refused(path: Path, reason: CompiledCacheError) -> None:
    path.unlink(missing_ok=True)
    if not isinstance(reason, _Stale):
        warnings.warn(f"{path}: refused and removed ({reason})", CacheRefused, stacklevel=3)


def load_key(directory: Path) -> bytes:
    """The directory's MAC key (32 random bytes, made 0600 by the first process that needs it)."""
    path = directory / "key"
    try:
        key = path.read_bytes()
        if len(key) == 32:
            return key
    except FileNotFoundError:
        pass
    key = secrets.token_bytes(32)
    tmp = directory / f".key.{os.getpid()}.{threading.get_ident()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    try:
        os.link(tmp, path)  # the first writer's key wins; others read it
    except FileExistsError:
        key = path.read_bytes()
    finally:
        tmp.unlink()
    if len(key) != 32:
        raise CompiledCacheError(f"{path} is not a 32-byte key: remove it")
    return key


def _write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (0600) at once: readers see the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class ValidationRecords:
    """Records, in ``directory`` (the compiled code's, same key), that our validator accepted a module."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._key = load_key(self.directory)

    def path(self, digest: bytes) -> Path:
        return self.directory / f"{digest.hex()}{RECORD_SUFFIX}"

    def encode(self, digest: bytes, facts: tuple[int, ...] | None) -> bytes:
        body = _RECORD.pack(
            RECORD_MAGIC, digest, VALIDATOR_ID, facts is not None, *(facts or (0,) * _core.MODULE_FACTS)
        )
        return body + hmac.new(self._key, body, hashlib.sha256).digest()

    def decode(self, digest: bytes, data: bytes) -> tuple[int, ...] | None:
        """The facts a record holds (None: it says only that the module was validated), after every check."""
        if len(data) != _RECORD.size + _MAC_BYTES:
            raise CompiledCacheError(f"not a validation record ({len(data)} bytes)")
        body, mac = data[: _RECORD.size], data[_RECORD.size :]
        if not hmac.compare_digest(hmac.new(self._key, body, hashlib.sha256).digest(), mac):
            raise CompiledCacheError("MAC does not verify (written by someone else, or damaged)")
        magic, file_digest, validator, has_facts, *facts = _RECORD.unpack(body)
        if magic != RECORD_MAGIC or file_digest != digest:
            raise CompiledCacheError("a record of another module")
        if validator != VALIDATOR_ID:
            raise _Stale("made by another build of the validator")
        return tuple(facts) if has_facts == 1 else None

    def read(self, digest: bytes) -> tuple[int, ...] | None | bool:
        """False when no record says our validator accepted module ``digest``; else the facts it found (None when
        the record has none). A record that fails a check is removed (a :class:`CacheRefused` warning says why)."""
        if not VALIDATOR_ID:
            return False
        path = self.path(digest)
        try:
            with open(path, "rb") as f:
                data = f.read(_RECORD.size + _MAC_BYTES + 1)
            facts = self.decode(digest, data)
        except FileNotFoundError:
            return False
        except CompiledCacheError as exc:
            _refused(path, exc)
            return False
        os.utime(path)  # recently used (CompiledCache.trim)
        return facts

    def write(self, digest: bytes, facts: tuple[int, ...] | None) -> None:
        """Record that our validator accepted module ``digest`` (and found ``facts``, when known). Only for a module
        that did pass it: a record is what lets the next process skip it."""
        if VALIDATOR_ID:
            _write_file(self.path(digest), self.encode(digest, facts))

    def forget(self, digest: bytes) -> None:
        self.path(digest).unlink(missing_ok=True)


def configuration(limits: Limits, deterministic: bool) -> int:
    """The engine configuration a job with these limits uses (C's engine_index: fuel metering | canonical NaNs << 1 |
    epoch interruption, for a wall-clock limit, << 2)."""
    return int(limits.fuel != 0) | (int(deterministic) << 1) | (int(limits.timeout_ms != 0) << 2)


class CompiledCache:
    """Compiled modules in ``directory`` (made 0700), at most ``max_bytes`` of them; ``engine_tag`` names the
    compiler build whose code it holds (another build's files are refused)."""

    def __init__(self, directory: str | os.PathLike[str], engine_tag: str, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.engine_tag = engine_tag.encode()[:32]
        self.max_bytes = max_bytes
        self._key = load_key(self.directory)
        self._lock = threading.Lock()

    def path(self, digest: bytes, config: int) -> Path:
        return self.directory / f"{digest.hex()}-{config}{SUFFIX}"

    def encode(self, digest: bytes, config: int, payload: bytes | memoryview) -> bytes:
        """A file's bytes for ``payload`` (wasmtime's serialized module)."""
        header = _HEADER.pack(MAGIC, digest, config, self.engine_tag, len(payload))
        mac = hmac.new(self._key, header, hashlib.sha256)
        mac.update(payload)
        return header + payload + mac.digest()

    def decode(self, digest: bytes, config: int, data: bytes) -> memoryview:
        """The payload of a file's bytes, after every check (:class:`CompiledCacheError` says which failed)."""
        if len(data) < _HEADER.size + _MAC_BYTES:
            raise CompiledCacheError(f"truncated ({len(data)} bytes)")
        magic, file_digest, file_config, tag, length = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise CompiledCacheError("not a compiled-module file (bad magic)")
        if file_digest != digest or file_config != config:
            raise CompiledCacheError("compiled for another module or configuration")
        tag = tag.rstrip(b"\0")
        if tag != self.engine_tag:
            raise _Stale(f"compiled by {tag.decode(errors='replace')!r}, this is {self.engine_tag.decode()!r}")
        if len(data) != _HEADER.size + length + _MAC_BYTES:
            raise CompiledCacheError(f"length {len(data)} does not match its header ({length} bytes of code)")
        view = memoryview(data)
        mac = hmac.new(self._key, view[: _HEADER.size], hashlib.sha256)
        mac.update(view[_HEADER.size : _HEADER.size + length])
        if not hmac.compare_digest(mac.digest(), view[-_MAC_BYTES:]):
            raise CompiledCacheError("MAC does not verify (written by someone else, or damaged)")
        return view[_HEADER.size : _HEADER.size + length]

    def read(self, digest: bytes, config: int) -> memoryview | None:
        """The checked code of module ``digest`` for configuration ``config`` (None when there is none; a bad file is
        removed). Whoever loads it still lets wasmtime check it, and calls :meth:`refuse` when wasmtime refuses."""
        path = self.path(digest, config)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size > self.max_bytes:
                    raise CompiledCacheError(f"{size} bytes, above the cache's bound")
                data = f.read()
            code = self.decode(digest, config, data)
        except FileNotFoundError:
            return None
        except CompiledCacheError as exc:
            _refused(path, exc)
            return None
        os.utime(path)  # recently used
        return code

    def has(self, digest: bytes, config: int) -> bool:
        """Whether a file for the module and configuration exists (checked only when read)."""
        return self.path(digest, config).is_file()

    def refuse(self, digest: bytes, config: int) -> None:
        """Remove a file whose code wasmtime refused (another version or engine settings)."""
        self.path(digest, config).unlink(missing_ok=True)

    def load(self, module: Module, limits: Limits, deterministic: bool) -> bool:
        """Give ``module`` its compiled code from disk: True when it has it now; a bad file is removed (False)."""
        config = configuration(limits, deterministic)
        code = self.read(module.digest, config)
        if code is None:
            return False
        try:
            module._core.deserialize(limits, deterministic, code)
        except PhaseError:  # wasmtime refused the code (another version or settings)
            self.refuse(module.digest, config)
            return False
        return True

    def store(self, module: Module, limits: Limits, deterministic: bool) -> Path:
        """Write ``module``'s compiled code (compiling it first if needed) and keep the directory in its bound."""
        config = configuration(limits, deterministic)
        return self.store_code(module.digest, config, module._core.serialize(limits, deterministic))

    def store_code(self, digest: bytes, config: int, code: bytes | memoryview) -> Path:
        """Write code compiled elsewhere (a sandbox's compile helper) for module ``digest`` and ``config``."""
        path = self.path(digest, config)
        _write_file(path, self.encode(digest, config, code))
        self.trim()
        return path

    def files(self) -> list[Path]:
        return sorted(self.directory.glob(f"*{SUFFIX}"))

    def trim(self) -> int:
        """Remove the least recently used files (code and validation records) until the rest fit in ``max_bytes``;
        return how many went."""
        with self._lock:
            entries = []
            for path in (*self.directory.glob(f"*{SUFFIX}"), *self.directory.glob(f"*{RECORD_SUFFIX}")):
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                entries.append((st.st_mtime, st.st_size, path))
            total = sum(size for _, size, _ in entries)
            removed = 0
            for _, size, path in sorted(entries):
                if total <= self.max_bytes:
                    break
                path.unlink(missing_ok=True)
                total -= size
                removed += 1
            return removed
