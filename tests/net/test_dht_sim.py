"""The DHT at scale (issue 11): 1,000 libtorrent sessions on loopback in 4 processes, 100 Phase records and
announces, 20% of the other nodes killed at once; lookups of records and rendezvous must still succeed >= 99%.
Minutes of both cores, so it is left out of the default run:

    python -m pytest -m sim tests/net/test_dht_sim.py -s     # figures printed; bench/dht_sim.py has the method
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.sim

BENCH = Path(__file__).resolve().parents[2] / "bench" / "dht_sim.py"


def test_a_thousand_nodes_with_churn_still_find_records_and_rendezvous(tmp_path: Path) -> None:
    out = tmp_path / "sim.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--nodes", "1000", "--procs", "4", "--records", "100", "--churn", "0.2",
         "--json", str(out)],
        timeout=1800,
    )  # fmt: skip
    assert proc.returncode == 0
    result = json.loads(out.read_text())
    print(json.dumps(result, indent=1))
    assert result["killed"] == 200
    for phase in ("before", "after"):
        figures = result[phase]
        assert figures["record_ok"] >= 0.99, figures
        assert figures["announce_ok"] >= 0.99, figures
        assert figures["c_ok"] is not None and figures["c_ok"] >= 0.99, figures  # stage 1's own lookup, one try
        # a figure more than a criterion: one get_peers of the shared hash (ended 1 s after the last new answer)
        # found 88-97 of the 100 here; each announce looked up by its own hash is the success measure above
        assert int(figures["rendezvous_found"].split("/")[0]) >= 80, figures
    assert result["threads_per_session"] <= 1.5 and result["kib_per_session"] < 4096, result
