"""Where a remote job is, on one line of a terminal: ``phase submit``'s progress while it waits for a node.

Shown on stderr only when stderr is a terminal and the command is not asked for ``--json``; the line is rewritten
in place (carriage return, erase to the end of the line) and erased before any output of the job is printed, so
the job's own bytes are never mixed with it.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

from pyphase.cli.jobs import print_output

TICK_S = 0.2
_ERASE = "\r\x1b[K"


class Progress:
    """A :data:`pyphase.net.client.ProgressCallback` that draws the job's state on ``stream`` (a terminal), and an
    output callback that prints the job's output without tearing the line. Use as a context manager."""

    def __init__(self, stream: TextIO | None = None, enabled: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._lock = threading.Lock()
        self._text = "connecting"
        self._since = time.monotonic()
        self._running = False
        self._shown = False
        self._held = False
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def __enter__(self) -> Progress:
        if self.enabled:
            self._draw()
            self._ticker = threading.Thread(target=self._tick, name="phase-progress", daemon=True)
            self._ticker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        with self._lock:
            self._erase()

    def __call__(self, state: str, peer: str, detail: str = "") -> None:
        """The client's progress: the state and the peer (shortened) it is about."""
        who = peer[:12]
        text = {
            "connecting": f"connecting to {who}",
            "offered": f"offered to {who}",
            "accepted": f"accepted by {who} ({detail})" if detail else f"accepted by {who}",
            "running": f"running on {who}",
            "verifying": f"verifying {who}'s receipt",
            "failed": f"{who} failed: {detail}",
        }.get(state, f"{state} {who}")
        with self._lock:
            self._text = text[:200]
            self._since = time.monotonic()
            self._running = state == "running"
        if self.enabled:
            self._draw()

    def output(self, stream: int, data: bytes) -> None:
        """Print a piece of the job's output (stdout or stderr), then the line again."""
        with self._lock:
            self._erase()
            print_output(stream, data)
            # a line the job has not finished stays as it is: the status line comes back after its newline
            self._held = not data.endswith(b"\n")
        if self.enabled:
            self._draw()

    def _tick(self) -> None:
        while not self._stop.wait(TICK_S):
            if self._running:
                self._draw()

    def _draw(self) -> None:
        with self._lock:
            if self._stop.is_set() or self._held:
                return
            line = f"phase: {self._text}"
            if self._running:
                line += f" {time.monotonic() - self._since:.1f} s"
            self.stream.write(_ERASE + line)
            self.stream.flush()
            self._shown = True

    def _erase(self) -> None:
        if self._shown:
            self.stream.write(_ERASE)
            self.stream.flush()
            self._shown = False
