"""A node's store of file contents (blobs of input trees), named by sha256, bounded, least recently used out.

Files are ``DIR/<hex>``, mode 0444, each hashed while it arrived (:class:`Incoming` streams a blob to a part
file chunk by chunk, so no blob is ever whole in memory) and moved into the store only when its bytes match
its name. A blob found on disk when the store opens is hashed again before its first use, and again whenever
its file's inode, size, mtime or ctime changed: a corrupted one is deleted and fetched again, never used. A job's read-only tree is made of hard links to them, so a blob evicted from the store while a job
uses it stays on disk until the job's directory is removed; the store's bound counts only its own names.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, TypeVar

from pyphase.digests import PREFIX, digest_from_text

_NAME = re.compile(r"^[0-9a-f]{64}$")
T = TypeVar("T")


def blob_hex(blob_hash: str) -> str:
    """The file name of a blob: the hex of its ``sha256:`` name (``ValueError`` for anything else)."""
    return digest_from_text(blob_hash).hex()


class BlobStore:
    """``link(hash, dest)`` (a hard link of the blob at ``dest``, or False if absent) and ``adopt(path, hash)``
    (move a verified part file in); at most ``max_bytes`` on disk under the store's own names."""

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.incoming = self.dir / "incoming"
        self.incoming.mkdir(exist_ok=True, mode=0o700)
        for stale in os.scandir(self.incoming):  # part files of a node that stopped mid-transfer
            os.unlink(stale.path)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._disk: OrderedDict[str, int] = OrderedDict()  # hex -> size, least recently used first
        self._checked: dict[str, tuple[int, int, int, int]] = {}  # hex -> (ino, size, mtime, ctime) when hashed
        found = []
        for entry in os.scandir(self.dir):
            if _NAME.match(entry.name) and entry.is_file(follow_symlinks=False):
                st = entry.stat()
                found.append((st.st_mtime, entry.name, st.st_size))
        for _, hex_, size in sorted(found):
            self._disk[hex_] = size
        self.bytes = sum(self._disk.values())
        self._evict()

    def __contains__(self, blob_hash: str) -> bool:
        return blob_hex(blob_hash) in self._disk

    def __len__(self) -> int:
        return len(self._disk)

    def link(self, blob_hash: str, dest: str) -> bool:
        """Hard-link the blob at ``dest`` (True), or False when the store does not hold it (or lost it)."""
        hex_ = blob_hex(blob_hash)
        with self._lock:
            size = self._disk.get(hex_)
            if size is None:
                return False
            self._disk.move_to_end(hex_)
        path = self.dir / hex_
        try:
            if not self._intact(hex_, path, size):  # changed behind our back: forget it, the job fetches it again
                raise FileNotFoundError(path)
            os.link(path, dest)
        except FileNotFoundError:
            with self._lock:
                if self._disk.pop(hex_, None) is not None:
                    self.bytes -= size
            self._checked.pop(hex_, None)
            path.unlink(missing_ok=True)
            return False
        return True

    def _intact(self, hex_: str, path: Path, size: int) -> bool:
        """Whether the blob's file still holds its bytes: hashed again the first time it is used after the store
        was opened (a blob is never trusted for its name alone), and again whenever its inode, size, mtime or
        ctime moved since (any write changes them)."""
        st = os.stat(path)
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if st.st_size != size:
            return False
        if self._checked.get(hex_) == stamp:
            return True
        sha = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                sha.update(chunk)
        if sha.hexdigest() != hex_:
            return False
        self._checked[hex_] = stamp
        return True

    def read(self, blob_hash: str) -> bytes | None:
        """A small blob's bytes (tree listings), hashed again; None if absent or not matching."""
        hex_ = blob_hex(blob_hash)
        if hex_ not in self._disk:
            return None
        try:
            data = (self.dir / hex_).read_bytes()
        except OSError:
            return None
        if hashlib.sha256(data).hexdigest() != hex_:
            return None
        with self._lock:
            if hex_ in self._disk:
                self._disk.move_to_end(hex_)
        return data

    def adopt(self, part: str, blob_hash: str, size: int) -> None:
        """Move a verified part file into the store (or delete it when it cannot fit)."""
        hex_ = blob_hex(blob_hash)
        if size > self.max_bytes:
            os.unlink(part)
            return
        os.chmod(part, 0o444)
        os.replace(part, self.dir / hex_)
        st = os.stat(self.dir / hex_)  # hashed as it arrived: checked as it is now
        self._checked[hex_] = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        with self._lock:
            if hex_ not in self._disk:
                self.bytes += size
            self._disk[hex_] = size
            self._disk.move_to_end(hex_)
            self._evict()

    def _evict(self) -> None:
        while self.bytes > self.max_bytes and self._disk:
            hex_, size = self._disk.popitem(last=False)
            self.bytes -= size
            self._checked.pop(hex_, None)
            (self.dir / hex_).unlink(missing_ok=True)


class BlobIO:
    """Where a node writes, hashes and places arriving blob bytes: one thread of its own, in the order given, so
    the event loop only counts them (``threaded``); or at once on the caller's thread (the benchmark's reference).
    ``submit(fn, *args)`` returns a :class:`~concurrent.futures.Future`."""

    def __init__(self, threaded: bool = True) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="plasmd-blobs") if threaded else None

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        if self._pool is not None:
            return self._pool.submit(fn, *args)
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:
            future.set_exception(exc)
        return future

    def close(self) -> None:
        """Finish what was given, then stop the thread."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)


class Incoming:
    """One blob arriving in order, chunk by chunk, into a part file; hashed as it comes."""

    def __init__(self, directory: Path, name: str, blob_hash: str, size: int) -> None:
        self.hash = blob_hash
        self.size = size
        self.received = 0
        self.path = str(directory / name)
        self._sha = hashlib.sha256()
        self.error: OSError | None = None
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)

    def write(self, offset: int, chunk: bytes | memoryview) -> None:
        """Append ``chunk``; it must start where the last one ended and not pass the declared size."""
        self.accept(offset, len(chunk))
        self.store(chunk)

    def accept(self, offset: int, n: int) -> None:
        """Count ``n`` bytes at ``offset`` as received (``ValueError`` when out of order or past the size); their
        bytes follow with :meth:`store`, possibly on another thread."""
        if offset != self.received or self.received + n > self.size:
            raise ValueError(f"bytes {offset}..{offset + n} of a blob of {self.size}, expected {self.received}")
        self.received += n

    def store(self, chunk: bytes | memoryview) -> None:
        """Write and hash the next accepted bytes (the first error is kept for :meth:`finish`)."""
        if self.error is not None:
            return
        try:
            view = memoryview(chunk)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError as exc:
            self.error = exc
            return
        self._sha.update(chunk)

    @property
    def complete(self) -> bool:
        return self.received == self.size

    def finish(self) -> bool:
        """Close the part file; True when its bytes match the hash (else it is deleted). Raises the first
        ``OSError`` writing met (the part file deleted)."""
        self.close()
        if self.error is not None:
            self.discard()
            raise self.error
        if PREFIX + self._sha.hexdigest() == self.hash:
            return True
        self.discard()
        return False

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def discard(self) -> None:
        self.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
