"""Type stubs of the compiled binding to Phase's C core (pyphase/_core.pyx)."""

import builtins
from typing import Any, Callable

from pyphase.limits import Limits
from pyphase.result import RawResult
from pyphase.runtime import PreparedJob

RUNTIME_NAME: str
RUNTIME_VERSION: str
WASMTIME_VERSION: str
VALIDATOR_ID: str
MODULE_FACTS: int
SHA256_ACCELERATED: bool
WASMTIME_POOL_SLOTS: int
ENGINE_CODES: dict[str, int]
STATUS_NAMES: tuple[str, ...]
WASM_PAGE: int
MAX_PREOPENS: int
FS_QUOTA_BLOCK: int
MAX_FDS: int
DEFAULT_LIMITS: dict[str, int]

def wasi_functions() -> list[tuple[str, str, bool]]: ...

class CoreModule:
    def __init__(
        self, data: bytes, digest: builtins.bytes | None = None, facts: tuple[int, ...] | None = None
    ) -> None: ...
    @property
    def facts(self) -> tuple[int, ...]: ...
    @property
    def digest(self) -> bytes: ...
    @property
    def size(self) -> int: ...
    @property
    def bytes(self) -> bytes: ...
    @property
    def info(self) -> dict[str, Any]: ...
    def compile(self, limits: Limits, deterministic: bool = False) -> int: ...
    def is_compiled(self, limits: Limits, deterministic: bool = False) -> bool: ...
    def serialize(self, limits: Limits, deterministic: bool = False) -> builtins.bytes: ...
    def deserialize(self, limits: Limits, deterministic: bool, data: builtins.bytes | memoryview) -> None: ...

def load_wasmtime(path: str) -> None: ...
def run(
    module: CoreModule,
    job: PreparedJob,
    preopens: list[tuple[int, bytes, bool]] | None = None,
    on_output: Callable[[int, bytes], bool] | None = None,
    engine: str = "wasm3",
) -> RawResult: ...
def sha256(data: bytes | bytearray | memoryview) -> bytes: ...
def ed25519_verify(signature: bytes, message: bytes, public_key: bytes) -> bool: ...
def splice(a: int, b: int, max_bytes: int = 0, timeout: float = -1.0) -> tuple[str, int]: ...
