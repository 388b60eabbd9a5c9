"""phase-dht (stage 1's Mainline DHT lookup, csrc/boot/dht.c) against a private libtorrent DHT on loopback,
against `phase boot serve --dht-bootstrap`, and against hostile DHT nodes (built with ASan/UBSan too)."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyphase.boot.dht import boot_info_hash
from pyphase.cli import boot as boot_cli
from pyphase.boot import keys
from pyphase.identity import Identity

from .conftest import CSRC_BOOT, SODIUM_BOOT, run_tool
from .dht_hostile import HostileNodes, benc, compact, ok_answer
from .qemu import free_port
from .services import DnsServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "net"))
from dht_support import private_dht  # noqa: E402

STATS = re.compile(r"phase-dht: (\d+) sources? after (\d+) queries \((\d+) answered, (\d+) malformed\) in (\d+) ms")


def _lookup(
    tool: Path, pub: Path, bootstrap: str, *extra: str, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return run_tool(tool, "--key", pub, "--bootstrap", bootstrap, *extra, timeout=timeout)


def _until_found(tool: Path, pub: Path, bootstrap: str, want: set[str], within: float = 20.0) -> tuple[set[str], str]:
    """Run lookups until every URL in want is printed (a fresh announce takes a moment to reach its nodes)."""
    deadline = time.monotonic() + within
    while True:
        proc = _lookup(tool, pub, bootstrap, "--timeout", "5")
        found = set(proc.stdout.split())
        if want <= found or time.monotonic() > deadline:
            return found, proc.stderr
        time.sleep(0.5)


def test_info_hash_is_the_one_python_announces(phase_boot_bin: Path, release_key: tuple) -> None:
    identity, pub = release_key
    proc = run_tool(phase_boot_bin / "phase-dht", "--key", pub, "--info-hash")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == boot_info_hash(identity.public_key).hex()


def test_lookup_finds_sources_announced_by_libtorrent(phase_boot_bin: Path, release_key: tuple) -> None:
    """30 libtorrent sessions, each knowing 3 others: the C lookup walks from one bootstrap node to the
    announcers' neighbourhood and prints both sources, and nothing announced under another key."""
    identity, pub = release_key
    info_hash = boot_info_hash(identity.public_key)
    other = boot_info_hash(Identity.generate().public_key)
    with private_dht(30, fanout=3) as nodes:
        nodes[11].announce(info_hash, 18080)
        nodes[23].announce(info_hash, 18081)
        nodes[5].announce(other, 18082)
        want = {f"http://{nodes[11].listen_host}:18080", f"http://{nodes[23].listen_host}:18081"}
        found, stderr = _until_found(phase_boot_bin / "phase-dht", pub, f"{nodes[0].listen_host}:{nodes[0].port}", want)
        assert found == want, stderr
        stats = STATS.search(stderr)
        assert stats and int(stats[2]) > 1 and int(stats[4]) == 0, stderr  # an iterative walk, all answers parsed
        print(f"\n[figures] phase-dht over 30 libtorrent nodes: {stats[0]}")


def _signed_store(tmp_path: Path, secret: Path) -> Path:
    """A store made as an operator does (`phase boot sign`), which also writes STORE/boot/release.pub."""
    (tmp_path / "blob").write_bytes(b"kernel bytes" * 100)
    store = tmp_path / "store"
    signed = boot_cli.main(
        ["sign", "--key", str(secret), "--kernel", str(tmp_path / "blob"), "--initramfs", str(tmp_path / "blob"),
         "--release", "1", "--expires-in", "1d", "--cmdline", "console=ttyS0", "--store", str(store)]
    )  # fmt: skip
    assert signed == 0
    return store


