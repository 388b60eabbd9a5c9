"""Read-only HTTP server of boot artifacts, by hash.

``GET``/``HEAD`` only, two kinds of path::

    /sha256/<64 hex>        an artifact; served only if its bytes hash to its name
    /boot/manifest.json     the current signed boot manifest (clients verify it themselves)

Single byte ranges (``Range: bytes=a-b``, ``a-``, ``-n``) are answered with 206 so a client
can resume. No directory listings, no other paths, no writes.

One asyncio event loop (on a background thread) serves every connection; a connection costs one
descriptor and a little memory, never a thread. What a stranger may take:

* ``max_connections`` connections at once, ``max_per_address`` of them from one source address; beyond
  either, the connection is answered 503 at once and closed (it never holds a slot), unless every slot is
  taken and one of them has been held for ``EVICT_AFTER_S`` at less than ``min_rate`` (trickling its headers,
  reading slowly, idle between requests): the slowest such connection is closed and the new one takes its slot,
  so slow connections from many addresses cannot keep a boot's manifest and artifacts at 503;
* at most ``2 * max_connections`` descriptors in all, slots and 503 answers together: beyond, the server stops
  accepting and further connections wait in the kernel's backlog, which costs the process no descriptor
  (``plasmd --boot-store`` reserves that many of its open-file limit for this server);
* the request line and headers (at most 8 KiB) must arrive within ``header_timeout``; an idle keep-alive
  connection is closed after ``timeout``;
* a response must be read at ``min_rate`` bytes per second or better (after a grace of
  ``MIN_RATE_GRACE_S``), and no write may stall for ``timeout``: slower readers are cut off, so they
  cannot hold the slots a boot needs.

A dropped connection is not an error: nothing is logged for it beyond the access line (none with ``quiet``).
"""

from __future__ import annotations

import asyncio
import email.utils
import errno
import fcntl
import os
import re
import socket
import struct
import sys
import termios
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import BinaryIO

from pyphase.boot.manifest import Artifact
from pyphase.boot.store import MANIFEST_PATH, ArtifactStore

ARTIFACT_PATH_RE = re.compile(r"^/sha256/([0-9a-f]{64})$")
RANGE_RE = re.compile(r"^bytes=(\d{0,19})-(\d{0,19})$")  # 19 digits: any size a file can have
DEFAULT_MAX_CONNECTIONS = 32
DEFAULT_MAX_PER_ADDRESS = 8
DEFAULT_TIMEOUT = 30.0
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_MIN_RATE = 32 << 10  # bytes per second
MIN_RATE_GRACE_S = 10.0
EVICT_AFTER_S = 1.0  # a slot held this long below min_rate is given to a new connection when all are taken
MAX_HEADER_BYTES = 8 << 10
CHUNK = 1 << 16
SEND_BUFFER = 128 << 10
WRITE_BUFFER_HIGH = CHUNK * 2  # drain() waits while more than this waits in our buffer


@dataclass(frozen=True)
class _Verified:
    size: int
    mtime_ns: int
    inode: int


class _Index:
    """Which artifact files are known to match their names (re-hashed when a file changes)."""

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._verified: dict[str, _Verified] = {}

    def open(self, hex_digest: str) -> tuple[BinaryIO, int] | None:
        path = self.store.path_for(hex_digest)
        try:
            f = open(path, "rb")
        except OSError:
            return None
        st = os.fstat(f.fileno())
        stamp = _Verified(st.st_size, st.st_mtime_ns, st.st_ino)
        with self._lock:
            known = self._verified.get(hex_digest)
        if known != stamp:
            if Artifact.of_file(path).hex != hex_digest:
                f.close()
                sys.stderr.write(f"phase boot serve: {path} does not match its name; not serving it\n")
                return None
            with self._lock:
                self._verified[hex_digest] = stamp
        return f, st.st_size


class _Drop(Exception):
    """End this connection quietly (the peer left, stalled or read too slowly)."""


class _Request:
    def __init__(self, method: str, path: str, version: str, headers: dict[str, str]) -> None:
        self.method = method
        self.path = path
        self.version = version
        self.headers = headers


@dataclass(eq=False)
class _Slot:
    """A connection holding a slot: since when, and the bytes of responses it has taken."""

    task: asyncio.Task[None] | None
    began: float
    transport: asyncio.BaseTransport
    sent: int = 0

    def rate(self, now: float) -> float:
        """Bytes per second the peer has taken: what was written less what still waits in our buffer and in
        the kernel's send queue (unsent or not acknowledged: ``SIOCOUTQ``)."""
        waiting = self.transport.get_write_buffer_size() if isinstance(self.transport, asyncio.WriteTransport) else 0
        sock = self.transport.get_extra_info("socket")
        if sock is not None and self.sent:
            try:
                waiting += struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
            except OSError:
                pass
        return max(0, self.sent - waiting) / max(1e-3, now - self.began)


