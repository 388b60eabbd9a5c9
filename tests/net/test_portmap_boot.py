"""Phase Boot sources behind a home router with UPnP (the NAT lab, tests/net/natlab.py): `phase boot serve --dht`
and `plasmd --boot-store` have the router forward their HTTP port, announce the external port under the release
key's info-hash, and a machine on the WAN that looks the hash up (as stage 1 does) fetches the signed manifest
through the router. With --no-upnp nothing is mapped and the LAN port is announced, unreachable from the WAN."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from natlab import NatLab, natlab_skip_reason
from net_support import NodeProc
from pyphase.boot import keys
from pyphase.boot.dht import boot_info_hash
from pyphase.cli import boot as boot_cli

pytestmark = pytest.mark.skipif(natlab_skip_reason() is not None, reason=natlab_skip_reason() or "")

SERVE_PORT = 8471
NODE_BOOT_PORT = 8472
NODE_PORT = 7471

# On the WAN: the sources announced under an info-hash (a read-only DHT client), then GET the manifest from each.
LOOKUP = """
import json, sys, urllib.request
from pyphase.net.dht import client_dht
info_hash, bootstrap, listen, want = bytes.fromhex(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
with client_dht(bootstrap, listen) as dht:
    found = dht.get_peers(info_hash, timeout=10, want=want)
out = {}
for host, port in found:
    try:
        out[f"{host}:{port}"] = len(urllib.request.urlopen(f"http://{host}:{port}/boot/manifest.json", timeout=5).read())
    except OSError as exc:
        out[f"{host}:{port}"] = type(exc).__name__
print(json.dumps(out))
"""


def _store(tmp_path: Path) -> tuple[Path, bytes]:
    identity, _ = keys.generate(tmp_path / "release.key")
    (tmp_path / "blob").write_bytes(b"kernel bytes" * 100)
    store = tmp_path / "store"
    signed = boot_cli.main(
        ["sign", "--key", str(tmp_path / "release.key"), "--kernel", str(tmp_path / "blob"), "--initramfs",
         str(tmp_path / "blob"), "--release", "1", "--expires-in", "1d", "--cmdline", "console=ttyS0", "--store", str(store)]
    )  # fmt: skip
    assert signed == 0
    return store, boot_info_hash(identity.public_key)


def _events(path: Path, name: str) -> list[dict]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == name:
            out.append(event)
    return out


def _wait(ok, timeout: float, why) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, why()
        time.sleep(0.2)


def _serve(host, store: Path, port: int, bootstrap: str, out: Path, lab: NatLab, *extra: str) -> None:
    with out.open("wb") as sink:
        host.popen(
            [str(Path(sys.executable).with_name("phase")), "boot", "serve", str(store), "--listen",
             f"{host.ip}:{port}", "--dht-bootstrap", bootstrap, "--quiet", *extra],
            stdout=sink, stderr=subprocess.STDOUT, env=lab.env(),
        )  # fmt: skip


def test_boot_sources_behind_upnp_map_their_http_port_and_announce_it(natlab: NatLab, tmp_path: Path) -> None:
    lab = natlab
    router = lab.router("rb", upnp=True)
    serve_host, node_host, quiet_host = (lab.host(n, behind=router) for n in ("hs", "hn", "hq"))
    client = lab.host("cb")
    bootstrap = lab.dht_bootstrap()
    store, info_hash = _store(tmp_path)
    out, quiet_out = tmp_path / "serve.out", tmp_path / "quiet.out"
    _serve(serve_host, store, SERVE_PORT, bootstrap, out, lab)
    _serve(quiet_host, store, SERVE_PORT + 10, bootstrap, quiet_out, lab, "--no-upnp")
    node = NodeProc(
        tmp_path / "node",
        node_host.ip,
        sandbox=False,
        prefix=tuple(node_host.exec_prefix),
        extra=("--dht-bootstrap", bootstrap, "--no-api", "--no-reachability", "--boot-store", str(store),
               "--boot-listen", f"{node_host.ip}:{NODE_BOOT_PORT}"),
        env={"PHASE_DHT_ALLOW": lab.env()["PHASE_DHT_ALLOW"]},
    )  # fmt: skip
    node.port = NODE_PORT
    node.start()
    try:
        wan = router.wan_ip
        serve_at, node_at = f"{wan}:{SERVE_PORT}", f"{wan}:{NODE_BOOT_PORT}"

        def mapped(events: list[dict]) -> set[str]:
            return {e["external"] for e in events if e.get("what") == "phase-boot"}

        _wait(lambda: serve_at in mapped(_events(out, "port_mapping_obtained")), 30, out.read_text)
        _wait(lambda: node_at in mapped(node.events("port_mapping_obtained")), 30, node.log_tail)
        assert f"{serve_host.ip}" in router.mappings() and f"{node_host.ip}" in router.mappings()
        # on the WAN: phase boot serve found under the release key's hash at the router's address, and it serves
        manifest = len((store / "boot" / "manifest.json").read_bytes())
        found: dict = {}
        for _ in range(10):
            proc = client.run([sys.executable, "-c", LOOKUP, info_hash.hex(), bootstrap, f"{client.ip}:0", "1"],
                              env=lab.env(), timeout=60)  # fmt: skip
            found = json.loads(proc.stdout)
            if found.get(serve_at) == manifest:
                break
            time.sleep(1)
        assert found.get(serve_at) == manifest, (found, out.read_text())
        # --no-upnp: announced (its LAN port), nothing mapped
        _wait(lambda: bool(_events(quiet_out, "boot_dht_announced")), 30, quiet_out.read_text)
        assert not _events(quiet_out, "port_mapping_obtained") and quiet_host.ip not in router.mappings()
        # plasmd --boot-store: the router forwards its boot port, and its announce names the external port
        # (its first announce follows its first record put, which a DHT this small makes slow)
        url = f"http://{node_at}/boot/manifest.json"
        fetched = client.run(
            [sys.executable, "-c", f"import urllib.request; print(len(urllib.request.urlopen({url!r}).read()))"]
        )
        assert int(fetched.stdout) == manifest
        announced = node.wait_event_count("dht_announced", 2, timeout=60)
        boot = [e for e in announced if "phase-boot" in e["hashes"]]
        assert boot and boot[0]["port"] == NODE_BOOT_PORT, announced
    finally:
        node.stop()
