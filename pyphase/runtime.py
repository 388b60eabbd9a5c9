"""Run WASI jobs in this process: :class:`Module` (validated once), :func:`prepare_job` and :func:`run`.

A job is prepared once (:class:`PreparedJob`: the module's digest and bytes, argv/env encoded for C, entry,
limits, seed) and that one object goes to the C core, here (:func:`run`) or in a sandbox worker
(:meth:`pyphase.Sandbox.run`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
from collections import OrderedDict
from typing import Any, Callable, Mapping, NamedTuple, Sequence

from pyphase import _core, engines
from pyphase.digests import hash_text
from pyphase.errors import InvalidModule
from pyphase.limits import DEFAULT_LIMITS, Limits
from pyphase.preopen import FsQuota, Preopen, check, opened
from pyphase.result import Result

RUNTIME_NAME: str = _core.RUNTIME_NAME
RUNTIME_VERSION: str = _core.RUNTIME_VERSION
DEFAULT_PROGRAM_NAME = "main.wasm"
_DEFAULT_ARGV0 = DEFAULT_PROGRAM_NAME.encode()


WASM_MAGIC = b"\0asm"
BUILD_HINT = (
    "compile C to a WASI module with zig's toolchain (pip install ziglang): "
    "python -m ziglang cc -target wasm32-wasi -O2 -o job.wasm job.c"
)


def not_wasm_hint(data: bytes | bytearray | memoryview) -> str | None:
    """What these bytes are, when they are not a WebAssembly binary at all, and how to get a module from them
    (None when they start like one): a new user's usual mistakes are the text format, the C source, an empty
    or a native file."""
    head = bytes(data[:512])
    if head.startswith(WASM_MAGIC):
        return None
    if not head:
        return f"the module is empty (0 bytes); {BUILD_HINT}"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith((b"(module", b"(component", b";;", b"(;")):
        return (
            "this is WebAssembly text (.wat), not a binary module: convert it with "
            "'wat2wasm job.wat -o job.wasm' (wabt, e.g. apt-get install wabt)"
        )
    if text.startswith(b"\x7fELF") or head.startswith(b"\x7fELF"):
        return f"this is a native executable (ELF), not WebAssembly; {BUILD_HINT}"
    if any(marker in head for marker in (b"#include", b"int main", b"void main", b"#define")):
        return f"this looks like C source, not a compiled module; {BUILD_HINT}"
    return None


def _explained(message: str, data: bytes | bytearray | memoryview) -> str:
    hint = not_wasm_hint(data)
    return f"{message}: {hint}" if hint else message


def explain_invalid(result: Result, data: bytes | bytearray | memoryview) -> Result:
    """``result`` with :func:`not_wasm_hint`'s explanation added when the job's bytes were not a module at all."""
    if result.status != "invalid_module":
        return result
    return dataclasses.replace(result, message=_explained(result.message, data))


class Module:
    """A WebAssembly module checked once (full validation, imports against the WASI host) and reusable.

    A module is named by the sha256 of its bytes; ``Module.cached(data)`` returns the same object for
    the same bytes so repeated jobs skip validation.
    """

    __slots__ = ("_core", "hash", "recorded")

    _cache: OrderedDict[bytes, Module] = OrderedDict()
    _cache_lock = threading.Lock()
    CACHE_SIZE = 64

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        try:
            self._core = _core.CoreModule(bytes(data) if not isinstance(data, bytes) else data)
        except InvalidModule as exc:
            raise InvalidModule(_explained(str(exc), data)) from None
        self.hash: str = hash_text(self._core.digest)
        #: whether the data dir has a record that our validator accepted it (pyphase.engines.module_for)
        self.recorded = False

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Module:
        with open(path, "rb") as f:
            return cls.cached(f.read())

    @classmethod
    def cached(cls, data: bytes, digest: bytes | None = None) -> Module:
        """The module for ``data``, validated at most once per process (bounded LRU by content hash).
        ``digest``: the sha256 of ``data`` when the caller has it already."""
        key = digest or hashlib.sha256(data).digest()
        module = cls.lookup(key)
        return module if module is not None else cls._keep(key, cls(data))

    @classmethod
    def lookup(cls, digest: bytes) -> Module | None:
        """The module of sha256 ``digest`` if this process has it already."""
        with cls._cache_lock:
            module = cls._cache.get(digest)
            if module is not None:
                cls._cache.move_to_end(digest)
            return module

    @classmethod
    def _keep(cls, digest: bytes, module: Module) -> Module:
        with cls._cache_lock:
            cls._cache[digest] = module
            while len(cls._cache) > cls.CACHE_SIZE:
                cls._cache.popitem(last=False)
        return module

    @classmethod
    def from_record(cls, data: bytes, digest: bytes, facts: tuple[int, ...]) -> Module:
        """The module for ``data`` made from what an earlier validation of the same bytes by this validator found,
        without validating again: only from an authenticated record (:func:`pyphase.engines.module_for`).
        ``ValueError`` when the facts do not fit these bytes (their sha256 is not ``digest``)."""
        module = cls.__new__(cls)
        module._core = _core.CoreModule(data, digest, facts)
        module.hash = hash_text(digest)
        module.recorded = True
        return cls._keep(digest, module)

    @property
    def digest(self) -> bytes:
        """The sha256 of the module's bytes (``hash`` is its text form)."""
        return bytes(self._core.digest)

    @property
    def size(self) -> int:
        return int(self._core.size)

    @property
    def bytes(self) -> bytes:
        return bytes(self._core.bytes)

    @property
    def info(self) -> dict[str, object]:
        """Facts found by validation: memory, function and import counts, the deepest control nesting of any
        body, the WASI functions it imports."""
        return dict(self._core.info)

    def __repr__(self) -> str:
        return f"<Module {self.hash[:19]}… {self.size} bytes>"


