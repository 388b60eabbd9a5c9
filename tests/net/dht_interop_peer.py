"""A DHT session of another libtorrent build (Debian's python3-libtorrent, 2.0.x, run by /usr/bin/python3).

Driven by tests/net/test_dht_interop.py over stdin/stdout, one JSON object a line:
``{"op": "get", "pk": HEX}`` -> the mutable item (salt phase/1) it finds; ``{"op": "peers", "ih": HEX}``
-> the peers announced; ``{"op": "put", "sk": HEX, "pk": HEX, "value": HEX}``; ``{"op": "announce",
"ih": HEX}`` (2.0.8's bindings cannot call dht_announce: an info-hash-only torrent announces instead).
Standard library and libtorrent only. It obeys the suite's DHT guard itself: loopback only.
"""

import ipaddress
import json
import os
import sys
import tempfile
import time

import libtorrent as lt


def inside(endpoint):
    host = endpoint.rpartition(":")[0]
    nets = [ipaddress.ip_network(n) for n in os.environ["PHASE_DHT_ALLOW"].split(",") if n]
    return any(ipaddress.ip_address(host) in n for n in nets)


def main():
    listen, bootstrap = sys.argv[1], sys.argv[2]
    if not all(inside(e) for e in [listen] + bootstrap.split(",")):
        sys.exit("refused: outside PHASE_DHT_ALLOW")
    s = lt.session(
        {
            "listen_interfaces": listen,
            "enable_dht": True,
            "enable_lsd": False,
            "enable_upnp": False,
            "enable_natpmp": False,
            "enable_ip_notifier": False,
            "dht_bootstrap_nodes": bootstrap,
            "alert_mask": lt.alert_category.dht | lt.alert_category.dht_operation | lt.alert_category.error,
        }
    )
    for endpoint in bootstrap.split(","):
        host, _, port = endpoint.rpartition(":")
        s.add_dht_node((host, int(port)))
    print(json.dumps({"version": lt.__version__, "port": s.listen_port()}), flush=True)
    save = tempfile.mkdtemp()
    for line in sys.stdin:
        cmd = json.loads(line)
        out = {}
        if cmd["op"] == "get":
            s.dht_get_mutable_item(bytes.fromhex(cmd["pk"]), b"phase/1")
            out = wait(
                s,
                lambda a: isinstance(a, lt.dht_mutable_item_alert) and a.authoritative,
                lambda a: {"value": as_bytes(a.item).hex(), "seq": a.seq, "sig": bytes(a.signature).hex()},
            )
        elif cmd["op"] == "peers":
            s.dht_get_peers(lt.sha1_hash(bytes.fromhex(cmd["ih"])))
            peers = set()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and len(peers) < cmd.get("want", 1):
                s.wait_for_alert(100)
                for a in s.pop_alerts():
                    if isinstance(a, lt.dht_get_peers_reply_alert):
                        peers.update(f"{h}:{p}" for h, p in a.peers())
            out = {"peers": sorted(peers)}
        elif cmd["op"] == "put":
            s.dht_put_mutable_item(
                bytes.fromhex(cmd["sk"]), bytes.fromhex(cmd["pk"]), bytes.fromhex(cmd["value"]), b"phase/1"
            )
            out = wait(s, lambda a: isinstance(a, lt.dht_put_alert), lambda a: {"seq": a.seq, "stored": a.num_success})
        elif cmd["op"] == "announce":
            atp = lt.add_torrent_params()
            atp.info_hashes = lt.info_hash_t(lt.sha1_hash(bytes.fromhex(cmd["ih"])))
            atp.save_path = save
            s.add_torrent(atp)
            out = {"announced": True, "port": s.listen_port()}
        print(json.dumps(out), flush=True)


def as_bytes(item):
    """The item's value bytes: 2.1 hands them over as bytes, 2.0.x inside a dict (or as str)."""
    if isinstance(item, dict):  # 2.0.x: {"key", "value", ...}
        item = item["value"]
    return item.encode() if isinstance(item, str) else bytes(item)


def wait(s, match, extract, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s.wait_for_alert(100)
        for a in s.pop_alerts():
            if match(a):
                return extract(a)
    return {"error": "timeout"}


if __name__ == "__main__":
    main()