class ArtifactHTTPServer:
    """The server's state and its connection handler; runs on the loop of :class:`ArtifactServer`."""

    def __init__(
        self,
        store: ArtifactStore,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_per_address: int = DEFAULT_MAX_PER_ADDRESS,
        timeout: float = DEFAULT_TIMEOUT,
        header_timeout: float = DEFAULT_HEADER_TIMEOUT,
        min_rate: int = DEFAULT_MIN_RATE,
        min_rate_grace: float = MIN_RATE_GRACE_S,
        quiet: bool = False,
    ) -> None:
        self.store = store
        self.index = _Index(store)
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self.timeout_seconds = timeout
        self.header_timeout = header_timeout
        self.min_rate = min_rate
        self.min_rate_grace = min_rate_grace
        self.quiet = quiet
        self.active = 0
        self.per_address: Counter[str] = Counter()
        self.slots: dict[asyncio.Task[None] | None, _Slot] = {}

    def _log(self, address: str, text: str) -> None:
        if not self.quiet:
            sys.stderr.write(f"phase boot serve: {address} {text}\n")

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) else "?"
        over = self.per_address[address] >= self.max_per_address
        if not over and self.active >= self.max_connections:
            over = not self._evict_slowest()
        self.active += 1
        self.per_address[address] += 1
        task = asyncio.current_task()
        if not over:
            self.slots[task] = _Slot(task, time.monotonic(), writer.transport)
        try:
            writer.transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
            sock = writer.get_extra_info("socket")
            if sock is not None:  # a small kernel buffer too, so the rate measured is the reader's
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            if over:
                await self._simple(writer, "GET", 503, "too many connections", {"Retry-After": "1"})
                return
            await self._serve_connection(reader, writer, address)
        except (_Drop, ConnectionError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        except asyncio.CancelledError:
            # the server is closing: end quietly (Python 3.11's stream callback logs a handler task that ends
            # cancelled as "Exception in callback ...", which the quiet server must not print)
            pass
        finally:
            if not over:
                self.slots.pop(task, None)
            self.active -= 1
            self.per_address[address] -= 1
            if self.per_address[address] <= 0:
                del self.per_address[address]
            if writer.transport.get_write_buffer_size():
                writer.transport.abort()  # a peer that stopped reading gets no more of our time
            else:
                writer.close()

    def _evict_slowest(self) -> bool:
        """Close the slowest connection held ``EVICT_AFTER_S`` or longer below ``min_rate``, if there is one."""
        now = time.monotonic()
        slow = [s for s in self.slots.values() if now - s.began >= EVICT_AFTER_S and s.rate(now) < self.min_rate]
        if not slow:
            return False
        victim = min(slow, key=lambda s: (s.rate(now), s.began))
        del self.slots[victim.task]
        if victim.task is not None:
            victim.task.cancel()
        return True

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: str) -> None:
        first = True
        while True:
            # the first request's headers get header_timeout; an idle keep-alive connection gets timeout
            deadline = self.header_timeout if first else min(self.timeout_seconds, self.header_timeout)
            request = await self._read_request(reader, writer, deadline)
            if request is None:
                return
            first = False
            keep = await self._respond(request, writer, address)
            if not keep:
                return

    async def _read_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, deadline: float
    ) -> _Request | None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), deadline)
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                raise _Drop() from None
            return None  # the client closed between requests
        except (TimeoutError, asyncio.TimeoutError):
            raise _Drop() from None
        except asyncio.LimitOverrunError:
            await self._simple(writer, "GET", 431, "request headers too large")
            return None
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await self._simple(writer, "GET", 400, "bad request")
            return None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        return _Request(parts[0], parts[1], parts[2], headers)

    async def _respond(self, request: _Request, writer: asyncio.StreamWriter, address: str) -> bool:
        """Answer one request; whether the connection may carry another."""
        keep = request.version == "HTTP/1.1" and request.headers.get("connection", "").lower() != "close"
        if request.method not in ("GET", "HEAD"):
            status = await self._simple(
                writer, request.method, 405, "read-only server: GET and HEAD only", {"Allow": "GET, HEAD"}
            )
            self._log(address, f'"{request.method} {request.path[:128]}" {status}')
            return False
        path = request.path.split("?", 1)[0]
        status = 404
        if len(path) > 128:
            status = await self._simple(writer, request.method, 414, "path too long")
            keep = False
        elif (match := ARTIFACT_PATH_RE.match(path)) is not None:
            opened = await asyncio.to_thread(self.index.open, match.group(1))  # hashing may take a while
            if opened is None:
                status = await self._simple(writer, request.method, 404, "no such artifact")
                keep = False
            else:
                f, size = opened
                with f:
                    status, keep = await self._send_file(
                        request,
                        writer,
                        f,
                        size,
                        keep,
                        etag=f'"sha256:{match.group(1)}"',
                        cache="public, max-age=31536000, immutable",
                    )
        elif path == "/" + MANIFEST_PATH:
            try:
                f = open(self.store.manifest_path, "rb")
            except OSError:
                status = await self._simple(writer, request.method, 404, "no boot manifest published")
                keep = False
            else:
                with f:
                    status, keep = await self._send_file(
                        request,
                        writer,
                        f,
                        os.fstat(f.fileno()).st_size,
                        keep,
                        etag=None,
                        cache="no-cache",
                        content_type="application/json",
                    )
        else:
            status = await self._simple(writer, request.method, 404, "not found")
            keep = False
        self._log(address, f'"{request.method} {path[:128]}" {status}')
        return keep

    async def _simple(
        self, writer: asyncio.StreamWriter, method: str, code: int, message: str, extra: dict[str, str] | None = None
    ) -> int:
        body = (message + "\n").encode()
        headers = {
            "Content-Type": "text/plain; charset=utf-8",
            "Content-Length": str(len(body)),
            "Connection": "close",
            **(extra or {}),
        }
        writer.write(_head(code, headers) + (b"" if method == "HEAD" else body))
        await self._drain(writer, len(body), time.monotonic())
        return code

    async def _send_file(
        self,
        request: _Request,
        writer: asyncio.StreamWriter,
        f: BinaryIO,
        size: int,
        keep: bool,
        *,
        etag: str | None,
        cache: str,
        content_type: str = "application/octet-stream",
    ) -> tuple[int, bool]:
        start, end = 0, size  # [start, end)
        status = 200
        header = request.headers.get("range")
        if header is not None:
            m = RANGE_RE.match(header.strip())
            if m and (m.group(1) or m.group(2)):
                first, last = m.group(1), m.group(2)
                if first:
                    start = int(first)
                    end = min(size, int(last) + 1) if last else size
                else:
                    start, end = max(0, size - int(last)), size
                if start >= size or start >= end:
                    code = await self._simple(
                        writer, request.method, 416, "range not satisfiable", {"Content-Range": f"bytes */{size}"}
                    )
                    return code, False
                status = 206
            elif re.match(r"^bytes=\d+-\d*$", header.strip()):
                # a number beyond any file's size (e.g. thousands of digits): nothing of this file is there
                code = await self._simple(
                    writer, request.method, 416, "range not satisfiable", {"Content-Range": f"bytes */{size}"}
                )
                return code, False
            # anything else (multiple ranges, other units) is ignored: a full 200 is a valid answer
        headers = {
            "Content-Type": content_type,
            "Content-Length": str(end - start),
            "Accept-Ranges": "bytes",
            "Cache-Control": cache,
            "Last-Modified": email.utils.formatdate(os.fstat(f.fileno()).st_mtime, usegmt=True),
        }
        if etag:
            headers["ETag"] = etag
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        if not keep:
            headers["Connection"] = "close"
        writer.write(_head(status, headers))
        if request.method == "HEAD":
            await self._drain(writer, 0, time.monotonic())
            return status, keep
        f.seek(start)
        remaining = end - start
        began = time.monotonic()
        sent = 0
        while remaining > 0:
            chunk = f.read(min(CHUNK, remaining))
            if not chunk:  # the file shrank under us: cut the connection rather than pad
                raise _Drop()
            writer.write(chunk)
            sent += len(chunk)
            slot = self.slots.get(asyncio.current_task())
            if slot is not None:
                slot.sent += len(chunk)
            remaining -= len(chunk)
            await self._drain(writer, sent, began, flush=remaining == 0)
        return status, keep

    async def _drain(self, writer: asyncio.StreamWriter, sent: int, began: float, flush: bool = False) -> None:
        """Wait until the socket took the bytes: within ``timeout``, and by the time ``sent`` bytes at
        ``min_rate`` allow (at the earliest the grace's end); a slower reader is cut off. ``drain()`` alone
        waits only for our buffer to fall below its high-water mark; with ``flush`` (a response's last bytes)
        it waits for the buffer to empty, for the close that follows resets a connection with bytes left."""
        allowed = max(self.min_rate_grace, sent / self.min_rate) - (time.monotonic() - began)
        if flush:
            writer.transport.set_write_buffer_limits(high=0)
        try:
            await asyncio.wait_for(writer.drain(), max(0.0, min(self.timeout_seconds, allowed)))
        except (TimeoutError, asyncio.TimeoutError):
            raise _Drop() from None
        finally:
            if flush:
                writer.transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)