def encode_strings(items: Sequence[str], what: str) -> list[bytes]:
    """UTF-8 bytes of each string for C's argv/envp; ``ValueError`` on a NUL byte (C would cut the string)."""
    out = []
    for item in items:
        data = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        if b"\0" in data:
            raise ValueError(f"{what} must not contain NUL bytes: {item!r}")
        out.append(data)
    return out


def deterministic_seed(
    module_hash: str, input_hash: str, args: Sequence[str], env: Mapping[str, str], entry: str
) -> bytes:
    """Seed of a deterministic job's clocks and random: a function of what the job is, so replicas agree."""
    h = hashlib.sha256(b"phase/deterministic-seed/1\0")
    for part in (module_hash, input_hash, entry, *args, "\0env", *(f"{k}={v}" for k, v in sorted(env.items()))):
        h.update(part.encode("utf-8") + b"\0")
    return h.digest()


class PreparedJob(NamedTuple):
    """A job ready for the C core, built once by :func:`prepare_job` (a tuple: cheap on the per-job path).

    ``module`` is a validated :class:`Module` or the raw bytes (validated where the job runs: in this process
    by :func:`run`, in a worker by the sandbox); ``digest`` is the sha256 of its bytes, computed once."""

    digest: bytes
    module: Module | bytes
    input: bytes | bytearray | memoryview
    argv: list[bytes]
    envp: list[bytes]
    entry: bytes
    limits: Limits
    deterministic: bool
    seed: bytes
    dirs: tuple[Preopen, ...] = ()
    #: ``wasm3``, ``wasmtime`` or ``auto`` (pyphase.engines.choose picks where the job runs)
    engine: str = "auto"
    #: the bound on what it keeps in its writable directories (None: none)
    quota: FsQuota | None = None

    @property
    def guest_names(self) -> list[bytes]:
        """The guest paths of its directories, as C takes them."""
        return [os.fsencode(d.guest_path) for d in self.dirs]

    @property
    def data(self) -> bytes:
        """The module's bytes."""
        return self.module if isinstance(self.module, bytes) else self.module.bytes


OutputCallback = Callable[[int, bytes], object]
"""Called with ``(stream, data)`` as a job writes: stream 1 is stdout, 2 stderr (their descriptor numbers)."""


