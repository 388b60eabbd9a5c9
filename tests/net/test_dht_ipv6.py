"""A node listening on every address (0.0.0.0, as Phase Boot's stage 2 does) joins the DHT over IPv6 too
(BEP 32): bootstrapped from IPv6 nodes only, its record is stored and read over IPv6. It runs in a network
namespace of its own (``unshare -n``, root), so listening on 0.0.0.0 and ``::`` reaches nothing outside."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root for a network namespace (unshare -n)"
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


@pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))
def test_node_on_every_address_publishes_over_ipv6_only_bootstrap() -> None:
    out = subprocess.run(
        ["unshare", "-n", sys.executable, str(HERE / "dht_ipv6_netns.py")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    listening = doc["listening"]
    assert listening and listening["shared_port"], doc
    port = int(doc["address"].rsplit(":", 1)[1])
    assert any(s.startswith("[fd09:") and s.endswith(f"]:{port}") for s in listening["sockets"]), listening
    assert doc["published"] and doc["published"]["stored"] >= 1, doc
    record = doc["record"]
    assert isinstance(record, dict) and record["peer_id"] == doc["address"].split("@")[0], doc
