"""SOCKS5 for the client: a loopback relay that carries every ZeroMQ connection through a SOCKS5 proxy.

A :class:`~pyphase.Client` with a proxy connects its DEALER sockets to this relay only
(``tcp://127.0.0.1:N``, one listening port per peer); each connection accepted there is opened through
the proxy (RFC 1928 CONNECT, no authentication, by python-socks) to that one peer, and bytes are copied both ways. The
relay never connects anywhere but to the proxy, so nothing can reach a peer directly (fail closed).
A peer's host name is sent to the proxy as a name (address type 3): this machine makes no DNS query for
it, and ``.onion`` names work through Tor.

Why not libzmq's own ``ZMQ_SOCKS_PROXY``: in libzmq 4.3.5 (the release pyzmq bundles) a SOCKS connection
that fails (the proxy down, or the proxy unable to reach the peer) leaves a stale poller handle behind
(``socks_connecter_t::error()`` calls ``rm_fd`` without clearing ``_handle``), which closing the socket
later removes a second time: ``Bad file descriptor (src/epoll.cpp:86)`` and SIGABRT of the whole process,
or a use-after-free. A client must be able to close a socket whose peer is unreachable, and libzmq's
plain TCP connecter to the relay has no such bug. The relay also says *why* a connection failed (proxy
down, or the proxy's reply code), which libzmq's monitor events cannot.
"""

from __future__ import annotations

import selectors
import socket
import threading
import time

from python_socks import ProxyConnectionError, ProxyTimeoutError, ProxyType
from python_socks import ProxyError as SocksProxyError
from python_socks.sync import Proxy

from pyphase.net.addresses import split_hostport
from pyphase.net.relay import RelayError, join, open_circuit

__all__ = ["ProxyError", "SocksRelay", "socks5_connect"]


class ProxyError(Exception):
    """The SOCKS5 proxy could not be reached, did not speak SOCKS5, or refused to open the connection."""


