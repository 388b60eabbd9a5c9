"""``phase jobs`` and ``phase receipts`` read a node's history, while it runs and after it stopped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from pyphase import Client


def phase(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pyphase", *args], capture_output=True, text=True, timeout=60)


def test_jobs_and_receipts_listed_and_shown(
    api_nodes: Callable[..., list[Any]], hello_bytes: bytes, tmp_path: Path
) -> None:
    (api,) = api_nodes()
    data_dir = str(api.node.data_dir)
    with Client(peers=[api.node.address]) as client:
        results = [client.submit(hello_bytes, text) for text in (b"one", b"two", b"three")]
    listing = phase("jobs", "--data-dir", data_dir)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].split()[:4] == ["FINISHED", "JOB", "STATUS", "EXIT"] and len(lines) == 4
    assert [line.split()[1] for line in lines[1:]] == [r.receipt["job_id"][7:23] for r in reversed(results)]
    api.node.stop()  # the history outlives the node
    shown = phase("jobs", "show", results[0].receipt["job_id"][7:17], "--data-dir", data_dir)
    assert shown.returncode == 0, shown.stderr
    entry = json.loads(shown.stdout)
    assert entry["receipt"] == results[0].receipt and entry["status"] == "ok"
    receipt = phase("receipts", "show", results[1].receipt["job_id"], "--data-dir", data_dir)
    (tmp_path / "r.json").write_text(receipt.stdout)
    (tmp_path / "out").write_bytes(b"owt")
    verified = phase(
        "verify",
        str(tmp_path / "r.json"),
        "--stdout",
        str(tmp_path / "out"),
        "--signer",
        api.node.address.split("@")[0],
    )
    assert verified.returncode == 0, verified.stderr
    receipts = json.loads(phase("receipts", "--json", "--limit", "2", "--data-dir", data_dir).stdout)
    assert receipts == [results[2].receipt, results[1].receipt]


def test_history_cli_errors(tmp_path: Path) -> None:
    missing = phase("jobs", "--data-dir", str(tmp_path))
    assert missing.returncode == 1 and "no job history" in missing.stderr
    assert phase("jobs", "show", "--data-dir", str(tmp_path)).returncode == 2
    assert phase("receipts", "list", "abcdef12").returncode == 2