_REASONS = {
    200: "OK",
    206: "Partial Content",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    414: "URI Too Long",
    416: "Range Not Satisfiable",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


def _head(code: int, headers: dict[str, str]) -> bytes:
    lines = [
        f"HTTP/1.1 {code} {_REASONS.get(code, '')}",
        "Server: phase-boot",
        f"Date: {email.utils.formatdate(usegmt=True)}",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class ArtifactServer:
    """The artifact server on its own event loop thread; ``with ArtifactServer(dir) as s: s.url``."""

    def __init__(
        self,
        store_dir: str | os.PathLike[str],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_per_address: int = DEFAULT_MAX_PER_ADDRESS,
        timeout: float = DEFAULT_TIMEOUT,
        header_timeout: float | None = None,
        min_rate: int = DEFAULT_MIN_RATE,
        min_rate_grace: float = MIN_RATE_GRACE_S,
        quiet: bool = True,
    ) -> None:
        self.store = ArtifactStore(store_dir)
        self.httpd = ArtifactHTTPServer(
            self.store,
            max_connections=max_connections,
            max_per_address=max_per_address,
            timeout=timeout,
            header_timeout=min(timeout, DEFAULT_HEADER_TIMEOUT) if header_timeout is None else header_timeout,
            min_rate=min_rate,
            min_rate_grace=min_rate_grace,
            quiet=quiet,
        )
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind((host, port))
            self._listener.listen(64)
        except OSError as exc:
            self._listener.close()
            if exc.errno == errno.EADDRINUSE:
                raise OSError(exc.errno, f"cannot listen on {host}:{port}: address already in use") from None
            raise
        self._listener.setblocking(False)
        self.server_address = self._listener.getsockname()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self.open_limit = 2 * max_connections  # descriptors in all: slots and 503 answers
        self._open = 0
        self._accepting = False

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        host = str(self.server_address[0])
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    def start(self) -> ArtifactServer:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="phase-boot-serve", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def _run(self, ready: threading.Event) -> None:
        asyncio.run(self._main(ready))

    async def _main(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._loop.add_reader(self._listener.fileno(), self._accept)
        self._accepting = True
        ready.set()
        await self._stop.wait()
        if self._accepting:
            self._loop.remove_reader(self._listener.fileno())
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _accept(self) -> None:
        """Accept while fewer than ``open_limit`` connections are open; at the limit, stop watching the listener
        (what arrives waits in the kernel's backlog) until one closes."""
        assert self._loop is not None
        while self._open < self.open_limit:
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # out of descriptors, or the peer gone already: look again shortly
                self._pause(retry=0.1)
                return
            self._open += 1
            self._loop.create_task(self._serve(conn))
        self._pause()

    def _pause(self, retry: float = 0.0) -> None:
        assert self._loop is not None
        if self._accepting:
            self._loop.remove_reader(self._listener.fileno())
            self._accepting = False
        if retry:
            self._loop.call_later(retry, self._resume)

    def _resume(self) -> None:
        if not self._accepting and self._open < self.open_limit and self._stop is not None and not self._stop.is_set():
            assert self._loop is not None
            self._loop.add_reader(self._listener.fileno(), self._accept)
            self._accepting = True

    async def _serve(self, conn: socket.socket) -> None:
        try:
            conn.setblocking(False)
            reader, writer = await asyncio.open_connection(sock=conn, limit=MAX_HEADER_BYTES)
            await self.httpd.handle(reader, writer)
            # the stream's own record of how the connection ended (a reset is no error here): taken, so
            # nothing reports it as "never retrieved"
            await asyncio.wait_for(writer.wait_closed(), 1.0)
        except (OSError, asyncio.CancelledError, asyncio.TimeoutError):
            conn.close()
        finally:
            self._open -= 1
            self._resume()

    def close(self) -> None:
        if self._thread is not None and self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout=10)
            self._thread = None
        self._listener.close()

    def __enter__(self) -> ArtifactServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
