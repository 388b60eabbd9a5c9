"""Long jobs yield the CPU: a sandbox worker that has used more than a threshold of CPU runs at a lower priority.

A node's event loop, its I/O threads and its clients' short jobs need a core for a millisecond at a time; a
stranger's job that spins until its timeout wants one for seconds. Lowering every worker's priority (``job_nice``)
made the short jobs wait behind everything else on the host too, so only a worker that has itself used more than
``after_ms`` of CPU is demoted: its nice value goes up by ``NICE_STEP`` (0 -> 10: about a ninth of a normal task's
share of a contended core). Not to the lowest (nice 19, ``SCHED_IDLE``): a worker still has to run to end its job,
to finish writing its output, or to die when it is stopped, and an unprivileged node cannot raise it back; at the
lowest, on a busy host, a stopped worker took 0.3-4.6 s to exit, holding its slot, against 30-160 ms at nice 10.
Workers are single-use and forked by the fork server, which keeps its priority, so the next job's worker starts at
normal priority again. Children of the fork server are the only processes touched (its compile helpers too:
compiling a big module is the same kind of long CPU work).

The watcher costs nothing while every job is short: it wakes only once a job has been running for ``after_ms``
(CPU time cannot exceed the time spent running), then every ``after_ms / 2`` while such a job runs.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Callable

_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
NICE_STEP = 10  # added to a demoted worker's nice value (see the module's docstring)


def cpu_ns(pid: int) -> int | None:
    """CPU time ``pid``'s main thread has used, in ns (None: gone, or no /proc)."""
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    try:  # a kernel without schedstats: clock ticks of user and system time
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // _TICKS_PER_S
    except (OSError, ValueError, IndexError):
        return None


def children(pid: int) -> list[int]:
    """The pids of ``pid``'s children (empty when it is gone)."""
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids += [int(k) for k in f.read().split()]
    except OSError:
        pass
    return kids


def demote(pid: int) -> bool:
    """Add ``NICE_STEP`` to ``pid``'s nice value (at most 19). False: it is gone, not ours, or already at 19."""
    try:
        nice = os.getpriority(os.PRIO_PROCESS, pid)
        if nice >= 19:
            return False
        os.setpriority(os.PRIO_PROCESS, pid, min(19, nice + NICE_STEP))
        return True
    except OSError:
        return False


class Demoter:
    """Demotes the children of a fork server (``server_pid()``: its current pid) that have used ``after_ms`` of CPU,
    while :meth:`started` jobs run. ``demoted``: how many were demoted so far."""

    def __init__(self, server_pid: Callable[[], int], after_ms: int) -> None:
        if after_ms <= 0:
            raise ValueError(f"after_ms must be positive, got {after_ms}")
        self._server_pid = server_pid
        self._after_ns = after_ms * 1_000_000
        self._after_s = after_ms / 1e3
        self._runs: dict[int, float] = {}  # token -> when the job started (monotonic)
        self._tokens = 0
        self._seen: set[int] = set()  # pids already demoted (pruned to the server's children)
        self._cond = threading.Condition()
        self._closed = False
        self.demoted = 0
        self._thread = threading.Thread(target=self._watch, name="phase-sandbox-demote", daemon=True)
        self._thread.start()

    def started(self) -> int:
        """A job is about to run; the token to give :meth:`ended`."""
        with self._cond:
            self._tokens += 1
            self._runs[self._tokens] = time.monotonic()
            if len(self._runs) == 1:
                self._cond.notify()  # the watcher waits for no deadline while nothing runs
            return self._tokens

    def ended(self, token: int) -> None:
        with self._cond:
            self._runs.pop(token, None)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not threading.current_thread():
            self._thread.join(5.0)

    def _watch(self) -> None:
        with self._cond:
            while not self._closed:
                if not self._runs:
                    self._cond.wait()
                    continue
                due = min(self._runs.values()) + self._after_s
                now = time.monotonic()
                if due > now:
                    self._cond.wait(due - now)
                    continue
                self._cond.release()
                try:
                    self.scan()
                finally:
                    self._cond.acquire()
                self._cond.wait(max(0.01, self._after_s / 2))

    def scan(self) -> None:
        """Demote every child of the fork server over the threshold (each once)."""
        kids = children(self._server_pid())
        self._seen.intersection_update(kids)
        for pid in kids:
            if pid in self._seen:
                continue
            used = cpu_ns(pid)
            if used is not None and used >= self._after_ns and demote(pid):
                self._seen.add(pid)
                self.demoted += 1