def socks5_connect(proxy: str, host: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection to ``host:port`` opened through the SOCKS5 proxy ``proxy`` (``HOST:PORT``, IPv6 in
    brackets), in blocking mode. ``host`` may be a name: the proxy resolves it. Raises :class:`ProxyError`
    with the reason (unreachable proxy, or the proxy's reply) if the connection cannot be made within
    ``timeout`` seconds. The SOCKS5 handshake is python-socks'."""
    proxy_host, proxy_port = split_hostport(proxy)
    via = Proxy(ProxyType.SOCKS5, proxy_host, proxy_port, rdns=True)
    try:
        sock = via.connect(dest_host=host, dest_port=port, timeout=timeout)
    except ProxyConnectionError as exc:
        cause = exc.__cause__ or exc.__context__
        why = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(exc)
        raise ProxyError(f"the SOCKS proxy {proxy} is unreachable ({why})") from None
    except ProxyTimeoutError:
        raise ProxyError(f"the SOCKS proxy {proxy} did not complete the connection within {timeout:g} s") from None
    except SocksProxyError as exc:
        if exc.error_code is None:
            raise ProxyError(f"the SOCKS proxy {proxy} failed: {exc}") from None
        raise ProxyError(f"the SOCKS proxy {proxy} could not connect to {host}:{port} ({exc})") from None
    except OSError as exc:
        raise ProxyError(f"the SOCKS proxy {proxy} failed ({exc.strerror or exc})") from None
    sock.settimeout(None)
    return sock


Target = tuple[str, int] | tuple[str, int, str]


class SocksRelay:
    """Loopback listeners, one per target, whose connections go through ``proxy`` and only there.
    A target is ``(host, port)``, or ``(relay host, relay port, peer id)`` for a node reached through a
    Phase relay (:mod:`pyphase.net.relay`): then the connection asks that relay for a circuit to the node,
    through the proxy when there is one (``proxy=None``: directly). Threads: one accepting (started with
    the first listener), and one per live connection (copying in C, without the GIL)."""

    def __init__(self, proxy: str | None, timeout: float) -> None:
        self.proxy = proxy
        self.timeout = timeout
        self._lock = threading.Lock()
        self._listeners: dict[Target, socket.socket] = {}
        self._failures: dict[Target, str] = {}
        self._links: set[socket.socket] = set()
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._closed = False

    def endpoint(self, host: str, port: int, via_peer: str | None = None) -> str:
        """The ZeroMQ endpoint (``tcp://127.0.0.1:N``) that reaches ``host:port`` through the proxy (with
        ``via_peer``: the node ``via_peer`` through the relay at ``host:port``)."""
        target: Target = (host, port) if via_peer is None else (host, port, via_peer)
        with self._lock:
            if self._closed:
                raise ProxyError("the SOCKS relay is closed")
            listener = self._listeners.get(target)
            if listener is None:
                listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                listener.bind(("127.0.0.1", 0))
                listener.listen(16)
                listener.setblocking(False)
                self._listeners[target] = listener
                if self._wake is None:
                    self._wake = socket.socketpair()
                    threading.Thread(
                        target=self._accept_loop, args=(self._wake[0],), name="phase-socks-accept", daemon=True
                    ).start()
                else:
                    self._wake[1].send(b"\0")
            return f"tcp://127.0.0.1:{listener.getsockname()[1]}"

    def take_failure(self, host: str, port: int, via_peer: str | None = None) -> str | None:
        """Why the last connection to ``host:port`` (``via_peer``: to that node through the relay there)
        could not be opened (then forgotten)."""
        with self._lock:
            return self._failures.pop((host, port) if via_peer is None else (host, port, via_peer), None)

    def close(self) -> None:
        """Stop listening and cut every relayed connection. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            listeners = list(self._listeners.values())
            links = list(self._links)
            self._listeners.clear()
            wake = self._wake
        if wake is not None:
            try:
                wake[1].send(b"\0")
            except OSError:
                pass
        for sock in listeners:
            sock.close()
        for sock in links:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # ---- threads ------------------------------------------------------------------------------------

    def _accept_loop(self, wake: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        sel.register(wake, selectors.EVENT_READ)
        registered: dict[socket.socket, Target] = {}
        try:
            while True:
                with self._lock:
                    if self._closed:
                        return
                    current = {s: t for t, s in self._listeners.items()}
                for sock in [s for s in registered if s not in current]:
                    sel.unregister(sock)
                    del registered[sock]
                for sock, target in current.items():
                    if sock not in registered:
                        try:
                            sel.register(sock, selectors.EVENT_READ)
                        except (OSError, ValueError):
                            continue  # closed under us: close() is under way
                        registered[sock] = target
                for key, _ in sel.select():
                    if key.fileobj is wake:
                        wake.recv(4096)
                        continue
                    listener = key.fileobj
                    assert isinstance(listener, socket.socket)
                    try:
                        conn, _ = listener.accept()
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        time.sleep(0.05)  # closed under us, or out of descriptors: do not spin
                        continue
                    conn.setblocking(True)
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    threading.Thread(
                        target=self._link, args=(conn, registered[listener]), name="phase-socks-link", daemon=True
                    ).start()
        finally:
            sel.close()
            wake.close()
            with self._lock:
                pair = self._wake
            if pair is not None:
                pair[1].close()

    def _dial(self, target: Target) -> socket.socket:
        host, port = target[0], target[1]
        if self.proxy is not None:
            sock = socks5_connect(self.proxy, host, port, self.timeout)
        else:
            try:
                sock = socket.create_connection((host, port), timeout=self.timeout)
            except OSError as exc:
                raise ProxyError(f"the relay {host}:{port} is unreachable ({exc.strerror or exc})") from None
        if len(target) == 3:
            try:
                open_circuit(sock, target[2], self.timeout)
            except RelayError as exc:
                sock.close()
                raise ProxyError(f"the relay {host}:{port} opened no circuit to the node ({exc})") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _link(self, local: socket.socket, target: Target) -> None:
        try:
            remote = self._dial(target)
        except ProxyError as exc:
            with self._lock:
                self._failures[target] = str(exc)  # recorded before the close the client will notice
            local.close()
            return
        with self._lock:
            if self._closed:
                remote.close()
                local.close()
                return
            self._links.update((local, remote))
        join(local, remote)
        with self._lock:
            self._links.difference_update((local, remote))
        local.close()
        remote.close()
