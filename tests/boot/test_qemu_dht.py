"""Phase Boot, Internet mode, in QEMU: no seeds anywhere; stage 1 finds its source on a private Mainline DHT.

The host runs 8 libtorrent DHT nodes on 127.0.0.1 (tests/boot/dht_net.py) and a ``plasmd --boot-store`` that
announces its store under the release key's info-hash through them. The guest gets only ``phase.dht=`` with
two of those nodes as 10.0.2.2:PORT (QEMU's user network), runs stage 1's own KRPC lookup (phase-dht), fetches,
verifies, kexecs, and stage 2's plasmd answers a job from the host.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyphase.boot import keys
from pyphase.boot.dht import boot_info_hash

from .dht_net import loopback_dht
from .qemu import Qemu, free_port
from .test_qemu import ADDRESS_RE, ECHO_WAT, HOST, publish, qemu_args

pytestmark = pytest.mark.boot


def _wait_event(log: Path, proc: subprocess.Popen, match, timeout: float = 60) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for line in log.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if match(event):
                return event
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        time.sleep(0.2)
    raise AssertionError(log.read_text(errors="replace")[-3000:])


def test_internet_mode_finds_its_source_on_the_dht_and_boots_to_a_node(
    boot_kit: dict, stage2: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    publish(tmp_path / "store", boot_kit["key"], boot_kit["kernel"], stage2, cmdline="console=ttyS0 panic=-1 quiet")
    (tmp_path / "store" / "boot" / "release.pub").write_text(keys.public_key_text(boot_kit["key"].public_key))
    info_hash = boot_info_hash(boot_kit["key"].public_key).hex()
    fwd = free_port()
    log = tmp_path / "plasmd.log"
    with loopback_dht(8) as nodes:
        bootstrap = ",".join(f"{h}:{p}" for h, p in nodes[:2])
        with log.open("wb") as err:
            source = subprocess.Popen(
                [sys.executable, "-m", "pyphase.daemon", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "src"),
                 "--no-sandbox", "--no-mdns", "--ephemeral", "--boot-store", str(tmp_path / "store"),
                 "--boot-listen", "127.0.0.1:0", "--dht-bootstrap", bootstrap, "--dht-listen", "127.0.0.1:0"],
                stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip
        try:
            serving = _wait_event(log, source, lambda e: e.get("event") == "boot_serving")
            boot_port = int(serving["url"].rsplit(":", 1)[1])
            _wait_event(log, source, lambda e: e.get("hashes", {}).get("phase-boot") == info_hash)
            guest_dht = ",".join(f"{HOST}:{p}" for _, p in nodes[2:4])  # not the nodes the source joined through
            marks = (
                "PHASE-BOOT: stage 1 up",
                "PHASE-BOOT: DHT: 1 source after",
                f"PHASE-BOOT: sources: http://{HOST}:{boot_port}\n",
                "PHASE-BOOT: signature ok",
                "PHASE-BOOT: kexec loaded",
                "PHASE-NODE: stage 2 up",
                "PHASE-NODE: plasmd running",
            )
            args = qemu_args(boot_kit, f"phase.mode=internet phase.dht={guest_dht}", memory="1024")
            args[-1] += f",hostfwd=tcp:127.0.0.1:{fwd}-:7000"
            q = Qemu(args, marks)
            try:
                q.wait_for("PHASE-NODE: plasmd running", 420)
                m = q.wait_for_match(ADDRESS_RE, 30)
                assert m, q.text[-3000:]
                wat = request.getfixturevalue("wat")
                from pyphase import Client

                with Client([f"{m.group(1)}@127.0.0.1:{fwd}"], connect_timeout=30) as client:
                    result = client.submit(wat(ECHO_WAT), b"booted from the DHT", timeout=180, retries=2)
            finally:
                r = q.close()
        finally:
            source.terminate()
            source.wait(30)
    for mark in marks:
        assert mark in r, r.tail()
    assert "PHASE-BOOT FAIL" not in r, r.tail()
    assert (result.status, result.stdout) == ("ok", b"booted from the DHT"), result
