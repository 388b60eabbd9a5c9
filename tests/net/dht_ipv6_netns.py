"""Run inside a fresh network namespace (``unshare -n``, see test_dht_ipv6.py): a private DHT on IPv6 only,
plasmd listening on 0.0.0.0 (as Phase Boot's stage 2 does) and bootstrapped from IPv6 nodes only, and a client
that reads the node's record over IPv6. Prints one JSON line with what happened."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pyphase.net.dht import Dht


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True)


def main() -> None:
    sh("ip", "link", "set", "lo", "up")
    sh("ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1")  # no link out: both ends are in here
    for dev in ("v0", "v1"):
        sh("ip", "link", "set", dev, "up")
    sh("ip", "addr", "add", "10.9.0.1/24", "dev", "v0")
    hosts = [f"fd09:0:0:{i}::1" for i in range(1, 9)]  # one /64 each: libtorrent's rules for IPv6 unchanged
    for host in hosts:
        sh("ip", "-6", "addr", "add", f"{host}/64", "dev", "v0", "nodad")
    routers = [Dht(f"[{h}]:0", []) for h in hosts[:6]]
    for r in routers:
        for o in routers:
            if o is not r:
                r.add_node(o.listen_host, o.port)
    data = Path(tempfile.mkdtemp())
    boot = ",".join(f"[{r.listen_host}]:{r.port}" for r in routers[:2])
    node = subprocess.Popen(
        [sys.executable, "-m", "pyphase.daemon", "--listen", "0.0.0.0:0", "--data-dir", str(data / "n"), "--no-mdns"]
        + ["--no-sandbox", "--workers", "1", "--no-reachability", "--no-upnp", "--dht-bootstrap", boot],
        stdout=subprocess.PIPE,
        stderr=open(data / "log", "wb"),
    )
    out: dict[str, object] = {}
    try:
        assert node.stdout is not None
        out["address"] = node.stdout.readline().decode().strip()
        deadline = time.monotonic() + 40
        events: list[dict[str, object]] = []
        while time.monotonic() < deadline and not any(e["event"] == "dht_record_published" for e in events):
            time.sleep(0.5)
            events = [json.loads(line) for line in (data / "log").read_text().splitlines() if line.startswith("{")]
        out["listening"] = next((e for e in events if e["event"] == "dht_listening"), None)
        out["published"] = next((e for e in events if e["event"] == "dht_record_published"), None)
        peer_id = str(out["address"]).split("@")[0]
        from pyphase.identity import public_key_from_peer_id

        with Dht(f"[{hosts[7]}]:0", [(routers[5].listen_host, routers[5].port)], read_only=True) as client:
            client.wait_bootstrapped(5)
            try:
                record = client.get_record(public_key_from_peer_id(peer_id), timeout=15)
                out["record"] = {"peer_id": record.peer_id, "addresses": list(record.addresses)}
            except Exception as exc:
                out["record"] = f"{type(exc).__name__}: {exc}"
    finally:
        node.terminate()
        node.wait(20)
        for r in routers:
            r.close()
    print(json.dumps(out))


if __name__ == "__main__":
    os.environ["PHASE_DHT_ALLOW"] = os.environ.get("PHASE_DHT_ALLOW", "") + ",0.0.0.0/32,::/128,fd09::/16"
    main()
