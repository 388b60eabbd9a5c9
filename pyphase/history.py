"""A node's job history: the jobs it ran and the receipts it signed, in SQLite, bounded by count and age.

``DATA_DIR/history.sqlite`` (WAL, so ``phase jobs`` and ``phase receipts`` can read while the node
writes); a Private-mode (ephemeral) node keeps it in memory only. Each row is one job as its receipt
tells it, plus who asked (the client's CURVE key) and when it finished. The oldest rows go first once
there are more than ``max_jobs`` or they are older than ``max_age_s``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


HISTORY_FILE = "history.sqlite"
DEFAULT_MAX_JOBS = 10_000
DEFAULT_MAX_AGE_S = 7 * 86400
_PRUNE_EVERY = 64  # inserts between two pruning passes (the bound is exceeded by at most this)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id    TEXT NOT NULL,
    finished  REAL NOT NULL,
    status    TEXT NOT NULL,
    exit_code INTEGER NOT NULL,
    wall_us   INTEGER NOT NULL,
    module    TEXT NOT NULL,
    client    TEXT NOT NULL,
    receipt   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_job_id ON jobs (job_id);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished);
"""


def _iso(t: float) -> str:
    from pyphase.receipt import timestamp  # here: auto's ModuleRuns (phase run) needs no receipts

    return timestamp(datetime.fromtimestamp(t, timezone.utc))


class History:
    """The jobs a node ran, newest first. ``path=None``: in memory (Private mode)."""

    def __init__(
        self,
        path: str | Path | None,
        max_jobs: int = DEFAULT_MAX_JOBS,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        *,
        readonly: bool = False,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.max_jobs = max_jobs
        self.max_age_s = max_age_s
        if self.path is None:
            self.db = sqlite3.connect(":memory:", check_same_thread=False)
        elif readonly:
            self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        else:
            self.db = sqlite3.connect(self.path, check_same_thread=False)
            self.path.chmod(0o600)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")  # a crash may lose the last rows, never corrupt
        if not readonly:
            self.db.executescript(_SCHEMA)
        self._inserts = 0

    @classmethod
    def open_readonly(cls, data_dir: str | Path) -> History:
        """A node's history file for reading (``phase jobs``); ``FileNotFoundError`` when it has none."""
        path = Path(data_dir) / HISTORY_FILE
        if not path.exists():
            raise FileNotFoundError(f"no job history at {path} (has a node run there with history on?)")
        return cls(path, readonly=True)

    def add(self, receipt: dict[str, Any], client: str, finished: float | None = None, *, commit: bool = True) -> None:
        """Record one job by its signed receipt. ``commit=False`` leaves the row to the next :meth:`commit`: a
        commit writes the WAL (≈ 0.1 ms here), which a node's event loop does once for many jobs; until then
        only this connection sees the row."""
        self.db.execute(
            "INSERT INTO jobs (job_id, finished, status, exit_code, wall_us, module, client, receipt) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                receipt["job_id"],
                finished or time.time(),
                receipt["status"],
                receipt["exit_code"],
                receipt["wall_us"],
                receipt["module"],
                client,
                json.dumps(receipt, separators=(",", ":")),
            ),
        )
        self._inserts += 1
        if self._inserts % _PRUNE_EVERY == 0:
            self.prune()
        elif commit:
            self.db.commit()

    def commit(self) -> None:
        """Write the rows added with ``commit=False`` (readers in other processes see them from then on)."""
        self.db.commit()

    def prune(self, now: float | None = None) -> int:
        """Drop rows beyond ``max_jobs`` or older than ``max_age_s``; return how many went."""
        cutoff = (now or time.time()) - self.max_age_s
        cur = self.db.execute(
            "DELETE FROM jobs WHERE finished < ? OR seq <= (SELECT COALESCE(MAX(seq), 0) FROM jobs) - ?",
            (cutoff, self.max_jobs),
        )
        self.db.commit()
        return cur.rowcount

    def __len__(self) -> int:
        count: int = self.db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
        return count

    def jobs(self, limit: int = 50, *, with_receipts: bool = True) -> list[dict[str, Any]]:
        """The newest ``limit`` jobs."""
        rows = self.db.execute(
            "SELECT job_id, finished, status, exit_code, wall_us, module, client, receipt "
            "FROM jobs ORDER BY seq DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [self._row(row, with_receipts) for row in rows]

    def get(self, job_id: str) -> dict[str, Any] | None:
        """The job whose receipt's ``job_id`` is ``job_id`` or starts with it (at least 8 characters)."""
        if len(job_id) < 8:
            return None
        if not job_id.startswith("sha256:"):
            job_id = "sha256:" + job_id
        row = self.db.execute(
            "SELECT job_id, finished, status, exit_code, wall_us, module, client, receipt "
            "FROM jobs WHERE job_id >= ? AND job_id < ? ORDER BY seq DESC LIMIT 1",
            (job_id, job_id + "\uffff"),
        ).fetchone()
        return self._row(row, True) if row else None

    def receipts(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT receipt FROM jobs ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
        return [json.loads(r[0]) for r in rows]

    @staticmethod
    def _row(row: tuple[Any, ...], with_receipt: bool) -> dict[str, Any]:
        job_id, finished, status, exit_code, wall_us, module, client, receipt = row
        out = {
            "job_id": job_id,
            "finished_at": _iso(finished),
            "status": status,
            "exit_code": exit_code,
            "wall_us": wall_us,
            "module": module,
            "client": client,
        }
        if with_receipt:
            out["receipt"] = json.loads(receipt)
        return out

    def close(self) -> None:
        """Commit what is pending (closing alone would roll it back) and close the file."""
        if self.db.in_transaction:
            self.db.commit()
        self.db.close()


_MODULE_RUNS_SCHEMA = """
CREATE TABLE IF NOT EXISTS module_runs (
    module  BLOB PRIMARY KEY,
    wall_us INTEGER NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS module_runs_updated ON module_runs (updated);
"""


class ModuleRuns:
    """How long the longest job of each module ran on wasm3, kept beside the job history (same file, own table) so that
    ``auto`` (pyphase.engines) still knows a long module after a restart. ``path=None``: in memory. At most
    ``max_modules`` rows: the least recently updated go first."""

    def __init__(self, path: str | Path | None, max_modules: int = 4096) -> None:
        self.path = Path(path) if path is not None else None
        self.max_modules = max_modules
        self._lock = threading.Lock()
        if self.path is None:
            self.db = sqlite3.connect(":memory:", check_same_thread=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.db = sqlite3.connect(self.path, check_same_thread=False, timeout=5)
            self.path.chmod(0o600)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_MODULE_RUNS_SCHEMA)

    def get(self, module: bytes) -> int | None:
        """The wall time (µs) of the module's longest recorded wasm3 job, or None."""
        with self._lock:
            row = self.db.execute("SELECT wall_us FROM module_runs WHERE module = ?", (module,)).fetchone()
        return None if row is None else int(row[0])

    def put(self, module: bytes, wall_us: int) -> None:
        with self._lock:
            self.db.execute(
                "INSERT INTO module_runs (module, wall_us, updated) VALUES (?, ?, ?) "
                "ON CONFLICT (module) DO UPDATE SET wall_us = excluded.wall_us, updated = excluded.updated",
                (module, wall_us, time.time()),
            )
            self.db.execute(
                "DELETE FROM module_runs WHERE module IN "
                "(SELECT module FROM module_runs ORDER BY updated DESC LIMIT -1 OFFSET ?)",
                (self.max_modules,),
            )
            self.db.commit()

    def close(self) -> None:
        with self._lock:
            self.db.close()
