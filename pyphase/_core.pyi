"""Type stubs of the compiled binding to Phase's C core (pyphase/_core.pyx)."""

from typing import Any, Callable

from pyphase.result import RawResult
from pyphase.runtime import PreparedJob

RUNTIME_NAME: str
RUNTIME_VERSION: str
STATUS_NAMES: tuple[str, ...]
WASM_PAGE: int
MAX_PREOPENS: int
MAX_FDS: int
DEFAULT_LIMITS: dict[str, int]

def wasi_functions() -> list[tuple[str, str, bool]]: ...

class CoreModule:
    def __init__(self, data: bytes) -> None: ...
    @property
    def digest(self) -> bytes: ...
    @property
    def size(self) -> int: ...
    @property
    def bytes(self) -> bytes: ...
    @property
    def info(self) -> dict[str, Any]: ...

def run(
    module: CoreModule,
    job: PreparedJob,
    preopens: list[tuple[int, bytes, bool]] | None = None,
    on_output: Callable[[int, bytes], bool] | None = None,
) -> RawResult: ...
def sha256(data: bytes | bytearray | memoryview) -> bytes: ...
def ed25519_verify(signature: bytes, message: bytes, public_key: bytes) -> bool: ...
