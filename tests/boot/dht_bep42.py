"""BEP 42 round for phase-dht, run inside a network namespace of its own (``unshare -n``; the addresses are
TEST-NET-2 ones put on its loopback, which BEP 42 does not exempt as local). A bootstrap node names two nodes:
a liar whose id sits next to the info-hash but does not match its address, and an honest node whose id does
(BEP 42) but is far from it. Each names a different source. Prints phase-dht's output and who was asked, as JSON.

    dht_bep42.py PHASE_DHT PUB_KEY_FILE
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from dht_hostile import HostileNodes, compact, ok_answer  # noqa: E402

BOOT, LIAR, HONEST = "198.51.100.1", "198.51.100.66", "198.51.100.77"


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def bep42_prefix(ip: str, r: int) -> bytes:
    """The first 3 bytes BEP 42 asks of an IPv4 node's id (the third's low 3 bits are free), for random r."""
    masked = bytearray(b & m for b, m in zip(bytes(map(int, ip.split("."))), (0x03, 0x0F, 0x3F, 0xFF)))
    masked[0] |= (r & 7) << 5
    return crc32c(bytes(masked)).to_bytes(4, "big")[:3]


def main() -> None:
    tool, pub = sys.argv[1], sys.argv[2]
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    for host in (BOOT, LIAR, HONEST):
        subprocess.run(["ip", "addr", "add", f"{host}/32", "dev", "lo"], check=True)
    ports: dict[str, int] = {}

    def boot_answer(i: int, tid: bytes, query: bytes) -> list[bytes]:
        at = query.find(b"9:info_hash20:")
        target = query[at + 14 : at + 34]
        liar_id = target[:19] + bytes([target[19] ^ 1])  # as close as can be, and not what BEP 42 asks of LIAR
        honest_id = bytearray(bytes(b ^ 0xFF for b in target))  # as far as can be ...
        honest_id[:3] = bep42_prefix(HONEST, 5)  # ... with the prefix its address gives
        honest_id[19] = (honest_id[19] & 0xF8) | 5
        nodes = liar_id + compact(LIAR, ports[LIAR]) + bytes(honest_id) + compact(HONEST, ports[HONEST])
        return [ok_answer(tid, nodes=nodes)]

    boot = HostileNodes(1, boot_answer, host=BOOT)
    liar = HostileNodes(1, lambda i, t, q: [ok_answer(t, values=[compact(LIAR, 6666)])], host=LIAR)
    honest = HostileNodes(1, lambda i, t, q: [ok_answer(t, values=[compact(HONEST, 8080)])], host=HONEST)
    ports.update({LIAR: liar.ports[0], HONEST: honest.ports[0]})
    try:
        proc = subprocess.run(
            [tool, "--key", pub, "--bootstrap", f"{BOOT}:{boot.ports[0]}", "--max-queries", "2", "--timeout", "5"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        for nodes in (boot, liar, honest):
            nodes.close()
    asked = {"boot": boot.received, "liar": liar.received, "honest": honest.received}
    print(json.dumps({"returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr, "asked": asked}))


if __name__ == "__main__":
    main()
