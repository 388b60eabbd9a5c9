"""Where a node runs jobs: isolated sandbox workers when they work, else a thread pool in the node's process.

Both have ``submit(module, input, digest=None, on_output=None, **kwargs) -> concurrent.futures.Future[Result]``;
``digest`` is the module's sha256 when the caller has it (a node checked the bytes against the manifest), so it is
not computed again; ``on_output(stream, data)`` gets the output as the job writes it, from the executor's thread.

Both give the same :class:`~pyphase.Result`; :func:`make_executor` checks at start that the sandbox
really runs a job before trusting it, and falls back (loudly) when it cannot.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from pyphase.errors import InvalidModule, SandboxUnavailable
from pyphase.limits import Limits
from pyphase.digests import sha256_text
from pyphase.result import Result
from pyphase.runtime import OutputCallback, PreparedJob, prepare_job, run_prepared

if TYPE_CHECKING:
    from concurrent.futures import Future

# The smallest valid WASI command: (module (func (export "_start"))). Used to check an executor works.
EMPTY_MODULE = (
    b"\0asm\1\0\0\0"
    + bytes([1, 4, 1, 0x60, 0, 0, 3, 2, 1, 0, 7, 10, 1, 6])
    + b"_start"
    + bytes([0, 0, 10, 4, 1, 2, 0, 0x0B])
)


def failed_result(status: str, message: str, module: bytes, input: bytes) -> Result:
    """A result for a job that never ran (invalid module, executor failure)."""
    empty = sha256_text(b"")
    return Result(
        status=status,
        exit_code=0,
        message=message[:1024],
        stdout=b"",
        stderr=b"",
        fuel_used=0,
        wall_us=0,
        memory_peak_bytes=0,
        module_hash=sha256_text(module),
        input_hash=sha256_text(input),
        stdout_hash=empty,
        stderr_hash=empty,
    )


class ThreadExecutor:
    """Runs :func:`pyphase.run` in a thread pool (the GIL is released while a job runs). No process isolation."""

    kind = "thread"

    def __init__(self, workers: int) -> None:
        from concurrent.futures import ThreadPoolExecutor  # here: the sandbox (phase run) imports this module too

        self.workers = workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="plasmd-job")

    @staticmethod
    def _run(job: PreparedJob, on_output: OutputCallback | None) -> Result:
        try:
            return run_prepared(job, on_output)
        except InvalidModule as exc:
            return failed_result("invalid_module", str(exc), job.data, bytes(job.input))

    def submit(
        self,
        module: bytes,
        input: bytes,
        digest: bytes | None = None,
        on_output: OutputCallback | None = None,
        **kwargs: Any,
    ) -> Future[Result]:
        return self._pool.submit(self._run, prepare_job(module, input, digest=digest, **kwargs), on_output)

    def stop(self, future: Future[Result]) -> bool:
        """Cancel a job that has not started; a running thread cannot be stopped (it ends at its timeout)."""
        return future.cancel()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class SandboxExecutor:
    """Runs jobs in :class:`pyphase.Sandbox` worker processes (the node never parses untrusted modules itself)."""

    kind = "sandbox"

    def __init__(self, workers: int, nice: int = 0, demote_after_ms: int = 0) -> None:
        from pyphase.sandbox import Sandbox

        self.workers = workers
        self._sandbox = Sandbox(workers=workers, nice=nice, demote_after_ms=demote_after_ms)

    @property
    def demoted(self) -> int:
        """Workers demoted for the CPU their job used (``Sandbox(demote_after_ms=)``)."""
        return self._sandbox.demoted

    @property
    def engines(self) -> list[str]:
        """The engines its workers run (both when the compiling engine is installed)."""
        return list(self._sandbox.engines)

    def submit(
        self,
        module: bytes,
        input: bytes,
        digest: bytes | None = None,
        on_output: OutputCallback | None = None,
        **kwargs: Any,
    ) -> Future[Result]:
        """A future of the job's result; a failure of the sandbox itself is its exception (reported as
        ``crashed`` by the node). ``on_output``: the output as the worker writes it (from the sandbox's thread)."""
        return self._sandbox.submit_prepared(prepare_job(module, input, digest=digest, **kwargs), on_output)

    def stop(self, future: Future[Result]) -> bool:
        """Stop a submitted job, running or not: its worker is killed (see :meth:`pyphase.Sandbox.stop`)."""
        return self._sandbox.stop(future)

    def run(self, module: bytes, input: bytes, **kwargs: Any) -> Result:
        """Run one job and wait for its result (the start-up self-test)."""
        return self._sandbox.run_prepared(prepare_job(module, input, **kwargs))

    def close(self) -> None:
        self._sandbox.close()


Executor = ThreadExecutor | SandboxExecutor


def make_executor(
    workers: int,
    sandbox: bool,
    warn: Callable[[str], None] = lambda _: None,
    nice: int = 0,
    demote_after_ms: int = 0,
) -> Executor:
    """The sandbox, checked with a self-test job; threads only when ``sandbox`` is False. ``nice``: added to the
    sandbox workers' nice value; ``demote_after_ms``: CPU after which a worker runs at a lower priority
    (threads keep the caller's either way).

    A node never falls back to threads by itself: running strangers' code in the node's own process must be
    asked for (``sandbox = false``), so a sandbox that cannot start raises :class:`SandboxUnavailable`.
    """
    if not sandbox:
        warn("sandbox disabled by configuration: jobs run in threads inside the node's process")
        return ThreadExecutor(workers)
    hint = "; fix it, or start plasmd with --no-sandbox to run jobs in the node's own process"
    try:
        executor = SandboxExecutor(workers, nice, demote_after_ms)
    except Exception as exc:  # ImportError, SandboxError, OSError
        raise SandboxUnavailable(f"sandbox unavailable ({type(exc).__name__}: {exc}){hint}") from exc
    try:
        result = executor.run(EMPTY_MODULE, b"", limits=Limits(timeout_ms=5000))
    except Exception as exc:
        executor.close()
        raise SandboxUnavailable(f"sandbox self-test failed ({type(exc).__name__}: {exc}){hint}") from exc
    if result.status != "ok":
        executor.close()
        raise SandboxUnavailable(f"sandbox self-test ended {result.status}: {result.message}{hint}")
    return executor


def job_kwargs(manifest: Mapping[str, Any], limits: Limits) -> dict[str, Any]:
    args: Sequence[str] = manifest["args"]
    return {
        "args": list(args),
        "env": dict(manifest["env"]),
        "entry": manifest["entry"],
        "limits": limits,
        "deterministic": manifest["deterministic"],
        # requires.runtime names an engine (pyphase.engines); without it the node picks (auto)
        "engine": manifest["requires"].get("runtime", "auto"),
    }