class OutputSink:
    """Hands a job's output to a callback as the module writes it, from the thread that runs the job.

    The first exception the callback raises is kept (:meth:`reraise` raises it once the job is over) and the output
    stops there: the module's next write fails as on a closed pipe. ``digests`` and ``sizes`` count, per stream,
    the bytes delivered, so that a runner can check them against the result that follows; with ``keep`` the bytes
    are kept too (``kept``), so that a worker that dies after streaming still has its output in the result."""

    def __init__(self, callback: OutputCallback, keep: bool = False) -> None:
        self.callback = callback
        self.keep = keep
        self.error: BaseException | None = None
        self.digests: dict[int, Any] = {}  # made at a stream's first piece: a tiny job pays for no hash object
        self.sizes = {1: 0, 2: 0}
        self.kept = {1: bytearray(), 2: bytearray()}

    def __call__(self, stream: int, data: bytes) -> bool:
        if self.error is not None:
            return False
        try:
            self.callback(stream, data)
        except BaseException as exc:  # the C core cannot carry it; raised again after the job
            self.error = exc
            return False
        digest = self.digests.get(stream)
        if digest is None:
            digest = self.digests[stream] = hashlib.sha256()
        digest.update(data)
        self.sizes[stream] += len(data)
        if self.keep:
            self.kept[stream] += data
        return True

    def matches(self, result: Result) -> bool:
        """Whether what was delivered is exactly the result's stdout and stderr (by digest)."""
        return all(
            hash_text((self.digests.get(stream) or hashlib.sha256()).digest()) == expected
            for stream, expected in ((1, result.stdout_hash), (2, result.stderr_hash))
        )

    def reraise(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error


def sink_for(on_output: OutputCallback | None) -> OutputSink | None:
    return None if on_output is None else on_output if isinstance(on_output, OutputSink) else OutputSink(on_output)


def prepare_job(
    module: Module | bytes | bytearray | memoryview,
    input: bytes | bytearray | memoryview = b"",
    *,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    entry: str = "_start",
    limits: Limits | None = None,
    deterministic: bool = False,
    program_name: str = DEFAULT_PROGRAM_NAME,
    seed: bytes | None = None,
    digest: bytes | None = None,
    dirs: Sequence[Preopen] = (),
    engine: str = "auto",
    quota: FsQuota | None = None,
) -> PreparedJob:
    """Check and encode a job's parts for C (``ValueError`` for NUL bytes or a bad environment name).

    ``digest``: the module's sha256 when the caller computed it already (it travels with the bytes); the
    deterministic seed is derived here unless given."""
    if isinstance(module, Module):
        digest = module.digest
    else:
        module = bytes(module)
        if digest is None:
            digest = hashlib.sha256(module).digest()
    environment = dict(env) if env else {}
    for key in environment:
        if "=" in key or not key:
            raise ValueError(f"environment variable names must be non-empty and contain no '=': {key!r}")
    if "\0" in entry:
        raise ValueError("entry must not contain NUL")
    if args or program_name != DEFAULT_PROGRAM_NAME:
        argv = encode_strings([program_name, *args], "arguments")
    else:
        argv = [_DEFAULT_ARGV0]  # the tiny job's path
    envp = encode_strings([f"{k}={v}" for k, v in environment.items()], "environment") if environment else []
    if deterministic and seed is None:
        seed = deterministic_seed(hash_text(digest), hash_text(_core.sha256(input)), list(args), environment, entry)
    return PreparedJob(
        digest,
        module,
        input,
        argv,
        envp,
        entry.encode("utf-8"),
        limits or DEFAULT_LIMITS,
        deterministic,
        seed or bytes(32),
        tuple(check(dirs)) if dirs else (),
        engines.check(engine),
        quota,
    )


def run(
    module: Module | bytes | bytearray | memoryview,
    input: bytes | bytearray | memoryview = b"",
    *,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    entry: str = "_start",
    limits: Limits | None = None,
    deterministic: bool = False,
    program_name: str = DEFAULT_PROGRAM_NAME,
    seed: bytes | None = None,
    dirs: Sequence[Preopen] = (),
    on_output: OutputCallback | None = None,
    engine: str = "auto",
    quota: FsQuota | None = None,
) -> Result:
    """Run ``module`` once in this process with ``input`` as stdin; the GIL is released while it runs.

    ``args`` follow the program name (argv[0]); ``dirs`` are the host directories the job sees (WASI
    preopens, fds 3, 4, ... in this order) and ``quota`` bounds what it keeps in the writable ones (:class:`FsQuota`);
    ``on_output(stream, data)`` is called, on this thread, with
    every piece of stdout (1) and stderr (2) as the module writes it (the result still holds all of it; an
    exception from it stops the output and is raised once the job ends); ``engine``: ``wasm3``, ``wasmtime`` or
    ``auto`` (short jobs on wasm3, long ones compiled; :mod:`pyphase.engines`). Every job outcome (trap, timeout, ...) is a
    :class:`Result` with its ``status``; invalid modules raise :class:`~pyphase.errors.InvalidModule`.
    Untrusted modules belong in a :class:`pyphase.Sandbox`, which adds process isolation.
    """
    job = prepare_job(
        module,
        input,
        args=args,
        env=env,
        entry=entry,
        limits=limits,
        deterministic=deterministic,
        program_name=program_name,
        seed=seed,
        dirs=dirs,
        engine=engine,
        quota=quota,
    )
    return run_prepared(job, on_output)


def run_prepared(job: PreparedJob, on_output: OutputCallback | None = None) -> Result:
    """Run a prepared job in this process (validating its module here if it is raw bytes)."""
    module = job.module if isinstance(job.module, Module) else Module.cached(job.module, job.digest)
    engine = job.engine if job.engine == "wasm3" else engines.choose(job.engine, module, job.limits, job.deterministic)
    sink = sink_for(on_output)
    if job.dirs:
        with opened(job.dirs) as preopens:
            raw = _core.run(module._core, job, preopens, sink, engine)
    else:
        raw = _core.run(module._core, job, None, sink, engine)  # the tiny job's path: no directories to open
    result = Result.from_core(raw, engine)
    engines.after_job(module, job.limits, job.deterministic, job.engine, engine, result.wall_us, result.compile_us)
    if sink is not None:
        sink.reraise()
    return result
