"""Read-only HTTP server of boot artifacts, by hash.

``GET``/``HEAD`` only, two kinds of path::

    /sha256/<64 hex>        an artifact; served only if its bytes hash to its name
    /boot/manifest.json     the current signed boot manifest (clients verify it themselves)

Single byte ranges (``Range: bytes=a-b``, ``a-``, ``-n``) are answered with 206 so a client
can resume. Limits: a cap on concurrent connections (503 beyond it), a socket timeout, and
no directory listings, no other paths, no writes.
"""

from __future__ import annotations

import email.utils
import errno
import http.server
import os
import re
import socket
import sys
import threading
from dataclasses import dataclass
from typing import BinaryIO

from pyphase.boot.manifest import Artifact
from pyphase.boot.store import MANIFEST_PATH, ArtifactStore

ARTIFACT_PATH_RE = re.compile(r"^/sha256/([0-9a-f]{64})$")
RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
DEFAULT_MAX_CONNECTIONS = 32
DEFAULT_TIMEOUT = 30.0
CHUNK = 1 << 16


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


class _Handler(http.server.BaseHTTPRequestHandler):
    server: ArtifactHTTPServer
    server_version = "phase-boot"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.timeout_seconds)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        if not self.server.quiet:
            sys.stderr.write(f"phase boot serve: {self.client_address[0]} {format % args}\n")

    def _simple(self, code: int, message: str, extra: dict[str, str] | None = None) -> None:
        body = (message + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.close_connection = True
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._serve()

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve()

    def _method_not_allowed(self) -> None:
        self._simple(405, "read-only server: GET and HEAD only", {"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _method_not_allowed  # noqa: N815

    def _serve(self) -> None:
        if not self.server.slots.acquire(blocking=False):
            self._simple(503, "too many connections", {"Retry-After": "1"})
            return
        try:
            self._serve_path()
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            self.close_connection = True
        finally:
            self.server.slots.release()

    def _serve_path(self) -> None:
        path = self.path.split("?", 1)[0]
        if len(path) > 128:
            self._simple(414, "path too long")
            return
        match = ARTIFACT_PATH_RE.match(path)
        if match:
            opened = self.server.index.open(match.group(1))
            if opened is None:
                self._simple(404, "no such artifact")
                return
            f, size = opened
            with f:
                self._send_file(f, size, etag=f'"sha256:{match.group(1)}"',
                                cache="public, max-age=31536000, immutable")
            return
        if path == "/" + MANIFEST_PATH:
            try:
                f = open(self.server.store.manifest_path, "rb")
            except OSError:
                self._simple(404, "no boot manifest published")
                return
            with f:
                self._send_file(f, os.fstat(f.fileno()).st_size, etag=None, cache="no-cache",
                                content_type="application/json")
            return
        self._simple(404, "not found")

    def _send_file(self, f: BinaryIO, size: int, *, etag: str | None, cache: str,
                   content_type: str = "application/octet-stream") -> None:
        start, end = 0, size  # [start, end)
        status = 200
        header = self.headers.get("Range")
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
                    self._simple(416, "range not satisfiable", {"Content-Range": f"bytes */{size}"})
                    return
                status = 206
            # anything else (multiple ranges, other units) is ignored: a full 200 is a valid answer
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Cache-Control", cache)
        self.send_header("Last-Modified", email.utils.formatdate(os.fstat(f.fileno()).st_mtime, usegmt=True))
        if etag:
            self.send_header("ETag", etag)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.end_headers()
        if self.command == "HEAD":
            return
        f.seek(start)
        remaining = end - start
        while remaining > 0:
            chunk = f.read(min(CHUNK, remaining))
            if not chunk:  # the file shrank under us: cut the connection rather than pad
                self.close_connection = True
                return
            self.wfile.write(chunk)
            remaining -= len(chunk)


class ArtifactHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, store: ArtifactStore, address: tuple[str, int], *,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS, timeout: float = DEFAULT_TIMEOUT,
                 quiet: bool = False) -> None:
        self.store = store
        self.index = _Index(store)
        self.slots = threading.BoundedSemaphore(max_connections)
        self.timeout_seconds = timeout
        self.quiet = quiet
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)


class ArtifactServer:
    """An :class:`ArtifactHTTPServer` on a background thread; ``with ArtifactServer(dir) as s: s.url``."""

    def __init__(self, store_dir: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 0, *,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS, timeout: float = DEFAULT_TIMEOUT,
                 quiet: bool = True) -> None:
        self.store = ArtifactStore(store_dir)
        try:
            self.httpd = ArtifactHTTPServer(self.store, (host, port), max_connections=max_connections,
                                            timeout=timeout, quiet=quiet)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise OSError(exc.errno, f"cannot listen on {host}:{port}: address already in use") from None
            raise
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        raw = self.httpd.server_address[0]
        host = raw.decode() if isinstance(raw, bytes) else str(raw)
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    def start(self) -> ArtifactServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="phase-boot-serve", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self.httpd.server_close()

    def __enter__(self) -> ArtifactServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
