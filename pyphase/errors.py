"""The exception hierarchy of pyphase, in one place.

Classes also inherit the matching built-in (``ValueError``) where a caller
might reasonably catch that instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyphase.result import Result


class PhaseError(Exception):
    """Base class of every error pyphase raises."""


class InvalidModule(PhaseError, ValueError):
    """The module bytes are malformed, invalid, unsupported or import what the host lacks."""


class LimitsError(PhaseError, ValueError):
    """A limit is malformed or outside what this runtime accepts."""


class ManifestError(PhaseError, ValueError):
    """A job manifest does not match its schema."""


class SignatureError(PhaseError, ValueError):
    """A signature is missing, malformed or does not verify."""


class VerificationError(PhaseError):
    """A receipt failed verification; ``problems`` lists every check that failed."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class SandboxUnavailable(PhaseError):
    """Isolated workers were asked for and cannot run here; a node refuses to start rather than run strangers'
    code in its own process (``sandbox = false`` / ``--no-sandbox`` is the explicit opt-out)."""


class RecordError(PhaseError, ValueError):
    """A node record from the DHT (or its UDP answer) is tampered, expired, malformed or not the key's."""


class TreeError(PhaseError, ValueError):
    """A directory tree (listing, file bytes or host directory) that cannot be sent, taken or written;
    ``reason`` is the node's reject reason it maps to (``bad_tree``, ``tree_too_big``, ``blob_mismatch``)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class SandboxError(PhaseError):
    """The sandbox itself failed (its fork server died or could not start); the job's fate is unknown."""


class IdentityError(PhaseError):
    """An identity key file is missing, unreadable or malformed."""


class JobError(PhaseError):
    """A job ended with a status other than ``ok``; ``result`` holds what it produced."""

    status = "error"

    def __init__(self, result: Result) -> None:
        super().__init__(f"{result.status}: {result.message}" if result.message else result.status)
        self.result = result


class Trap(JobError):
    status = "trap"


class Timeout(JobError):
    status = "timeout"


class FuelExhausted(JobError):
    status = "fuel_exhausted"


class MemoryLimitExceeded(JobError):
    status = "memory_limit"


class OutputLimitExceeded(JobError):
    status = "output_limit"


class Crashed(JobError):
    status = "crashed"


class Rejected(JobError):
    status = "rejected"


class InvalidModuleResult(JobError):
    status = "invalid_module"


JOB_ERRORS: dict[str, type[JobError]] = {
    cls.status: cls
    for cls in (
        Trap,
        Timeout,
        FuelExhausted,
        MemoryLimitExceeded,
        OutputLimitExceeded,
        Crashed,
        Rejected,
        InvalidModuleResult,
    )
}


class NetworkError(PhaseError):
    """A remote job could not be completed on any peer; ``attempts`` lists ``(peer_id, what went wrong)``."""

    def __init__(self, message: str, attempts: list[tuple[str, str]] | None = None) -> None:
        self.attempts = list(attempts or [])
        if self.attempts:
            message += ": " + "; ".join(describe_attempts(self.attempts))
        super().__init__(message)


def describe_attempts(attempts: list[tuple[str, str]], full_ids: bool = False) -> list[str]:
    """One line per distinct ``(peer, why)``, in order, with a count when it happened more than once; peer ids
    shortened to 12 characters unless ``full_ids``."""
    counts: dict[tuple[str, str], int] = {}
    for attempt in attempts:
        counts[attempt] = counts.get(attempt, 0) + 1
    return [
        f"{peer if full_ids else peer[:12]}: {why}" + (f" ({n} times)" if n > 1 else "")
        for (peer, why), n in counts.items()
    ]


class UnverifiedOutput(NetworkError):
    """Output was handed over as a peer streamed it, and then the job failed on that peer (its receipt did not
    verify, it broke the stream's rules, the connection dropped): what was shown is not verified. Not retried
    elsewhere, since the output already went out; ``peer`` and ``shown`` (bytes) say what was shown."""

    def __init__(self, peer: str, shown: int, why: str, attempts: list[tuple[str, str]] | None = None) -> None:
        self.peer = peer
        self.shown = shown
        super().__init__(
            f"UNVERIFIED OUTPUT: {shown:,} bytes of output from {peer} were shown as they came, then {why}; "
            f"do not trust them",
            attempts,
        )


class NoPeers(NetworkError):
    """No peer was given and none was discovered, or none can take the job."""


class QuorumError(NetworkError):
    """Replicas disagreed and no output reached a quorum; ``receipts`` holds every receipt received,
    ``groups`` maps each output digest to the peers that reported it."""

    def __init__(
        self,
        message: str,
        receipts: list[dict[str, Any]],
        groups: dict[str, list[str]],
        attempts: list[tuple[str, str]] | None = None,
    ) -> None:
        self.receipts = receipts
        self.groups = groups
        super().__init__(message, attempts)