def test_serve_announces_under_the_release_key(phase_boot_bin: Path, release_key: tuple, tmp_path: Path) -> None:
    """`phase boot serve --dht-bootstrap` announces; stage 1's lookup finds it and fetches a manifest that verifies."""
    identity, pub = release_key
    store = _signed_store(tmp_path, tmp_path / "release.key")
    assert keys.load_public_key(store / "boot" / "release.pub") == identity.public_key
    port = free_port()
    with private_dht(8) as nodes:
        bootstrap = ",".join(f"{n.listen_host}:{n.port}" for n in nodes[:2])
        serve = subprocess.Popen(
            [sys.executable, "-m", "pyphase", "boot", "serve", str(store), "--listen",
             f"127.0.0.1:{port}", "--dht-bootstrap", bootstrap, "--quiet"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"
            found, stderr = _until_found(
                phase_boot_bin / "phase-dht", pub, f"{nodes[5].listen_host}:{nodes[5].port}", {url}
            )
            assert url in found, stderr
            out = tmp_path / "manifest.json"
            fetched = run_tool(phase_boot_bin / "phase-fetch", "--manifest", "--out", out, url)
            assert fetched.returncode == 0, fetched.stderr
            verified = run_tool(phase_boot_bin / "phase-verify", "manifest", "--key", pub, out)
            assert verified.returncode == 0, verified.stderr
        finally:
            serve.terminate()
            serve.wait(10)


def test_serve_refuses_to_announce_under_a_key_that_does_not_sign_the_store(release_key: tuple, tmp_path: Path) -> None:
    store = _signed_store(tmp_path, tmp_path / "release.key")
    _, other_pub = keys.generate(tmp_path / "other.key")
    proc = subprocess.run(
        [sys.executable, "-m", "pyphase", "boot", "serve", str(tmp_path / "store"), "--listen",
         f"127.0.0.1:{free_port()}", "--dht-bootstrap", "127.0.0.1:9", "--release-pub", str(other_pub)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 1 and "not announcing" in proc.stderr and "signature" in proc.stderr, proc.stderr
    (store / "boot" / "release.pub").unlink()
    proc = subprocess.run(
        [sys.executable, "-m", "pyphase", "boot", "serve", str(tmp_path / "store"), "--listen",
         f"127.0.0.1:{free_port()}", "--dht-bootstrap", "127.0.0.1:9"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 1 and "release.pub" in proc.stderr, proc.stderr


# ---- hostile DHT nodes ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sanitized_dht(tmp_path_factory: pytest.TempPathFactory, phase_boot_bin: Path) -> Path:
    """phase-boot built dynamically with AddressSanitizer and UBSan: a memory error is a failure, not luck."""
    out = tmp_path_factory.mktemp("asan") / "phase-dht"
    srcs = [
        str(CSRC_BOOT / f) for f in "main.c verify.c fetch.c netconn.c discover.c dht.c bootmanifest.c canon.c".split()
    ]
    proc = subprocess.run(
        ["gcc", "-O1", "-g", "-std=gnu11", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
         f"-I{SODIUM_BOOT}/include", "-o", str(out), *srcs, str(CSRC_BOOT.parent / "phase_crypto.c"),
         "-ljansson", f"{SODIUM_BOOT}/lib/libsodium.a", "-lcares"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out


HOSTILE = {
    "not bencode": lambda i, t, q: [b"hello"],
    "truncated": lambda i, t, q: [ok_answer(t, nodes=b"")[:-3]],
    "huge length": lambda i, t, q: [b"d1:t2:" + t + b"1:y1:r1:rd2:id99999999999999999999:" + b"x" * 20 + b"ee"],
    "deep nesting": lambda i, t, q: [b"d1:t2:" + t + b"1:y1:r1:r" + b"l" * 700 + b"e" * 700 + b"e"],
    "long integer": lambda i, t, q: [b"d1:ai" + b"9" * 1400 + b"e1:t2:" + t + b"1:y1:re"],
    "wrong tid": lambda i, t, q: [ok_answer(b"zz", values=[compact("127.0.0.1", 1)])],
    "error answer": lambda i, t, q: [benc({b"t": t, b"y": b"e", b"e": [201, b"no"]})],
    "short id": lambda i, t, q: [
        benc({b"t": t, b"y": b"r", b"r": {b"id": b"x", b"values": [compact("127.0.0.1", 1)]}})
    ],
    "ragged nodes": lambda i, t, q: [ok_answer(t, nodes=b"x" * 27)],
    "bad values": lambda i, t, q: [ok_answer(t, values=[b"12345", b"1234567", 5, [b"x"]])],
    "unusable peers": lambda i, t, q: [
        ok_answer(
            t,
            values=[
                compact("0.0.0.0", 80),
                compact("224.0.0.1", 80),
                compact("255.255.255.255", 80),
                compact("10.1.1.1", 0),
            ],
        )
    ],
    "oversized datagram": lambda i, t, q: [ok_answer(t, nodes=b"", pad=b"x" * 3000)],
    "flood of answers": lambda i, t, q: [ok_answer(t, nodes=b"")] * 50 + [b"junk"] * 50,
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_answer_finds_nothing_and_ends(sanitized_dht: Path, release_key: tuple, case: str) -> None:
    _, pub = release_key
    hostile = HostileNodes(1, HOSTILE[case])
    try:
        began = time.monotonic()
        proc = _lookup(sanitized_dht, pub, f"127.0.0.1:{hostile.ports[0]}", "--timeout", "5", timeout=20)
        took = time.monotonic() - began
    finally:
        hostile.close()
    assert proc.returncode == 1 and proc.stdout == "", (proc.returncode, proc.stdout, proc.stderr)
    assert "0 sources after 1 queries" in proc.stderr and "ERROR" not in proc.stderr, proc.stderr
    assert took < 5, took  # one query, then nothing more to ask: done long before the timeout


def test_nodes_that_lead_ever_closer_are_bounded(sanitized_dht: Path, release_key: tuple) -> None:
    """200 hostile sockets each answer with 8 others among them whose ids share ever more leading bits with the
    target, so the lookup always has closer nodes to ask: it stops at --max-queries, or at the timeout."""
    _, pub = release_key
    rng = random.Random(1)
    holder: list[HostileNodes] = []
    answered = [0]

    def answer(i: int, tid: bytes, query: bytes) -> list[bytes]:
        at = query.find(b"9:info_hash20:")
        target = query[at + 14 : at + 34]
        answered[0] += 1
        keep = min(19, answered[0] // 4)
        nodes = b"".join(
            target[:keep] + rng.randbytes(20 - keep) + compact("127.0.0.1", p) for p in rng.sample(holder[0].ports, 8)
        )
        return [ok_answer(tid, nodes=nodes)]

    hostile = HostileNodes(200, answer)
    holder.append(hostile)
    try:
        proc = _lookup(sanitized_dht, pub, f"127.0.0.1:{hostile.ports[0]}", "--max-queries", "60", "--timeout", "20")
        stats = STATS.search(proc.stderr)
        assert proc.returncode == 1 and stats, proc.stderr
        assert int(stats[2]) == 60 and hostile.received == 60, proc.stderr
        began = time.monotonic()
        proc = _lookup(sanitized_dht, pub, f"127.0.0.1:{hostile.ports[0]}", "--max-queries", "1000", "--timeout", "2")
        stats = STATS.search(proc.stderr)
        assert proc.returncode == 1 and stats and time.monotonic() - began < 4, proc.stderr
        assert int(stats[2]) <= 200, proc.stderr  # each address is asked once, however often it is named
    finally:
        hostile.close()


def test_mutated_answers_never_crash_the_lookup(sanitized_dht: Path, release_key: tuple) -> None:
    """Fuzz-ish: 20 nodes answer every query with a randomly damaged copy of a good answer (naming other nodes
    among them and a peer), so one lookup parses ~100 mutants; under ASan/UBSan, for several seeds. A mutant can
    name any address, so this runs in a network namespace of its own with only loopback (unshare -n)."""
    _, pub = release_key
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.fail("needs root and unshare (util-linux) for a network namespace")
    queries = 0
    for seed in range(6):
        proc = subprocess.run(
            ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", sys.executable,
             str(Path(__file__).with_name("dht_hostile.py")), str(sanitized_dht), str(pub), str(seed)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        result = json.loads(proc.stdout)
        stats = STATS.search(result["stderr"])
        assert result["returncode"] in (0, 1) and stats, result  # no sanitizer report, no signal
        queries += int(stats[2])
        for line in result["stdout"].split():
            assert re.fullmatch(r"http://\d+\.\d+\.\d+\.\d+:\d+", line), result
    assert queries > 6 * 5, queries  # the walks went on through the damaged answers (a peer found ends one)


def test_bep42_vector_and_nodes_it_does_not_vouch_for_are_asked_last(sanitized_dht: Path, release_key: tuple) -> None:
    """A liar next to the info-hash whose id does not match its address is passed over for an honest node whose
    id does (BEP 42), however far: with two queries, the second goes to the honest one. Non-local addresses are
    needed (local ones are exempt), so this runs in a network namespace of its own (unshare -n)."""
    from .dht_bep42 import bep42_prefix

    # BEP 42's own example: 124.31.75.21 with r = 1 gives ids starting 5f bf b8..bf
    prefix = bep42_prefix("124.31.75.21", 1)
    assert prefix[:2] == bytes.fromhex("5fbf") and prefix[2] & 0xF8 == 0xB8
    _, pub = release_key
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.fail("needs root and unshare (util-linux) for a network namespace")
    proc = subprocess.run(
        ["unshare", "-n", sys.executable, str(Path(__file__).with_name("dht_bep42.py")), str(sanitized_dht), str(pub)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert result["stdout"].split() == ["http://198.51.100.77:8080"], result
    assert result["asked"] == {"boot": 1, "liar": 0, "honest": 1}, result
    assert "1 nodes named with ids BEP 42 does not vouch for" in result["stderr"], result


def test_loopback_peers_from_a_loopback_node_stay_as_they_are(phase_boot_bin: Path, release_key: tuple) -> None:
    """(From a node that is not on loopback, a 127.x peer means that node: the QEMU test covers that case.)"""
    _, pub = release_key
    hostile = HostileNodes(1, lambda i, t, q: [ok_answer(t, values=[compact("127.0.0.1", 18123)])])
    try:
        proc = _lookup(phase_boot_bin / "phase-dht", pub, f"127.0.0.1:{hostile.ports[0]}", "--timeout", "3")
    finally:
        hostile.close()
    assert proc.returncode == 0 and proc.stdout.split() == ["http://127.0.0.1:18123"], proc.stderr


def test_lookup_through_debian_libtorrent_finds_its_announce(phase_boot_bin: Path, release_key: tuple) -> None:
    """Interop with another build: Debian's python3-libtorrent 2.0.x (tests/net/dht_interop_peer.py) joins a
    private DHT of ours and announces under the release key's hash; the C lookup, bootstrapped from that peer
    alone (so it parses 2.0.x's answers first), finds the announce."""
    from dht_support import dht_host, endpoints
    from test_dht_interop import _debian_libtorrent, _Peer

    _debian_libtorrent()
    identity, pub = release_key
    with private_dht(8, fanout=4) as nodes:
        host = dht_host()
        peer = _Peer(f"{host}:0", ",".join(f"{h}:{p}" for h, p in endpoints(nodes[:3])))
        try:
            announced = peer.ask(op="announce", ih=boot_info_hash(identity.public_key).hex())
            want = {f"http://{host}:{announced['port']}"}
            found, stderr = _until_found(phase_boot_bin / "phase-dht", pub, f"{host}:{peer.hello['port']}", want, 30)
        finally:
            peer.close()
    assert found == want, stderr
    stats = STATS.search(stderr)
    assert stats and int(stats[4]) == 0, stderr


# ---- names and IPv6 in --bootstrap -------------------------------------------------------------------


def test_bootstrap_names_resolve_through_dns(phase_boot_bin: Path, release_key: tuple) -> None:
    """A DHT node given by name is resolved (c-ares, --dns: a dnsmasq on loopback that knows only phase.test);
    a name that does not resolve is skipped with a line saying why, and with none left the lookup says so."""
    identity, pub = release_key
    tool = phase_boot_bin / "phase-dht"
    with private_dht(8, fanout=4) as nodes, DnsServer({"dht.phase.test": nodes[0].listen_host}) as dns:
        nodes[5].announce(boot_info_hash(identity.public_key), 18090)
        want = {f"http://{nodes[5].listen_host}:18090"}
        bootstrap = f"missing.phase.test:6881,dht.phase.test:{nodes[0].port}"
        deadline, found, proc = time.monotonic() + 20, set(), None
        while found != want and time.monotonic() < deadline:
            proc = _lookup(tool, pub, bootstrap, "--dns", f"127.0.0.1:{dns.port}", "--timeout", "5")
            found = set(proc.stdout.split())
        assert proc is not None and found == want, proc and proc.stderr
        assert "bootstrap node missing.phase.test:6881 skipped: DNS: name 'missing.phase.test' not found" in proc.stderr
        none = _lookup(tool, pub, "missing.phase.test:6881", "--dns", f"127.0.0.1:{dns.port}")
    assert none.returncode == 1 and none.stdout == "", none
    assert "0 sources: no bootstrap node could be resolved (missing.phase.test:6881)" in none.stderr, none.stderr


def test_ipv6_nodes_and_peers_bep32(phase_boot_bin: Path, release_key: tuple) -> None:
    """An IPv6 bootstrap node ([::1]:PORT) makes the queries ask for nodes6 (BEP 32 "want"); nodes6 entries are
    followed and 18-byte peers printed as http://[ADDR]:PORT. With an IPv4 bootstrap node too, both are asked for."""
    _, pub = release_key
    seen: list[bytes] = []
    last = HostileNodes(1, lambda i, t, q: [ok_answer(t, values=[compact("::1", 18123)])], host="::1")

    def first(i: int, t: bytes, q: bytes) -> list[bytes]:
        seen.append(q)
        return [ok_answer(t, nodes6=os.urandom(20) + compact("::1", last.ports[0]))]

    hostile = HostileNodes(1, first, host="::1")
    four = HostileNodes(1, lambda i, t, q: (seen.append(q), [ok_answer(t, nodes=b"")])[1])
    try:
        proc = _lookup(phase_boot_bin / "phase-dht", pub, f"[::1]:{hostile.ports[0]}", "--timeout", "3")
        assert proc.returncode == 0 and proc.stdout.split() == ["http://[::1]:18123"], proc.stderr
        assert b"4:wantl2:n6e" in seen[0], seen
        both = f"127.0.0.1:{four.ports[0]},[::1]:{hostile.ports[0]}"
        proc = _lookup(phase_boot_bin / "phase-dht", pub, both, "--timeout", "3")
        assert proc.returncode == 0 and proc.stdout.split() == ["http://[::1]:18123"], proc.stderr
        assert all(b"4:wantl2:n42:n6e" in q for q in seen[1:]) and len(seen) == 3, seen
    finally:
        for h in (last, hostile, four):
            h.close()


def test_lookup_over_ipv6_finds_a_source_announced_by_libtorrent(
    phase_boot_bin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interop over IPv6: libtorrent sessions on [::1] (one address, so test_qemu_dht's relaxed settings)."""
    import libtorrent as lt

    monkeypatch.setenv("PHASE_DHT_ALLOW", os.environ["PHASE_DHT_ALLOW"] + ",::1/128")  # IPv6 loopback: still local

    from .dht_net import loopback_sessions

    target = os.urandom(20)
    with loopback_sessions(8, host="::1") as sessions:
        sessions[5].dht_announce(lt.sha1_hash(target), 18077, 0)
        for _ in range(20):
            proc = run_tool(phase_boot_bin / "phase-dht", "--target", target.hex(), "--bootstrap",
                            f"[::1]:{sessions[0].listen_port()}", "--timeout", "5")  # fmt: skip
            if proc.stdout.split() == ["http://[::1]:18077"]:
                break
            time.sleep(0.5)
    assert proc.returncode == 0 and proc.stdout.split() == ["http://[::1]:18077"], proc.stderr
    stats = STATS.search(proc.stderr)
    assert stats and int(stats[4]) == 0, proc.stderr


def test_usage_errors(phase_boot_bin: Path, release_key: tuple, tmp_path: Path) -> None:
    _, pub = release_key
    tool = phase_boot_bin / "phase-dht"
    for args, why in (
        (["--key", pub], "usage"),
        (["--key", pub, "--bootstrap", "10.0.2.2"], "is not HOST:PORT"),
        (["--key", pub, "--bootstrap", "10.0.2.2:0"], "is not HOST:PORT"),
        (["--key", pub, "--bootstrap", "::1:6881"], "an IPv6 address goes in brackets"),
        (["--key", pub, "--bootstrap", "[127.0.0.1]:6881"], "neither an IP address nor a DNS name"),
        (["--key", pub, "--bootstrap", "bad!name:6881"], "neither an IP address nor a DNS name"),
        (["--key", pub, "--bootstrap", ","], "names no node"),
        (["--key", pub, "--bootstrap", ",".join(["127.0.0.1:9"] * 17)], "more than 16 nodes"),
        (["--key", pub, "--bootstrap", "127.0.0.1:9", "--source", "nope"], "not an IP address"),
        (["--bootstrap", "10.0.2.2:6881"], "usage"),
    ):
        proc = run_tool(tool, *args)
        assert proc.returncode == 2 and why in proc.stderr, (args, proc.stderr)
    (tmp_path / "bad.pub").write_text("nope\n")
    proc = run_tool(tool, "--key", tmp_path / "bad.pub", "--bootstrap", "127.0.0.1:9")
    assert proc.returncode == 2 and "not a Phase release public key" in proc.stderr
    assert os.path.exists(tool)
