"""Isolated workers: run untrusted jobs in pre-forked, single-use, confined processes.

``Sandbox(workers=N)`` starts a small fork server (the ``phase-sandboxd`` executable: exec'd, so it is
single-threaded and inherits nothing of this process) which keeps one pre-forked worker per slot. A job is
written into the slot's shared memory, its worker confines itself (rlimits, no_new_privs, a seccomp
allow-list), runs it and writes the result back, then exits; the fork server forks the next. A worker that
crashes, hangs past the hard timeout or runs out of memory is reaped and replaced, and the job ends with
status ``crashed``, ``timeout`` or ``memory_limit``. See docs/SANDBOX.md.

Both engines run in workers (:mod:`pyphase.engines`), each from a fork server of its own: wasm3's never loads the
compiling engine (a worker forked from a process that holds it costs every tiny job a fifth more), and the one for
compiled jobs starts with the first of them. Its code is compiled by a compile helper that server forks (never by a
worker, never on the server's own loop) once a worker has validated the module, or read from the node's disk cache
(:mod:`pyphase.compiled`); the server loads it and every worker forked after that inherits it. An ``auto`` job never
waits for a big module's compile: it runs on wasm3 meanwhile.

Modules are validated inside a worker, never in this process: an invalid module is a job outcome
(``status == "invalid_module"``), not an exception.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import queue
import select
import socket
import subprocess
import sys
import threading
import time
import warnings
import weakref
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import pyphase
from pyphase.compiled import configuration
from pyphase import _sandbox, engines
from pyphase.digests import sha256_text
from pyphase.engines import EngineUnavailable
from pyphase.errors import LimitsError, PhaseError, SandboxError
from pyphase.limits import Limits, format_size
from pyphase.result import RawResult, Result
from pyphase.sandbox.demote import Demoter
from pyphase.sandbox.executor import failed_result
from pyphase.preopen import FsQuota, Preopen, opened
from pyphase.runtime import (
    DEFAULT_PROGRAM_NAME,
    Module,
    OutputCallback,
    OutputSink,
    PreparedJob,
    explain_invalid,
    prepare_job,
    sink_for,
)

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

__all__ = ["Sandbox", "SandboxError"]  # SandboxError lives in pyphase.errors; re-exported for callers here

SERVER_NAME = "phase-sandboxd"
DEFAULT_SHM_BYTES = 64 << 20
DEFAULT_GRACE_MS = 1000
# Busy-wait this long for a job's "done" before sleeping. Off: on a 2-vCPU VM the spinning thread took the
# CPU the worker and the fork server needed (idle-pool p50 ~240 us without, ~700 us with 300 us of spin).
DEFAULT_SPIN_US = 0
# Pre-forked workers per slot beyond the one its next job takes: a job finds a worker set up while the ones
# already used are replaced in the background (docs/SANDBOX.md, "Spare workers").
DEFAULT_SPARES = 1
START_TIMEOUT_MS = 10_000
# Workers a compiling-engine job may go through while the fork server compiles its module (each one forked before
# the code was there answers "not compiled" and exits).
COMPILE_ATTEMPTS = 4 * _sandbox.MAX_DEPTH
# How a worker says the fork server could not set up the compiling engine (csrc/sandbox_server.c, jit_set_up).
JIT_REFUSED = "the compiling engine cannot run in this sandbox"


class _Compiling:
    """A job waiting for its module's code (the fork server's event for ``key`` sets ``done``)."""

    __slots__ = ("key", "done")

    def __init__(self, key: tuple[bytes, int], done: threading.Event) -> None:
        self.key = key
        self.done = done


class _Running:
    """Where a submitted job runs (its slot, once it has one) and its stop request, so it can be stopped."""

    __slots__ = ("slot", "signal")

    def __init__(self) -> None:
        self.slot: _sandbox.Slot | None = None
        self.signal = _sandbox.StopSignal()


def _server_command() -> list[str]:
    """The fork server: the installed executable, else this Python running the same C entry point."""
    for base in pyphase.__path__:
        exe = Path(base) / SERVER_NAME
        if os.access(exe, os.X_OK):
            return [str(exe)]
    return _fallback_command()


def _wait_for_exit(server: subprocess.Popen[bytes], deadline: float) -> None:
    """Wait until ``deadline`` for a fork server to exit, woken by its exit (a pidfd) rather than polling as
    ``Popen.wait(timeout)`` does (0.5, 1, 2, 4 ... ms naps: up to half of a server's exit time lost); then kill it."""
    if server.returncode is None:
        try:
            pidfd = os.pidfd_open(server.pid)
        except OSError:
            pidfd = -1  # reaped meanwhile, or a kernel without pidfds (Linux < 5.3): Popen's own wait below
        if pidfd >= 0:
            try:
                waiter = select.poll()  # not select(): a node's descriptors may number past FD_SETSIZE
                waiter.register(pidfd, select.POLLIN)
                waiter.poll(max(0.0, deadline - time.monotonic()) * 1000)
            finally:
                os.close(pidfd)
    try:
        server.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def _streamed_as_kept(result: Result, sink: OutputSink) -> Result:
    """A worker's result after it streamed its output: what it streamed must be what it kept, or the job is
    reported crashed (a worker is untrusted). A worker that died (killed at the hard timeout, out of memory) keeps
    nothing: its output is then what it streamed, when the sink kept that, else none."""
    if sink.matches(result):
        return result
    if result.status in _DEATHS and not result.stdout and not result.stderr:
        status, message = result.status, result.message
    else:
        status, message = "crashed", "sandbox: the worker's streamed output does not match the output it reported"
    out, err = (bytes(sink.kept[1]), bytes(sink.kept[2])) if sink.keep else (b"", b"")
    return replace(
        result,
        status=status,
        exit_code=-1,
        message=message,
        stdout=out,
        stderr=err,
        stdout_hash=sha256_text(out),
        stderr_hash=sha256_text(err),
    )


_DEATHS = ("crashed", "timeout", "memory_limit")


def _read_events(sandbox: weakref.ref[Sandbox], sock: socket.socket) -> None:
    """A fork server's COMPILED events, until it is gone (its sandbox closed, collected or restarted it)."""
    with sock:
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(sock, _sandbox.EVENT_BYTES, 1)
            except OSError:
                break
            try:
                owner = sandbox()
                if not data or owner is None:
                    break
                owner._on_compiled(sock, data, fds[0] if fds else -1)
            except ValueError:
                pass  # not an event: the server is trusted, so a bug of ours; nothing to act on
            finally:
                owner = None
                for fd in fds:
                    os.close(fd)
        owner = sandbox()
        if owner is not None:
            owner._server_gone(sock)


def _fallback_command() -> list[str]:
    return [sys.executable, "-I", "-c", "import sys; from pyphase import _sandbox; _sandbox.server_main(sys.argv[1:])"]


def _lower_priority(server_pid: int, nice: int) -> None:
    """Add ``nice`` to the nice value of the fork server and of the workers it has forked (those it forks later
    inherit it)."""
    pids = [server_pid]
    try:
        nice = min(19, os.getpriority(os.PRIO_PROCESS, server_pid) + nice)
        os.setpriority(os.PRIO_PROCESS, server_pid, nice)
        for task in os.listdir(f"/proc/{server_pid}/task"):
            with open(f"/proc/{server_pid}/task/{task}/children") as f:
                pids += [int(pid) for pid in f.read().split()]
    except OSError:
        pass
    for pid in pids[1:]:
        try:
            os.setpriority(os.PRIO_PROCESS, pid, nice)
        except OSError:  # gone meanwhile
            pass


class Sandbox:
    """A pool of ``workers`` isolated worker processes. Thread-safe; use as a context manager or ``close()``.

    ``run()`` has the signature of :func:`pyphase.run` and returns the same :class:`~pyphase.Result`;
    ``submit()`` returns a :class:`concurrent.futures.Future` (from asyncio: ``await asyncio.wrap_future(...)``).
    ``grace_ms`` is added to a job's ``timeout_ms`` before its worker is killed from outside;
    ``shm_bytes`` bounds one job's module + input + output limit; ``spin_us`` trades the calling thread's CPU
    for latency on tiny jobs; ``spares`` is how many more single-use workers each slot keeps pre-forked, so that
    back-to-back jobs do not wait for the replacement of the last one (see docs/SANDBOX.md); ``engines``: those its
    workers run (default: every engine installed here, :func:`pyphase.engines.available`; compiled jobs then run on a
    second fork server with as many workers, started by the first of them); ``nice``: added to the
    workers' nice value, so the caller's own threads come before the jobs' CPU (plasmd: ``job_nice``);
    ``demote_after_ms``: a worker that has used that much CPU runs at a lower priority (nice + 10) for the rest of
    its job (:mod:`pyphase.sandbox.demote`; 0: never; plasmd: ``job_demote_after``); ``one_server``: one fork server
    runs jobs of both engines (``phase run``'s one job: a single server to start; wasm3's workers forked after the
    compiling engine was loaded are ~20% slower to fork and exit, which a sandbox that runs many jobs avoids).
    """

    def __init__(
        self,
        workers: int = 2,
        *,
        shm_bytes: int = DEFAULT_SHM_BYTES,
        grace_ms: int = DEFAULT_GRACE_MS,
        spin_us: int = DEFAULT_SPIN_US,
        spares: int = DEFAULT_SPARES,
        engines: Sequence[str] | None = None,
        nice: int = 0,
        demote_after_ms: int = 0,
        one_server: bool = False,
    ) -> None:
        if not 1 <= workers <= 256:
            raise ValueError(f"workers must be between 1 and 256, got {workers}")
        if not 0 <= spares < _sandbox.MAX_DEPTH:
            raise ValueError(f"spares must be between 0 and {_sandbox.MAX_DEPTH - 1}, got {spares}")
        if demote_after_ms < 0:
            raise ValueError(f"demote_after_ms must be 0 (never) or more, got {demote_after_ms}")
        if shm_bytes < _sandbox.MIN_SHM_BYTES:
            raise ValueError(f"shm_bytes must be at least {_sandbox.MIN_SHM_BYTES}")
        self._closed = True
        self.engines = self._engines_wanted(engines)
        self.workers = workers
        self.grace_ms = grace_ms
        self.spin_us = spin_us
        self.spares = spares
        self.nice = nice
        self._demoter: Demoter | None = None
        self._lock = threading.Lock()
        self._shm_bytes = shm_bytes
        self._restart_lock = threading.Lock()
        self._restarts = 0
        self._compiles = 0
        self._code_loads = 0
        # With the compiling engine (and not one_server), this sandbox's own fork server runs wasm3's jobs only and
        # never loads that engine; compiled jobs go to a second sandbox (``_jit``, started by the first of them).
        self._split = "wasmtime" in self.engines and not one_server
        self._jit: Sandbox | None = None
        self._jit_lock = threading.Lock()
        self._demote_after_ms = demote_after_ms
        self._uncacheable: set[bytes] = set()
        self._last_added: tuple[bytes, float] | None = None
        self._free: queue.SimpleQueue[_sandbox.Slot] = queue.SimpleQueue()
        self._running: dict[Future[Result], _Running] = {}
        self._pool: ThreadPoolExecutor | None = None  # made by the first submit: a one-job run needs none
        self._start_server()  # the compiling engine is loaded at its first compile; a failure: _without_compiling_engine
        self._closed = False
        if demote_after_ms:
            me = weakref.ref(self)  # held weakly, as the events thread does: an unclosed sandbox is still collected
            self._demoter = Demoter(lambda: sb._server.pid if (sb := me()) is not None else 0, demote_after_ms)

    @property
    def _executor(self) -> ThreadPoolExecutor:
        """The threads that run submitted jobs, started by the first submit: ``phase run``'s one job runs on the
        calling thread, and concurrent.futures with the logging it imports is a tenth of its start-up."""
        with self._lock:
            if self._pool is None:
                if self._closed:
                    raise SandboxError("the sandbox is closed")
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="phase-sandbox")
            return self._pool

    @staticmethod
    def _engines_wanted(wanted: Sequence[str] | None) -> tuple[str, ...]:
        if wanted is None:
            return tuple(engines.available())
        for name in wanted:
            if name not in engines.ENGINES:
                raise ValueError(f"unknown engine {name!r}: choose among {', '.join(engines.ENGINES)}")
            engines.check(name)
        return tuple(dict.fromkeys(("wasm3", *wanted)))

    def _start_server(self) -> None:
        """Start a fork server with one slot per worker, each with 1 + spares buffers (a memfd and a pre-forked
        worker each), and wait until every slot has a worker."""
        with self._lock:
            self._events: socket.socket | None = None  # events of an old server are dropped from here on
            orphans = list(getattr(self, "_compiling", {}).values())
        for done in orphans:
            done.set()  # jobs waiting for a compile of a server that died: they retry on this one
        self._modules: dict[bytes, int] = {}  # digest -> ADD sequence number (1-based) sent to this server
        # (digest, compiling engine configuration) -> the server's compile_seq once it has the code: workers forked
        # from then on have it; compiles asked for and not answered yet; those that failed (status, message)
        self._compiled: dict[tuple[bytes, int], int] = {}
        self._compiling: dict[tuple[bytes, int], threading.Event] = {}
        self._compile_failed: dict[tuple[bytes, int], tuple[str, str]] = {}
        self._compile_us: dict[tuple[bytes, int], int] = {}
        self._sent_code: set[tuple[bytes, int]] = set()
        self._adds = 0
        main_parent, main_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        events_parent, events_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        child_fds = [main_child.fileno(), events_child.fileno()]
        args = ["--main", str(main_child.fileno()), "--events", str(events_child.fileno())]
        if "wasmtime" in self.engines and not self._split:
            args += ["--wasmtime", engines.library()]
        ends: list[tuple[socket.socket, list[int]]] = []
        closers: list[socket.socket | int] = [main_child, events_child]
        try:
            for i in range(self.workers):
                parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                closers.append(child_end)
                ends.append((parent_end, []))
                shms = []
                for b in range(1 + self.spares):
                    shm = os.memfd_create(f"phase-sandbox-{i}.{b}", os.MFD_CLOEXEC)
                    closers.append(shm)
                    os.ftruncate(shm, self._shm_bytes)
                    ends[-1][1].append(os.dup(shm))
                    shms.append(shm)
                child_fds += [child_end.fileno(), *shms]
                args += ["--slot", f"{child_end.fileno()}:{','.join(map(str, shms))}"]
            server = subprocess.Popen(
                _server_command() + args,
                pass_fds=child_fds,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                close_fds=True,
            )
        except BaseException:
            main_parent.close()
            events_parent.close()
            for sock, fds in ends:
                sock.close()
                for fd in fds:
                    os.close(fd)
            raise
        finally:
            for c in closers:
                c.close() if isinstance(c, socket.socket) else os.close(c)
        slots = [_sandbox.Slot(sock.detach(), fds) for sock, fds in ends]
        try:
            for slot in slots:
                slot.ready(START_TIMEOUT_MS)
        except PhaseError as exc:
            main_parent.close()
            events_parent.close()
            for slot in slots:
                slot.close()
            server.kill()
            server.wait()
            raise SandboxError(f"the sandbox did not start: {exc}") from None
        self._server, self._main, self._slots, self._events = server, main_parent, slots, events_parent
        # the thread holds the sandbox weakly: an unclosed one is still collected (and warns)
        self._events_thread = threading.Thread(
            target=_read_events, args=(weakref.ref(self), events_parent), name="phase-sandbox-events", daemon=True
        )
        self._events_thread.start()
        if self.nice:
            _lower_priority(server.pid, self.nice)
        for slot in slots:
            self._free.put(slot)

    def _restart(self, broken: list[_sandbox.Slot]) -> None:
        """The fork server died (killed from outside, or a bug of ours): start a new one, once per death.
        Slots of the old server still queued or in use are dropped as they come back."""
        with self._restart_lock:
            if self._closed or self._slots is not broken:
                return
            # If the server died soon after we had it cache a module, never ask any server to cache that module
            # again: its jobs still run, with the bytes validated in each worker.
            if self._last_added is not None and time.monotonic() - self._last_added[1] < 5.0:
                self._uncacheable.add(self._last_added[0])
            self._main.close()
            if self._server.poll() is None:
                self._server.kill()
            self._server.wait()
            self._start_server()
            self._restarts += 1

    # ---- compiled code (docs/SANDBOX.md, "Engines") ------------------------------------------

    def _server_gone(self, sock: socket.socket) -> None:
        """The events socket closed: every job still waiting for a compile of that server wakes (and retries)."""
        with self._lock:
            if self._events is sock:
                waiting, self._compiling = list(self._compiling.values()), {}
            else:
                waiting = []
        for done in waiting:
            done.set()

    def _on_compiled(self, sock: socket.socket, data: bytes, code_fd: int) -> None:
        digest, config, status, has_code, seq, compile_us, message = _sandbox.parse_event(data)
        key = (digest, config)
        if status == "ok" and has_code and code_fd >= 0:
            self._keep_on_disk(digest, config, code_fd)
        if status == "ok":
            self._record_validated(digest)
        with self._lock:
            if self._events is not sock:
                return  # a server that has been replaced
            if status == "ok":
                self._compiled[key] = seq
                self._compile_us[key] = compile_us
                if has_code:
                    self._compiles += 1
                elif key in self._sent_code:
                    self._code_loads += 1
            else:
                self._compile_failed[key] = (status, message)
            self._sent_code.discard(key)
            done = self._compiling.pop(key, None)
        if done is not None:
            done.set()

    @staticmethod
    def _keep_on_disk(digest: bytes, config: int, code_fd: int) -> None:
        """Write code a compile helper made into the node's disk cache (when it has one), for its next start."""
        cache = engines.compiled_cache()
        if cache is None:
            return
        try:
            with mmap.mmap(code_fd, 0, prot=mmap.PROT_READ) as mapped:
                view = memoryview(mapped)
                try:
                    length = _sandbox.code_length(bytes(view[: _sandbox.CODE_HEADER_BYTES]))
                    code = view[_sandbox.CODE_HEADER_BYTES : _sandbox.CODE_HEADER_BYTES + length]
                    try:
                        cache.store_code(digest, config, code)
                    finally:
                        code.release()
                finally:
                    view.release()
        except (OSError, ValueError, PhaseError):
            pass  # a full or read-only disk costs the next start a compile, nothing else

    def _validated_before(self, digest: bytes) -> bool:
        """Whether the data dir records that our validator accepted module ``digest`` (a worker's and a fork server's
        validation, or this process's own); only for a sandbox that runs the compiling engine, whose server
        validates the module again when it takes it."""
        records = engines.validation_records() if "wasmtime" in self.engines else None
        return records is not None and records.read(digest) is not False

    @staticmethod
    def _record_validated(digest: bytes) -> None:
        """The fork server compiled (or loaded code for) a module it took, so a worker and the server validated it:
        record that for the next process (unless a record is there already: it may hold the facts too)."""
        records = engines.validation_records()
        if records is None:
            return
        try:
            if records.read(digest) is False:
                records.write(digest, None)
        except OSError:
            pass  # a full or read-only disk: the next process validates in a worker first

    def _code_on_disk(self, digest: bytes, config: int) -> memoryview | None:
        cache = engines.compiled_cache() if "wasmtime" in self.engines else None
        return None if cache is None else cache.read(digest, config)

    def _request_compile(self, digest: bytes, data: bytes, config: int) -> _Compiling | None:
        """Have the fork server get a validated module's code for ``config``: from the disk cache when it has it,
        else from a compile helper. None when it is known already (compiled, or failed); else what to wait on."""
        if self._split:
            return self._compiling_side()._request_compile(digest, data, config)
        key = (digest, config)
        with self._lock:
            if key in self._compiled or key in self._compile_failed:
                return None
            done = self._compiling.get(key)
            if done is not None:
                return _Compiling(key, done)
            done = self._compiling[key] = threading.Event()
        code = self._code_on_disk(digest, config)
        if code is not None:
            with self._lock:
                self._sent_code.add(key)
        if not self._add_module(digest, data, config, code):
            with self._lock:
                self._compiling.pop(key, None)
            done.set()
        return _Compiling(key, done)

    def _await_compile(self, waiting: _Compiling, running: _Running | None) -> None:
        """Wait (off any slot) for a compile, for a stop request, or for the sandbox to close."""
        while not waiting.done.wait(0.1):
            if self._closed:
                raise SandboxError("the sandbox is closed")
            if running is not None and running.signal.requested:
                return  # the next run sees the stop and ends the job

    def wait_for_compiles(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the compiles under way (``phase run`` before it exits, so the code
        reaches the disk cache); True when none is left."""
        if self._split:
            jit = self._jit
            return jit is None or jit.wait_for_compiles(timeout)
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                waiting = next(iter(self._compiling.values()), None)
            if waiting is None:
                return True
            left = deadline - time.monotonic()
            if left <= 0 or not waiting.wait(left):
                return False

    def compiled(
        self, module: bytes | bytearray | memoryview, limits: Limits | None = None, deterministic: bool = False
    ) -> bool:
        """Whether this sandbox's fork server has ``module``'s code for jobs with these limits (its workers from
        now on run such jobs compiled)."""
        if self._split:
            jit = self._jit
            return jit is not None and jit.compiled(module, limits, deterministic)
        key = (hashlib.sha256(module).digest(), configuration(limits or Limits(), deterministic))
        with self._lock:
            return key in self._compiled

    # ---- public API --------------------------------------------------------------------------

    def run(
        self,
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
    ) -> Result:
        """Run ``module`` once in a worker (blocking this thread only; the GIL is released while waiting).
        ``dirs``: the host directories the job sees, passed to its worker for the job's length;
        ``on_output(stream, data)``: the output as the worker writes it (as in :func:`pyphase.run`); ``engine``:
        ``wasm3``, ``wasmtime`` or ``auto``, as in :func:`pyphase.run`."""
        job = self._prepare(module, input, args, env, entry, limits, deterministic, program_name, seed, dirs, engine)
        return self._execute(job, on_output=on_output)

    def run_prepared(self, job: PreparedJob, on_output: OutputCallback | None = None) -> Result:
        """Run a job prepared by :func:`pyphase.runtime.prepare_job` (its module's digest travels with it)."""
        self._check_fits(job)
        return self._execute(job, on_output=on_output)

    def submit_prepared(self, job: PreparedJob, on_output: OutputCallback | None = None) -> Future[Result]:
        """Queue a prepared job; the future's result is its :class:`Result` (or a :class:`SandboxError`).
        ``on_output`` is called from the sandbox's own thread."""
        self._check_fits(job)
        return self._tracked(job, on_output)

    def submit(
        self,
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
    ) -> Future[Result]:
        """Queue a job; the future's result is its :class:`Result` (or a :class:`SandboxError`)."""
        job = self._prepare(module, input, args, env, entry, limits, deterministic, program_name, seed, dirs, engine)
        return self._tracked(job, on_output)

    def stop(self, future: Future[Result]) -> bool:
        """Stop a job this sandbox was given: cancel it if it has not started, else have its worker killed
        (the future then ends with that worker's death, status ``crashed``, at once rather than at the job's
        timeout). False when the job is already done or was not submitted here."""
        if future.cancel():
            return True
        running = self._running.get(future)
        if running is None or future.done():
            return False
        gen = running.signal.request()  # from here no worker gets the job, unless it is the one of ``gen``
        slot = running.slot
        if gen and slot is not None:
            slot.kill(gen)
        return True

    def _tracked(self, job: PreparedJob, on_output: OutputCallback | None = None) -> Future[Result]:
        running = _Running()
        future = self._executor.submit(self._execute, job, 0, on_output, running)
        self._running[future] = running
        future.add_done_callback(lambda f: self._running.pop(f, None))
        return future

    @staticmethod
    def shm_bytes_for(job: PreparedJob) -> int:
        """Shared memory per worker that fits ``job`` (module, input, strings and its whole output limit), at least
        the default; memfd pages are taken only when written, so a large output limit costs nothing unused."""
        strings = sum(len(s) + 1 for s in (*job.argv, *job.envp, job.entry, *job.guest_names))
        need = _sandbox.HEADER_BYTES + len(job.data) + len(job.input) + strings + job.limits.output_bytes + (1 << 20)
        return max(DEFAULT_SHM_BYTES, need)

    def worker_pids(self) -> list[int]:
        """Per slot, the pid of the worker that runs (or will run) its next job, as the fork server reported it
        (for monitoring and tests)."""
        return [slot.worker_pid for slot in self._slots]

    @property
    def demoted(self) -> int:
        """Workers (and compile helpers) demoted for the CPU they used (see ``demote_after_ms``)."""
        own = self._demoter.demoted if self._demoter is not None else 0
        return own + (self._jit.demoted if self._jit is not None else 0)

    @property
    def compiles(self) -> int:
        """Modules compiled by this sandbox's compile helpers."""
        return self._compiles + (self._jit.compiles if self._jit is not None else 0)

    @property
    def code_loads(self) -> int:
        """Compiled code loaded from the disk cache instead of compiled."""
        return self._code_loads + (self._jit.code_loads if self._jit is not None else 0)

    @property
    def restarts(self) -> int:
        """Fork servers that died and were started again."""
        return self._restarts + (self._jit.restarts if self._jit is not None else 0)

    @property
    def compiling_server_pid(self) -> int | None:
        """The pid of the fork server that runs compiled jobs: None until the first of them, without the engine, or
        once that server is closed (it could not set the engine up)."""
        if not self._split:
            return self._server.pid if "wasmtime" in self.engines else None
        jit = self._jit
        return None if jit is None or jit.closed else jit.server_pid

    @property
    def server_pid(self) -> int:
        return self._server.pid

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, timeout: float = 10.0) -> None:
        """Wait for running jobs, stop the fork server and its workers (with the compiling engine, both fork servers
        at once). Idempotent."""
        if not self._mark_closed():
            return
        deadline = time.monotonic() + timeout
        executor = self._pool
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        with self._jit_lock:
            jit = self._jit  # none is made from here on: _compiling_side looks at _closed under this lock
        sides = [self]
        if jit is not None and jit._mark_closed():  # else closed already, or by the thread that gave up on it
            sides.append(jit)
        taken = [side._let_server_go(deadline) for side in sides]  # the servers exit side by side
        for side, slots in zip(sides, taken):
            side._reap_server(slots, deadline, timeout)

    def _mark_closed(self) -> bool:
        """Mark this sandbox closed: False when it was already (another close owns the rest)."""
        with self._lock:
            if self._closed:
                return False
            self._closed = True
            return True

    def _let_server_go(self, deadline: float) -> list[_sandbox.Slot]:
        """Take every slot back (waiting until ``deadline`` for running jobs), then tell the fork server to exit."""
        taken = []
        pending = list(self._slots)
        try:
            while pending:
                slot = self._free.get(timeout=max(0.0, deadline - time.monotonic()))
                if slot in pending:
                    pending.remove(slot)
                    taken.append(slot)
                else:
                    slot.close()  # from a replaced fork server
        except queue.Empty:
            pass  # a job still runs; closing the sockets below ends it with a SandboxError
        self._main.close()
        return taken

    def _reap_server(self, taken: list[_sandbox.Slot], deadline: float, timeout: float) -> None:
        """Wait for the fork server told to exit (killed at ``deadline``), then release what this side holds."""
        _wait_for_exit(self._server, deadline)
        if self._events_thread is not threading.current_thread():
            self._events_thread.join(timeout)  # it closes the events socket at the server's exit
        if self._demoter is not None:
            self._demoter.close()
        for slot in taken:
            slot.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=2)
            self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"server pid {self._server.pid}"
        return f"<Sandbox workers={self.workers} spares={self.spares} {state}>"

    # ---- internals ---------------------------------------------------------------------------

    def _prepare(
        self,
        module: Module | bytes | bytearray | memoryview,
        input: bytes | bytearray | memoryview,
        args: Sequence[str],
        env: Mapping[str, str] | None,
        entry: str,
        limits: Limits | None,
        deterministic: bool,
        program_name: str,
        seed: bytes | None,
        dirs: Sequence[Preopen] = (),
        engine: str = "auto",
    ) -> PreparedJob:
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
        )
        self._check_fits(job)
        return job

    def _check_fits(self, job: PreparedJob) -> None:
        if self._closed:
            raise SandboxError("the sandbox is closed")
        if job.engine == "wasmtime" and "wasmtime" not in self.engines:
            raise EngineUnavailable(
                "this sandbox runs wasm3 only: the compiling engine needs pip install 'pyphase[jit]' "
                "(and a Sandbox made with it)"
            )
        slot = self._slots[0]
        need = slot.shm_needed(job, True)
        if need > slot.shm_bytes:
            raise LimitsError(
                f"the job needs {format_size(need)} of shared memory (module, input, output limit); "
                f"this sandbox has {format_size(slot.shm_bytes)} per worker: lower the output limit or "
                f"the input, or make the sandbox with Sandbox(shm_bytes=...)"
            )

    def _execute(
        self,
        job: PreparedJob,
        test_action: int = 0,
        on_output: OutputCallback | None = None,
        running: _Running | None = None,
    ) -> Result:
        if self._split and self._choose(job) == "wasmtime":  # by name, or auto's choice
            return self._execute_on_jit(job, test_action, on_output, running)
        waited: tuple[bytes, int] | None = None
        for _ in range(COMPILE_ATTEMPTS):
            outcome = self._execute_once(job, test_action, on_output, running)
            if isinstance(outcome, Result):
                if waited is not None and outcome.engine == "wasmtime":  # this job waited for its compile
                    outcome = replace(outcome, compile_us=self._compile_us.get(waited, 0))
                return outcome
            waited = outcome.key
            self._await_compile(outcome, running)  # no slot held: other jobs run meanwhile
        raise SandboxError("the sandbox's fork server did not compile the module for the compiling engine")

    def _execute_once(
        self,
        job: PreparedJob,
        test_action: int,
        on_output: OutputCallback | None,
        running: _Running | None,
    ) -> Result | _Compiling:
        while True:
            if self._closed:
                raise SandboxError("the sandbox is closed")
            slots = self._slots
            slot = self._free.get()
            if slot not in self._slots:  # from a fork server that has been replaced
                slot.close()
                continue
            token = self._demoter.started() if self._demoter is not None else 0
            try:
                return self._execute_on(slot, job, test_action, on_output, running)
            except SandboxError:
                if self._server.poll() is None or self._closed:
                    raise
                self._restart(slots)
                raise SandboxError("the sandbox's fork server died during this job; it was restarted") from None
            finally:
                if self._demoter is not None:
                    self._demoter.ended(token)
                if slot in self._slots:
                    self._free.put(slot)
                else:
                    slot.close()

    def _execute_on(
        self,
        slot: _sandbox.Slot,
        job: PreparedJob,
        test_action: int,
        on_output: OutputCallback | None = None,
        running: _Running | None = None,
    ) -> Result | _Compiling:
        lim = job.limits
        sink = sink_for(on_output)
        hard_timeout = lim.timeout_ms + self.grace_ms if lim.timeout_ms else 0
        data = job.data
        engine = "wasm3" if self._split else self._choose(job)  # a split sandbox's compiled jobs went to its _jit
        if engine == "wasmtime":
            return self._execute_compiled(slot, job, test_action, sink, running, hard_timeout)
        if job.engine == "auto" and job.digest in self._modules and self._compile_later(job):
            # a long job of a big module the server holds: its code is made while this one runs on wasm3
            self._compile_soon(job)
        try:
            if running is not None:  # for stop(): which slot's worker to kill (the run tells it which generation)
                running.slot = slot
            slot.ready(30_000)
            added = self._modules.get(job.digest)
            # The worker has the module if the server cached it before forking this worker.
            inline = added is None or slot.cache_seq < added
            with opened(job.dirs) as preopens:
                stop = running.signal if running is not None else None
                raw = slot.run(
                    job, data if inline else None, hard_timeout, test_action, self.spin_us, preopens, sink, stop
                )
                if raw is None:  # evicted from (or refused by) the server's cache: send the bytes and add it again
                    self._modules.pop(job.digest, None)
                    added = None
                    raw = slot.run(job, data, hard_timeout, test_action, self.spin_us, preopens, sink, stop)
        except PhaseError as exc:
            raise SandboxError(str(exc)) from None
        if not isinstance(raw, tuple):
            raise SandboxError("the worker did not take the module's bytes")
        valid = raw[0] not in ("invalid_module", "crashed")
        if added is None and valid:
            self._add_module(job.digest, data)
        result = self._finish(Result.from_core(raw), data, sink)
        if job.engine == "auto":
            engines.record(job.digest, "wasm3", result.wall_us)  # auto's history (the data dir's, on a node)
            if valid and self._compile_later(job):
                # a long job of a big module ran here; its next ones find the compiled code (pyphase.engines)
                self._compile_soon(job)
        return result

    @staticmethod
    def _finish(result: Result, data: bytes, sink: OutputSink | None) -> Result:
        result = explain_invalid(result, data)
        if sink is not None:
            sink.reraise()
            result = _streamed_as_kept(result, sink)
        return result

    def _choose(self, job: PreparedJob) -> str:
        """The engine a job runs on here: ``auto`` as :func:`pyphase.engines.choose` decides it in process, with
        "compiled" meaning compiled in this sandbox's fork server."""
        if job.engine != "auto":
            return job.engine
        jit = self._jit
        if "wasmtime" not in self.engines or job.digest in self._uncacheable:
            return "wasm3"
        if jit is not None and job.digest in jit._uncacheable:
            return "wasm3"
        if not engines.looks_long(job.digest, job.limits):
            return "wasm3"  # even when compiled: a short job starts faster on wasm3
        key = (job.digest, configuration(job.limits, job.deterministic))
        compiled, failed, under_way = self._compile_status(key)
        if compiled or (failed is not None and failed[0] == "refused"):
            return "wasmtime"  # refused: the compiling engine cannot run here, which _execute_compiled handles
        if failed is not None:
            return "wasm3"
        if len(job.data) <= engines.AUTO_INLINE_COMPILE_BYTES:
            return "wasmtime"  # its compile takes tens of ms: the job waits for it
        if under_way:
            return "wasm3"  # a big module's compile is under way: never wait for Cranelift
        cache = engines.compiled_cache()
        return "wasmtime" if cache is not None and cache.has(*key) else "wasm3"  # loaded in milliseconds

    def _compile_later(self, job: PreparedJob) -> bool:
        """A big module whose job ``auto`` kept on wasm3 while it looked long: compile it for the next ones."""
        if "wasmtime" not in self.engines or not engines.looks_long(job.digest, job.limits):
            return False
        compiled, failed, under_way = self._compile_status((job.digest, configuration(job.limits, job.deterministic)))
        return not compiled and failed is None and not under_way

    def _compile_status(self, key: tuple[bytes, int]) -> tuple[bool, tuple[str, str] | None, bool]:
        """Where ``key``'s code stands on the fork server of compiled jobs: (compiled, failed (status, message) or
        None, under way)."""
        side = self._jit if self._split else self
        if side is None:
            return False, None, False
        with side._lock:
            return key in side._compiled, side._compile_failed.get(key), key in side._compiling

    def _compile_soon(self, job: PreparedJob) -> None:
        """Have the fork server of compiled jobs make ``job``'s code (a worker here validated the module), for the
        module's next jobs; this job runs on wasm3."""
        try:
            self._request_compile(job.digest, job.data, configuration(job.limits, job.deterministic))
        except SandboxError:
            pass  # closed meanwhile, or the second fork server did not start: later jobs stay on wasm3

    def _compiling_side(self) -> Sandbox:
        """The sandbox whose fork server runs this one's compiled jobs, started by the first of them: wasm3's workers
        are forked from a server that never loads the compiling engine (docs/SANDBOX.md, "Engines": "two fork servers")."""
        with self._jit_lock:
            if self._closed:
                raise SandboxError("the sandbox is closed")
            if self._jit is None:
                self._jit = Sandbox(
                    self.workers,
                    shm_bytes=self._shm_bytes,
                    grace_ms=self.grace_ms,
                    spin_us=self.spin_us,
                    spares=self.spares,
                    engines=self.engines,
                    nice=self.nice,
                    demote_after_ms=self._demote_after_ms,
                    one_server=True,
                )
            return self._jit

    def _execute_on_jit(
        self, job: PreparedJob, test_action: int, on_output: OutputCallback | None, running: _Running | None
    ) -> Result:
        jit = self._compiling_side()
        try:
            return jit._execute(job, test_action, on_output, running)
        finally:
            if "wasmtime" not in jit.engines and "wasmtime" in self.engines:
                # it could not set the engine up (and warned): wasm3 only from now on, so its server and workers go
                # (in the background: this job's result does not wait for jobs still running there)
                self.engines = ("wasm3",)
                threading.Thread(target=jit.close, name="phase-sandbox-close", daemon=True).start()

    def _execute_compiled(
        self,
        slot: _sandbox.Slot,
        job: PreparedJob,
        test_action: int,
        sink: OutputSink | None,
        running: _Running | None,
        hard_timeout: int,
    ) -> Result | _Compiling:
        """A job on the compiling engine. A worker runs only code its fork server had before forking it: a module the
        server does not hold goes first to a worker, which validates the bytes and answers "not compiled"; the server
        then gets the code (disk cache, else a compile helper) while the job waits off its slot (the returned
        :class:`_Compiling`), and the job goes to a worker forked after that."""
        key = (job.digest, configuration(job.limits, job.deterministic))
        data = job.data
        if job.digest in self._uncacheable:
            raise SandboxError("the fork server died caching this module: it is not compiled in this sandbox")
        for _ in range(COMPILE_ATTEMPTS):
            with self._lock:
                failed = self._compile_failed.get(key)
                compiled_at = self._compiled.get(key)
            if failed is not None:
                return self._not_compiled(slot, job, test_action, sink, running, *failed)
            if compiled_at is None and (job.digest in self._modules or self._validated_before(job.digest)):
                # the server holds the module, or a record says a worker and a server validated these very bytes
                # before: the server gets the code now (and validates the module itself), no worker validates first
                waiting = self._request_compile(job.digest, data, key[1])
                if waiting is not None:
                    return waiting
                continue
            try:
                slot.ready(30_000)
                if compiled_at is not None and slot.compile_seq < compiled_at:
                    # a worker forked before the code was there would validate the bytes only to decline the job:
                    # have it replaced by one forked since
                    slot.renew(compiled_at, 30_000)
                if running is not None:  # for stop(): which slot's worker to kill (the run tells it which generation)
                    running.slot = slot
                stop = running.signal if running is not None else None
                worker_seq = slot.compile_seq
                inline = compiled_at is None or worker_seq < compiled_at
                with opened(job.dirs) as preopens:
                    raw = slot.run(
                        job,
                        data if inline else None,
                        hard_timeout,
                        test_action,
                        self.spin_us,
                        preopens,
                        sink,
                        stop,
                        engine="wasmtime",
                    )
            except PhaseError as exc:
                raise SandboxError(str(exc)) from None
            if isinstance(raw, tuple):
                if raw[0] == "rejected" and str(raw[2]).startswith(JIT_REFUSED):
                    return self._without_compiling_engine(slot, job, test_action, sink, running, str(raw[2]), raw)
                return self._finish(Result.from_core(raw, "wasmtime"), data, sink)
            if raw is None or (compiled_at is not None and worker_seq >= compiled_at):
                # forked after the server had the code, yet without it (or the module): evicted; get it again
                with self._lock:
                    self._compiled.pop(key, None)
                    self._modules.pop(job.digest, None)
            elif compiled_at is None:  # a worker validated the bytes: the server may hold and compile them
                waiting = self._request_compile(job.digest, data, key[1])
                if waiting is not None:
                    return waiting
            # else: a worker forked before the code was there; the next one has it
        raise SandboxError("the sandbox's fork server did not compile the module for the compiling engine")

    def _not_compiled(
        self,
        slot: _sandbox.Slot,
        job: PreparedJob,
        test_action: int,
        sink: OutputSink | None,
        running: _Running | None,
        status: str,
        message: str,
    ) -> Result | _Compiling:
        """A job whose module the fork server could not get compiled: wasmtime's reason as ``invalid_module``, or,
        when the engine cannot run here at all, ``rejected`` (then the sandbox goes on with wasm3)."""
        outcome = "rejected" if status == "refused" else "invalid_module"
        message = message or "the module could not be compiled"
        result = replace(failed_result(outcome, message, job.data, bytes(job.input)), engine="wasmtime")
        if status == "refused" and message.startswith(JIT_REFUSED):
            return self._without_compiling_engine(slot, job, test_action, sink, running, message, result)
        if job.engine == "auto":  # auto never fails for want of compiled code: wasm3 runs it
            return self._execute_on(
                slot, job._replace(engine="wasm3"), test_action, None if sink is None else sink.callback, running
            )
        return result

    def _without_compiling_engine(
        self,
        slot: _sandbox.Slot,
        job: PreparedJob,
        test_action: int,
        sink: OutputSink | None,
        running: _Running | None,
        why: str,
        raw: RawResult | Result,
    ) -> Result | _Compiling:
        """The fork server could not set up the compiling engine at its first compile (e.g. under systemd's
        MemoryDenyWriteExecute): from now on this sandbox runs wasm3 only; an ``auto`` job runs there now."""
        if "wasmtime" in self.engines:
            self.engines = ("wasm3",)
            warnings.warn(f"{why}; the sandbox's workers run wasm3 only", RuntimeWarning, stacklevel=2)
        if job.engine != "auto":
            if isinstance(raw, Result):
                return raw
            return self._finish(Result.from_core(raw, "wasmtime"), job.data, sink)
        return self._execute_on(slot, job, test_action, None if sink is None else sink.callback, running)

    def _add_module(
        self, digest: bytes, data: bytes, compile_index: int = -1, code: bytes | memoryview | None = None
    ) -> bool:
        """Have the fork server cache a module a worker validated without incident, so later workers
        inherit it (no re-validation, no copy per job); with ``compile_index``, also get its code for that
        configuration of the compiling engine (pyphase.compiled.configuration): ``code`` from the disk cache, else
        compiled by a compile helper (an event answers). False when nothing was sent."""
        with self._lock:
            if digest in self._uncacheable or self._closed:
                return False
            if compile_index < 0 and digest in self._modules:
                return False
            header = _sandbox.add_message(len(data), compile_index, len(code) if code is not None else 0)
            try:
                self._main.sendall(header + data)
                if code is not None:
                    self._main.sendall(code)
            except OSError:
                return False  # the server is gone; the next job reports it
            self._adds += 1
            self._last_added = (digest, time.monotonic())
            self._modules.setdefault(digest, self._adds)
            return True

    def _selftest(
        self,
        action: str,
        module: bytes,
        limits: Limits | None = None,
        dirs: Sequence[Preopen] = (),
        on_output: OutputCallback | None = None,
        quota: FsQuota | None = None,
        engine: str = "wasm3",
    ) -> Result:
        """Test only: run a job whose worker performs ``action`` (see _sandbox.TEST_ACTIONS) once confined."""
        job = self._prepare(module, b"", (), None, "_start", limits, False, DEFAULT_PROGRAM_NAME, None, dirs, engine)
        return self._execute(job._replace(quota=quota), _sandbox.TEST_ACTIONS[action], on_output)
