"""A TCP forwarder that keeps a copy of every byte it passes, both ways: put in front of a relay, it sees
what the relay is given and what it forwards (the same bytes, to the other side of a circuit).

In a test process: ``Tap(("HOST", PORT))`` listens on 127.0.0.1 (``.port``), copies into ``.seen``;
``delay=S`` holds each new connection S seconds before it is joined (a relay that far away).
As a program (inside a NAT lab namespace): ``relay_tap.py LISTEN_HOST:PORT TARGET_HOST:PORT DUMP_FILE``.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from typing import BinaryIO


class Tap:
    """A TCP forwarder in front of the relay that keeps a copy of every byte both ways: what the relay is given
    and what it forwards (it forwards the same bytes to the other side of a circuit)."""

    def __init__(
        self,
        target: tuple[str, int],
        listen: tuple[str, int] = ("127.0.0.1", 0),
        dump: BinaryIO | None = None,
        delay: float = 0.0,
    ) -> None:
        self.target = target
        self.delay = delay
        self.listener = socket.create_server(listen)
        self.port = self.listener.getsockname()[1]
        self.seen = bytearray()
        self.dump = dump
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._join, args=(conn,), daemon=True).start()

    def _join(self, conn: socket.socket) -> None:
        time.sleep(self.delay)
        try:
            up = socket.create_connection(self.target)
        except OSError:
            conn.close()
            return
        for a, b in ((conn, up), (up, conn)):
            threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                with self.lock:
                    self.seen += data
                    if self.dump is not None:
                        self.dump.write(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


def main() -> None:
    listen, target, dump = sys.argv[1:4]
    host, port = listen.rsplit(":", 1)
    target_host, target_port = target.rsplit(":", 1)
    with open(dump, "ab", buffering=0) as out:
        Tap((target_host, int(target_port)), (host, int(port)), out)
        threading.Event().wait()


if __name__ == "__main__":
    main()
