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

if TYPE_CHECKING:
    from pyphase.identity import Identity
    from pyphase.limits import Limits
    from pyphase.manifest import make_manifest
    from pyphase.net.client import Client
    from pyphase.preopen import FsQuota, Preopen
    from pyphase.receipt import make_receipt, verify_receipt
    from pyphase.result import Result
    from pyphase.runtime import RUNTIME_NAME, RUNTIME_VERSION, Module, run
    from pyphase.sandbox import Sandbox

__version__ = "0.1.0"

# Where each public name lives. They load on first use, so that `import pyphase` costs the errors alone: a command
# or a worker imports what it needs (`phase run` never loads the signing library, schemas or the network stack).
_LAZY = {
    "Client": "pyphase.net.client",
    "FsQuota": "pyphase.preopen",
    "Identity": "pyphase.identity",
    "Limits": "pyphase.limits",
    "Module": "pyphase.runtime",
    "Preopen": "pyphase.preopen",
    "RUNTIME_NAME": "pyphase.runtime",
    "RUNTIME_VERSION": "pyphase.runtime",
    "Result": "pyphase.result",
    "Sandbox": "pyphase.sandbox",
    "make_manifest": "pyphase.manifest",
    "make_receipt": "pyphase.receipt",
    "run": "pyphase.runtime",
    "verify_receipt": "pyphase.receipt",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pyphase' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


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
