"""A node's content-addressed module cache: bounded, on disk, least recently used first out.

Files are ``DIR/<hex>.wasm`` named by the sha256 of their bytes. A module read back from disk is
hashed again before it is used (a corrupted or swapped file is deleted and reported missing), and
the most recently used modules stay in memory so a hot module costs a dict lookup.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections import OrderedDict
from pathlib import Path

from pyphase.digests import PREFIX, is_hash_text

_NAME = re.compile(r"^([0-9a-f]{64})\.wasm$")


def _hex(module_hash: str) -> str:
    if not is_hash_text(module_hash):
        raise ValueError(f"not a module hash: {module_hash!r}")
    return module_hash[len(PREFIX) :]


class ModuleCache:
    """``get(hash) -> bytes | None`` and ``put(hash, data)``; at most ``max_bytes`` on disk,
    at most ``memory_bytes`` held in memory."""

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int, memory_bytes: int = 64 << 20) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.max_bytes = max_bytes
        self.memory_bytes = memory_bytes
        self._lock = threading.Lock()
        self._disk: OrderedDict[str, int] = OrderedDict()  # hex -> size, least recently used first
        self._mem: OrderedDict[str, bytes] = OrderedDict()
        self._mem_size = 0
        found = []
        for entry in os.scandir(self.dir):
            match = _NAME.match(entry.name)
            if match and entry.is_file():
                st = entry.stat()
                found.append((st.st_mtime, match.group(1), st.st_size))
            elif entry.name.endswith(".tmp"):
                os.unlink(entry.path)
        for _, hex_, size in sorted(found):
            self._disk[hex_] = size
        self._evict()

    @property
    def disk_bytes(self) -> int:
        return sum(self._disk.values())

    def __contains__(self, module_hash: str) -> bool:
        return _hex(module_hash) in self._disk

    def __len__(self) -> int:
        return len(self._disk)

    def get(self, module_hash: str) -> bytes | None:
        """The module's bytes, or None when absent (or found corrupt on disk, and then removed)."""
        hex_ = _hex(module_hash)
        with self._lock:
            data = self._mem.get(hex_)
            if data is not None:
                self._mem.move_to_end(hex_)
                self._disk.move_to_end(hex_)
                return data
            if hex_ not in self._disk:
                return None
        path = self.dir / f"{hex_}.wasm"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            data = None
        except OSError:  # unreadable now (no descriptor free, I/O trouble): not corrupt, keep it
            return None
        if data is None or hashlib.sha256(data).hexdigest() != hex_:
            with self._lock:
                self._disk.pop(hex_, None)
            path.unlink(missing_ok=True)
            return None
        os.utime(path)
        with self._lock:
            if hex_ in self._disk:
                self._disk.move_to_end(hex_)
            self._remember(hex_, data)
        return data

    def put(self, module_hash: str, data: bytes) -> bool:
        """Store ``data`` under ``module_hash`` if the hash matches; False when it does not or it cannot fit."""
        hex_ = _hex(module_hash)
        if hashlib.sha256(data).hexdigest() != hex_:
            return False
        if len(data) > self.max_bytes:
            return False
        with self._lock:
            if hex_ in self._disk:
                self._remember(hex_, data)
                return True
        path = self.dir / f"{hex_}.wasm"
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        with self._lock:
            self._disk[hex_] = len(data)
            self._remember(hex_, data)
            self._evict()
        return True

    def _remember(self, hex_: str, data: bytes) -> None:
        if len(data) > self.memory_bytes:
            return
        if hex_ not in self._mem:
            self._mem_size += len(data)
        self._mem[hex_] = data
        self._mem.move_to_end(hex_)
        while self._mem_size > self.memory_bytes:
            _, old = self._mem.popitem(last=False)
            self._mem_size -= len(old)

    def _evict(self) -> None:
        total = sum(self._disk.values())
        while total > self.max_bytes and self._disk:
            hex_, size = self._disk.popitem(last=False)
            total -= size
            old = self._mem.pop(hex_, None)
            if old is not None:
                self._mem_size -= len(old)
            (self.dir / f"{hex_}.wasm").unlink(missing_ok=True)
