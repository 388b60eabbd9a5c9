"""Phase: run sandboxed WebAssembly (WASI) jobs locally or on a peer-to-peer network, with signed receipts.

Local::

    import pyphase
    result = pyphase.run(open("hello.wasm", "rb").read(), input=b"Hello, World")
    print(result.stdout)          # b'dlroW ,olleH'

Remote: ``pyphase.Client(peers=[...]).submit(module, input=...)``; isolated local workers:
``pyphase.Sandbox(workers=2)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pyphase.errors import (
    Crashed,
    FuelExhausted,
    IdentityError,
    InvalidModule,
    JobError,
    LimitsError,
    ManifestError,
    MemoryLimitExceeded,
    OutputLimitExceeded,
    PhaseError,
    RecordError,
    Rejected,
    SignatureError,
    Timeout,
    Trap,
    VerificationError,
)
from pyphase.identity import Identity
from pyphase.limits import Limits
from pyphase.manifest import make_manifest
from pyphase.preopen import FsQuota, Preopen
from pyphase.receipt import make_receipt, verify_receipt
from pyphase.result import Result
from pyphase.runtime import RUNTIME_NAME, RUNTIME_VERSION, Module, run

if TYPE_CHECKING:
    from pyphase.net.client import Client
    from pyphase.sandbox import Sandbox

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Heavier parts load on first use so that `import pyphase` stays cheap for the CLI and workers.
    if name == "Client":
        from pyphase.net.client import Client

        return Client
    if name == "Sandbox":
        from pyphase.sandbox import Sandbox

        return Sandbox
    raise AttributeError(f"module 'pyphase' has no attribute {name!r}")


__all__ = [
    "Client",
    "Crashed",
    "FsQuota",
    "FuelExhausted",
    "Identity",
    "IdentityError",
    "InvalidModule",
    "JobError",
    "Limits",
    "LimitsError",
    "ManifestError",
    "MemoryLimitExceeded",
    "Module",
    "OutputLimitExceeded",
    "PhaseError",
    "Preopen",
    "RUNTIME_NAME",
    "RUNTIME_VERSION",
    "RecordError",
    "Rejected",
    "Result",
    "Sandbox",
    "SignatureError",
    "Timeout",
    "Trap",
    "VerificationError",
    "make_manifest",
    "make_receipt",
    "run",
    "verify_receipt",
    "__version__",
]
