"""pyphase.history: a node's jobs in SQLite, bounded by count and age; Private mode in memory."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from pyphase import Identity, Limits, make_manifest, make_receipt, run
from pyphase.history import HISTORY_FILE, History
from pyphase.manifest import job_id
from pyphase.runtime import Module


@pytest.fixture(scope="module")
def receipt_factory(hello_bytes: bytes):
    node = Identity.generate()
    result = run(Module(hello_bytes), b"x")

    def make() -> dict:
        manifest = make_manifest(hello_bytes, b"x")
        return make_receipt(result, job_id=job_id(manifest), nonce=manifest["nonce"], limits=Limits(), identity=node)

    return make


def test_kept_newest_first_and_found_by_prefix(tmp_path: Path, receipt_factory) -> None:
    history = History(tmp_path / HISTORY_FILE)
    receipts = [receipt_factory() for _ in range(5)]
    for r in receipts:
        history.add(r, "client-key")
    assert stat.S_IMODE((tmp_path / HISTORY_FILE).stat().st_mode) == 0o600
    assert [j["job_id"] for j in history.jobs(3)] == [r["job_id"] for r in receipts[::-1][:3]]
    assert history.receipts(1) == [receipts[-1]]
    found = history.get(receipts[1]["job_id"][7:19])  # a hex prefix, as `phase jobs show` takes
    assert found is not None and found["receipt"] == receipts[1] and found["client"] == "client-key"
    assert history.get("abc") is None and history.get("sha256:" + "f" * 64) is None
    history.close()
    reader = History.open_readonly(tmp_path)  # what `phase jobs` opens while the node runs
    assert len(reader) == 5


def test_bounded_by_count_and_by_age(tmp_path: Path, receipt_factory) -> None:
    history = History(tmp_path / HISTORY_FILE, max_jobs=10, max_age_s=3600)
    for i in range(300):
        history.add(receipt_factory(), "c", finished=1_000_000.0 + i)
    assert len(history) <= 10 + 64  # pruned every 64 inserts
    history.prune(now=1_000_000.0 + 299)
    assert len(history) == 10
    history.prune(now=1_000_000.0 + 295 + 3600)  # older than an hour goes: 295..299 stay
    assert len(history) == 5


def test_private_mode_keeps_it_in_memory(tmp_path: Path, receipt_factory) -> None:
    history = History(None)
    history.add(receipt_factory(), "c")
    assert len(history) == 1 and not list(tmp_path.iterdir())
    with pytest.raises(FileNotFoundError, match="no job history"):
        History.open_readonly(tmp_path)


def test_rows_added_without_commit_reach_readers_at_commit_or_close(tmp_path: Path, receipt_factory) -> None:
    """A node adds rows with ``commit=False`` and commits them together (pyphase.api.services): another connection
    (what ``phase jobs`` opens) sees none of them until then, and closing commits what is pending instead of rolling
    it back."""
    history = History(tmp_path / HISTORY_FILE)
    history.add(receipt_factory(), "client-key")
    pending = [receipt_factory() for _ in range(3)]
    for r in pending[:2]:
        history.add(r, "client-key", commit=False)
    reader = History.open_readonly(tmp_path)
    assert len(reader) == 1 and len(history) == 3  # the writer's own connection sees its rows at once
    history.commit()
    assert [j["job_id"] for j in reader.jobs(2)] == [pending[1]["job_id"], pending[0]["job_id"]] and len(reader) == 3
    history.add(pending[2], "client-key", commit=False)
    history.close()
    assert reader.receipts(1) == [pending[2]] and len(reader) == 4
    reader.close()
