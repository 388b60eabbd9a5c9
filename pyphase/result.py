"""The outcome of one job, as the core reports it."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from pyphase.digests import UNHASHED, hash_text, sha256_text
from pyphase.errors import JOB_ERRORS

_new = object.__new__

RawResult = tuple[str, int, str, bytes, bytes, int, int, int, bytes, bytes, bytes, bytes, bool, int, str]
"""A result as the C bindings return it (``_core.run``, ``_sandbox.Slot.run``); :meth:`Result.from_core` reads it."""


@dataclass(frozen=True)
class Result:
    """What a job produced: ``status`` is ``ok`` when the entry returned or called ``proc_exit``."""

    status: str
    exit_code: int
    message: str
    stdout: bytes
    stderr: bytes
    fuel_used: int
    wall_us: int
    memory_peak_bytes: int
    module_hash: str
    input_hash: str
    stdout_hash: str
    stderr_hash: str
    receipt: dict[str, Any] | None = field(default=None, compare=False)
    #: the module looked for a preopened directory and the job had none (``phase run`` says how to give one)
    fs_unavailable: bool = field(default=False, compare=False)
    #: the engine that ran it (``wasm3`` or ``wasmtime``; pyphase.engines), and the time it spent compiling first
    engine: str = field(default="wasm3", compare=False)
    compile_us: int = field(default=0, compare=False)
    #: the bound of its :class:`~pyphase.FsQuota` a call of the job was refused at (``disk_bytes``, ``files``), or ""
    fs_limit: str = field(default="", compare=False)

    @classmethod
    def from_core(cls, raw: RawResult, engine: str = "wasm3") -> Result:
        """The result of a job the C core ran (in this process or in a sandbox worker) on ``engine``. Every field is
        set at once, past the frozen dataclass's ``__init__`` (one ``object.__setattr__`` per field: 8.6 -> 3.1 µs
        here); ``tests/test_result.py`` checks it sets each field."""
        result = _new(cls)
        result.__dict__.update(
            status=raw[0],
            exit_code=raw[1],
            message=raw[2],
            stdout=raw[3],
            stderr=raw[4],
            fuel_used=raw[5],
            wall_us=raw[6],
            memory_peak_bytes=raw[7],
            module_hash=hash_text(raw[8]),
            input_hash=hash_text(raw[9]),
            stdout_hash=hash_text(raw[10]),
            stderr_hash=hash_text(raw[11]),
            fs_unavailable=raw[12],
            receipt=None,
            engine=engine,
            compile_us=raw[13],
            fs_limit=raw[14],
        )
        return result

    def with_hashes(self, module_hash: str, input_hash: str) -> Result:
        """This result, or, for a job that never ran and so hashed nothing (:data:`~pyphase.digests.UNHASHED`:
        invalid module, crashed worker), a copy naming the module and input the caller checked and hashing the
        output it holds."""
        if self.hashed:
            return self
        return replace(
            self,
            module_hash=module_hash,
            input_hash=input_hash,
            stdout_hash=sha256_text(self.stdout),
            stderr_hash=sha256_text(self.stderr),
        )

    @property
    def hashed(self) -> bool:
        """Whether the job ran and so hashed its module, input and output (else see :meth:`with_hashes`)."""
        return self.stdout_hash != UNHASHED and self.module_hash != UNHASHED

    @property
    def ok(self) -> bool:
        """True when the job ran to completion (whatever its exit code)."""
        return self.status == "ok"

    def check(self) -> Result:
        """Return self if ``status`` is ``ok``, else raise the matching :class:`~pyphase.errors.JobError`."""
        if self.status != "ok":
            raise JOB_ERRORS[self.status](self)
        return self

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary; stdout/stderr as text when they are UTF-8, else omitted (see the hashes)."""
        out: dict[str, Any] = {
            "status": self.status,
            "exit_code": self.exit_code,
            "message": self.message,
            "fuel_used": self.fuel_used,
            "wall_us": self.wall_us,
            "memory_peak_bytes": self.memory_peak_bytes,
            "module": self.module_hash,
            "input": self.input_hash,
            "stdout_hash": self.stdout_hash,
            "stderr_hash": self.stderr_hash,
            "engine": self.engine,
            "compile_us": self.compile_us,
        }
        for name in ("stdout", "stderr"):
            try:
                out[name] = getattr(self, name).decode("utf-8")
            except UnicodeDecodeError:
                out[name] = None
        if self.receipt is not None:
            out["receipt"] = self.receipt
        return out
