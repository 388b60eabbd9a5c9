"""The outcome of one job, as the core reports it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pyphase.errors import JOB_ERRORS


def hash_text(digest: bytes) -> str:
    """``sha256:<hex>`` name of a digest."""
    return "sha256:" + digest.hex()


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
            "status": self.status, "exit_code": self.exit_code, "message": self.message,
            "fuel_used": self.fuel_used, "wall_us": self.wall_us, "memory_peak_bytes": self.memory_peak_bytes,
            "module": self.module_hash, "input": self.input_hash, "stdout_hash": self.stdout_hash,
            "stderr_hash": self.stderr_hash,
        }
        for name in ("stdout", "stderr"):
            try:
                out[name] = getattr(self, name).decode("utf-8")
            except UnicodeDecodeError:
                out[name] = None
        if self.receipt is not None:
            out["receipt"] = self.receipt
        return out
