"""The API's listening sockets and files, with no HTTP stack: plasmd binds the API's port at start-up and loads
aiohttp (about 8 MB) only when the first connection arrives (:class:`pyphase.api.services.NodeServices`)."""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
from pathlib import Path

TOKEN_FILE = "api_token"
API_FILE = "api"


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def write_token(data_dir: Path) -> str:
    """A fresh token in ``DATA_DIR/api_token`` (mode 0600, replaced atomically)."""
    token = secrets.token_urlsafe(32)
    tmp = data_dir / f".{TOKEN_FILE}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.replace(tmp, data_dir / TOKEN_FILE)
    return token


def listen_sockets(host: str, port: int, backlog: int) -> tuple[list[socket.socket], str]:
    """Non-blocking listening TCP sockets for every address ``host`` names (all of them for ""), as asyncio's
    ``create_server`` binds them, and the URL of the first; port 0 picks one free port for all."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(socks) > 1:
                address = (address[0], socks[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    bound = socks[0].getsockname()[1]
    return socks, f"http://{'[' + host + ']' if ':' in host else host}:{bound}"
