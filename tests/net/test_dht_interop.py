"""Interop: Debian's own libtorrent build (python3-libtorrent 2.0.x, another version of another build, run by
/usr/bin/python3 in a separate process) joins our private DHT, reads our records and announces, and ours read its."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dht_support import dht_host, endpoints, private_dht  # noqa: E402

from pyphase.identity import Identity
from pyphase.net import dht, records

SYSTEM_PYTHON = "/usr/bin/python3"


def _debian_libtorrent() -> str:
    if not shutil.which(SYSTEM_PYTHON):
        pytest.fail("no /usr/bin/python3 (bash .ci/setup --test installs python3-libtorrent)")
    out = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import libtorrent; print(libtorrent.__version__)"], capture_output=True, text=True
    )
    if out.returncode != 0:
        pytest.fail(f"Debian's python3-libtorrent is missing (bash .ci/setup --test installs it): {out.stderr}")
    return out.stdout.strip()


class _Peer:
    def __init__(self, listen: str, bootstrap: str) -> None:
        self.proc = subprocess.Popen(
            [SYSTEM_PYTHON, str(Path(__file__).with_name("dht_interop_peer.py")), listen, bootstrap],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.hello = self._read()

    def _read(self) -> dict:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, "the Debian libtorrent peer exited"
        return json.loads(line)

    def ask(self, **cmd: object) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def test_debian_libtorrent_reads_and_writes_in_our_dht() -> None:
    version = _debian_libtorrent()
    import libtorrent

    assert version.split(".")[:2] != libtorrent.__version__.split(".")[:2]  # truly another build
    ours, theirs = Identity.generate(), Identity.generate()
    with private_dht(8) as nodes:
        host = dht_host()
        peer = _Peer(f"{host}:0", ",".join(f"{h}:{p}" for h, p in endpoints(nodes[:3])))
        try:
            # our record and announce, read by 2.0.x
            value = records.encode_value(["127.0.0.1:7465"], ["wasm3/x"], {"arch": "x86_64"})
            seq, stored = nodes[0].put_record(ours, value)
            assert stored > 0
            got = peer.ask(op="get", pk=ours.public_key.hex())
            assert bytes.fromhex(got["value"]) == value and got["seq"] == seq
            records.verify_record(ours.public_key, value, got["seq"], bytes.fromhex(got["sig"]))
            nodes[1].announce(dht.rendezvous_hash(), 7465)
            time.sleep(0.3)
            assert f"{nodes[1].listen_host}:7465" in peer.ask(op="peers", ih=dht.rendezvous_hash().hex())["peers"]
            # its record and announce, read by 2.1 and verified with PyNaCl
            theirs_value = records.encode_value(["127.0.0.2:7000"], ["other/build"], {})
            put = peer.ask(
                op="put", sk=records.expanded_secret(theirs).hex(), pk=theirs.public_key.hex(), value=theirs_value.hex()
            )
            assert put["stored"] > 0
            record = nodes[5].get_record(theirs.public_key)
            assert record.addresses == ("127.0.0.2:7000",) and record.engines == ("other/build",)
            ih = dht.rendezvous_hash("interop")
            announced = peer.ask(op="announce", ih=ih.hex())
            deadline = time.monotonic() + 20
            while (host, announced["port"]) not in nodes[6].get_peers(ih, timeout=2):
                assert time.monotonic() < deadline, "2.0.x's announce never reached our DHT"
        finally:
            peer.close()
