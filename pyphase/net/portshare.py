"""One port number P for ``phase/1`` (TCP), the DHT (UDP) and the record query (UDP, on the DHT's socket's port).

libtorrent opens a TCP listener beside every UDP socket it listens with, whatever its settings say of incoming
TCP (``session_impl::setup_listener`` in 2.0 and 2.1: every ``listen_interfaces`` entry is ``accept_incoming``;
a TCP bind that fails gives up the UDP socket too). So a node starts its DHT session first, on P, and then,
in this process (Linux):

* :func:`release_tcp` shuts down libtorrent's listening TCP sockets on P. Its acceptor reports
  ``EINVAL``, posts ``listen_failed_alert`` (``sock_accept``) and stops accepting; its DHT keeps its UDP
  socket. The shut-down socket keeps P bound but no longer listens, and both it and ZeroMQ's listener set
  ``SO_REUSEADDR``, so ``phase/1``'s ZeroMQ then binds TCP P.
* :func:`record_query_sockets` puts, beside each of libtorrent's UDP sockets on P, a socket of ours on the
  same address and device in one ``SO_REUSEPORT`` group, with a classic BPF program
  (``SO_ATTACH_REUSEPORT_CBPF``) that hands datagrams starting ``phas`` (``phase/1 record?``) to ours and
  everything else (KRPC messages are bencoded dictionaries: ``d...e``) to libtorrent's. Answers go out from
  P, so a client's NAT lets them in and one router mapping of UDP P serves both.

Anything this cannot do raises ``OSError``; the node then keeps the DHT on a port of its own.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct

__all__ = ["process_sockets", "record_query_sockets", "release_tcp"]

SO_ATTACH_REUSEPORT_CBPF = 51  # <asm-generic/socket.h>; Python's socket module does not name it
_IFNAMSIZ = 16
# A = the payload's first 32-bit word; A == "phas" ? socket 1 (ours, joined second) : socket 0 (libtorrent's)
_STEER = [
    (0x20, 0, 0, 0),  # BPF_LD | BPF_W | BPF_ABS, k = 0
    (0x15, 0, 1, int.from_bytes(b"phas", "big")),  # BPF_JMP | BPF_JEQ | BPF_K
    (0x06, 0, 0, 1),  # BPF_RET | BPF_K
    (0x06, 0, 0, 0),
]


def process_sockets(port: int, kind: socket.SocketKind) -> list[socket.socket]:
    """Duplicates of this process's IPv4/IPv6 sockets of ``kind`` bound to ``port`` (the caller closes them)."""
    found = []
    seen: set[int] = set()  # socket inodes: a listed number may be our own duplicate by the time it is read
    for name in os.listdir("/proc/self/fd"):
        try:
            fd = os.dup(int(name))
        except (OSError, ValueError):
            continue
        inode = os.fstat(fd).st_ino
        if inode in seen:
            os.close(fd)
            continue
        seen.add(inode)
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            os.close(fd)
            continue
        try:
            ok = sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == kind
            ok = ok and sock.getsockname()[1] == port
        except OSError:
            ok = False
        if ok:
            found.append(sock)
        else:
            sock.close()
    return found


def release_tcp(port: int) -> int:
    """Shut down this process's listening TCP sockets on ``port`` (libtorrent's unused listener); -> how many."""
    released = 0
    for sock in process_sockets(port, socket.SOCK_STREAM):
        with sock:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                sock.shutdown(socket.SHUT_RDWR)
                released += 1
    return released


def record_query_sockets(port: int) -> list[socket.socket]:
    """Our non-blocking UDP sockets beside each of this process's (libtorrent's) UDP sockets on ``port``,
    receiving only datagrams that start ``phas``; raises ``OSError`` when there is none or the kernel refuses."""
    theirs = process_sockets(port, socket.SOCK_DGRAM)
    if not theirs:
        raise OSError(f"no UDP socket of the DHT on port {port} to share")
    program = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *ins) for ins in _STEER))
    fprog = struct.pack("HP", len(_STEER), ctypes.addressof(program))
    ours: list[socket.socket] = []
    try:
        for sock in theirs:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            mine = socket.socket(sock.family, socket.SOCK_DGRAM)
            ours.append(mine)
            mine.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            device = sock.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, _IFNAMSIZ).split(b"\0")[0]
            if device:  # libtorrent binds each socket to its address's device: one reuseport group needs both
                mine.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device)
            if sock.family == socket.AF_INET6:
                mine.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            mine.bind(sock.getsockname())
            mine.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
            mine.setblocking(False)
    except OSError:
        for mine in ours:
            mine.close()
        raise
    finally:
        for sock in theirs:
            sock.close()
    return ours
