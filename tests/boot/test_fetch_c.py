"""phase-fetch and phase-discover (the static C tools of stage 1) against loopback servers."""

from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from pyphase.boot.manifest import Artifact, make_boot_manifest, sign_manifest
from pyphase.boot.server import ArtifactServer
from pyphase.boot.store import ArtifactStore
from pyphase.identity import Identity

from .conftest import run_tool
from .qemu import free_port
from .services import DnsServer, SocksProxy

DATA = bytes((i * 7) & 0xFF for i in range(300_000))


@pytest.fixture()
def store(tmp_path: Path) -> tuple[Path, Artifact]:
    (tmp_path / "blob").write_bytes(DATA)
    s = ArtifactStore(tmp_path / "store")
    art = s.add_file(tmp_path / "blob")
    s.write_manifest(
        sign_manifest(
            make_boot_manifest(art, art, "console=ttyS0", release=1, expires_at=2**40), Identity.generate().signing_key
        )
    )
    return tmp_path / "store", art


class OneShotServer:
    """A raw TCP server answering each connection with the next canned behaviour."""

    def __init__(self, behaviours: list) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.behaviours = behaviours
        self.requests: list[bytes] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for behaviour in self.behaviours:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                req = b""
                while b"\r\n\r\n" not in req:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    req += chunk
                self.requests.append(req)
                behaviour(conn, req)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> OneShotServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def answer(body: bytes):
    """A behaviour: a 200 response carrying ``body``."""

    def send(conn: socket.socket, req: bytes) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)

    return send


def _fetch(bin_dir: Path, art: Artifact, out: Path, *args: str, retries: int = 2):
    """phase-fetch of ``art``; ``args`` are further options, then the source URLs."""
    timeout = () if "--timeout" in args else ("--timeout", "5")
    return run_tool(
        bin_dir / "phase-fetch",
        "--hash",
        art.hash,
        "--size",
        str(art.size),
        "--out",
        out,
        "--retries",
        str(retries),
        *timeout,
        *args,
    )


def test_fetch_falls_back_past_a_dead_source(phase_boot_bin: Path, store, tmp_path: Path) -> None:
    root, art = store
    with ArtifactServer(root) as s:
        r = _fetch(phase_boot_bin, art, tmp_path / "out", f"http://127.0.0.1:{free_port()}", s.url)
    assert r.returncode == 0, r.stderr
    assert "Connection refused" in r.stderr
    assert (tmp_path / "out").read_bytes() == DATA
    assert not (tmp_path / "out.part").exists()


def test_fetch_resumes_after_a_cut_connection(phase_boot_bin: Path, store, tmp_path: Path) -> None:
    _, art = store

    def cut(conn: socket.socket, req: bytes) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(DATA) + DATA[:100_000])

    def resume(conn: socket.socket, req: bytes) -> None:
        assert b"Range: bytes=100000-" in req
        conn.sendall(
            b"HTTP/1.1 206 Partial Content\r\nContent-Length: %d\r\nContent-Range: bytes 100000-%d/%d\r\n\r\n"
            % (len(DATA) - 100_000, len(DATA) - 1, len(DATA))
            + DATA[100_000:]
        )

    srv = OneShotServer([cut, resume])
    try:
        r = _fetch(phase_boot_bin, art, tmp_path / "out", f"http://127.0.0.1:{srv.port}")
    finally:
        srv.close()
    assert r.returncode == 0, r.stderr
    assert "connection closed after 100000" in r.stderr
    assert (tmp_path / "out").read_bytes() == DATA
    assert b"Range: bytes=100000-" in srv.requests[1]


def test_fetch_refuses_wrong_bytes_and_oversize(phase_boot_bin: Path, store, tmp_path: Path) -> None:
    root, art = store
    wrong = bytearray(DATA)
    wrong[5] ^= 0xFF

    liar = answer(bytes(wrong))

    def flood(conn: socket.socket, req: bytes) -> None:
        conn.sendall(b"HTTP/1.0 200 OK\r\n\r\n" + DATA + b"more")

    srv = OneShotServer([liar, flood])
    try:
        url = f"http://127.0.0.1:{srv.port}"
        r = _fetch(phase_boot_bin, art, tmp_path / "out", url, url, retries=1)
    finally:
        srv.close()
    assert r.returncode == 1
    assert "hash mismatch: got sha256:" in r.stderr
    assert "more than the" in r.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.part").exists()
    # and with an honest source after the liar, the fetch succeeds
    with OneShotServer([liar]) as srv, ArtifactServer(root) as s:
        r = _fetch(phase_boot_bin, art, tmp_path / "out", f"http://127.0.0.1:{srv.port}", s.url, retries=1)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out").read_bytes() == DATA


def test_fetch_retries_a_hash_mismatch_once_from_the_start(phase_boot_bin: Path, store, tmp_path: Path) -> None:
    """Bytes corrupted on the way once: one fresh download from the same source; twice: the next source."""
    root, art = store
    wrong = bytearray(DATA)
    wrong[-1] ^= 0x01
    corrupt, honest = answer(bytes(wrong)), answer(DATA)

    with OneShotServer([corrupt, honest]) as srv:
        r = _fetch(phase_boot_bin, art, tmp_path / "out", f"http://127.0.0.1:{srv.port}", retries=3)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("hash mismatch") == 1
    assert len(srv.requests) == 2 and b"Range:" not in srv.requests[1]  # from the start, not resumed
    assert (tmp_path / "out").read_bytes() == DATA

    with OneShotServer([corrupt, corrupt, honest]) as srv, ArtifactServer(root) as s:  # a third try would succeed
        r = _fetch(phase_boot_bin, art, tmp_path / "out2", f"http://127.0.0.1:{srv.port}", s.url, retries=3)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("hash mismatch") == 2
    assert len(srv.requests) == 2, "a source that sent wrong bytes twice got a third request"
    assert f"{s.url} {art.hash}: {art.size} bytes ok" in r.stderr and (tmp_path / "out2").read_bytes() == DATA


def test_fetch_manifest_and_errors(phase_boot_bin: Path, store, tmp_path: Path) -> None:
    root, art = store
    with ArtifactServer(root) as s:
        r = run_tool(phase_boot_bin / "phase-fetch", "--manifest", "--out", tmp_path / "m.json", s.url + "/")
        assert r.returncode == 0, r.stderr
        assert (tmp_path / "m.json").read_bytes() == (root / "boot" / "manifest.json").read_bytes()
        missing = Artifact("sha256:" + "0" * 64, 10)
        r = _fetch(phase_boot_bin, missing, tmp_path / "x", s.url)
        assert r.returncode == 1 and "HTTP 404" in r.stderr
    r = run_tool(phase_boot_bin / "phase-fetch", "--manifest", "--out", tmp_path / "m", "http://bad_host!:80")
    assert r.returncode == 1 and "neither an IP address nor a DNS name" in r.stderr
    r = run_tool(
        phase_boot_bin / "phase-fetch",
        "--manifest",
        "--out",
        tmp_path / "m",
        "--socks",
        "proxy.example:9050",
        "http://127.0.0.1:1",
    )
    assert r.returncode == 2 and "want IP:PORT" in r.stderr
    r = run_tool(phase_boot_bin / "phase-fetch", "--out", tmp_path / "m", "http://127.0.0.1:1")
    assert r.returncode == 2 and "usage" in r.stderr


def test_fetch_through_a_socks_proxy_names_resolved_by_the_proxy(phase_boot_bin: Path, store, tmp_path: Path) -> None:
    """``--socks``: the source's name goes to the proxy (SOCKS5 domain address), as Tor needs for .onion."""
    root, art = store
    with SocksProxy(tmp_path) as proxy, ArtifactServer(root) as s:
        r = _fetch(
            phase_boot_bin, art, tmp_path / "out", "--socks", f"127.0.0.1:{proxy.port}", f"http://localhost:{s.port}"
        )
        log = proxy.log()
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out").read_bytes() == DATA
    assert f"connected to localhost:{s.port}" in log, log


def test_fetch_with_a_dead_proxy_never_connects_directly(phase_boot_bin: Path, store, tmp_path: Path) -> None:
    """Private mode fails closed: a proxy that is down means no fetch, not a direct one."""
    _, art = store

    def serve(conn: socket.socket, req: bytes) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(DATA) + DATA)

    srv = OneShotServer([serve])
    try:
        r = _fetch(
            phase_boot_bin,
            art,
            tmp_path / "out",
            "--socks",
            f"127.0.0.1:{free_port()}",
            f"http://127.0.0.1:{srv.port}",
            retries=2,
        )
    finally:
        srv.close()
    assert r.returncode == 1
    assert "proxy unreachable: connect 127.0.0.1:" in r.stderr and "Connection refused" in r.stderr
    assert srv.requests == [] and not (tmp_path / "out").exists()


def test_fetch_reports_proxy_refusals(phase_boot_bin: Path, store, tmp_path: Path) -> None:
    """The proxy's CONNECT reply code is named; a port that is not a SOCKS5 proxy is told apart."""
    _, art = store
    with SocksProxy(tmp_path) as proxy:
        r = _fetch(
            phase_boot_bin,
            art,
            tmp_path / "out",
            "--socks",
            f"127.0.0.1:{proxy.port}",
            f"http://127.0.0.1:{free_port()}",
            retries=1,
        )
    assert r.returncode == 1
    assert f"proxy 127.0.0.1:{proxy.port}: CONNECT 127.0.0.1:" in r.stderr, r.stderr

    not_socks = socket.socket()
    not_socks.bind(("127.0.0.1", 0))
    not_socks.listen(1)

    def answer() -> None:
        conn, _ = not_socks.accept()
        with conn:
            conn.recv(16)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    try:
        r = _fetch(
            phase_boot_bin,
            art,
            tmp_path / "out",
            "--socks",
            f"127.0.0.1:{not_socks.getsockname()[1]}",
            "http://127.0.0.1:1",
            retries=1,
        )
    finally:
        t.join(10)
        not_socks.close()
    assert r.returncode == 1 and "is not a SOCKS5 proxy" in r.stderr, r.stderr


def test_fetch_resolves_names_with_dns(phase_boot_bin: Path, store, tmp_path: Path) -> None:
    """Names in source URLs are looked up with c-ares (static binary, no NSS); unknown names fail clearly."""
    root, art = store
    with DnsServer({"artifacts.phase.test": "127.0.0.1"}) as dns, ArtifactServer(root) as s:
        dead = f"http://missing.phase.test:{s.port}"
        r = _fetch(
            phase_boot_bin,
            art,
            tmp_path / "out",
            "--dns",
            f"127.0.0.1:{dns.port}",
            dead,
            f"http://artifacts.phase.test:{s.port}",
        )
        log = dns.close()
    assert r.returncode == 0, r.stderr
    assert "DNS: name 'missing.phase.test' not found" in r.stderr
    assert (tmp_path / "out").read_bytes() == DATA
    assert "artifacts.phase.test" in log, log


def test_fetch_drops_a_trickling_source(phase_boot_bin: Path, store, tmp_path: Path) -> None:
    """A source slower than --min-rate over the window is left for the next; so is one that never sends headers."""
    root, art = store

    def trickle(conn: socket.socket, req: bytes) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(DATA))
        try:
            for i in range(0, 40_000, 2000):
                conn.sendall(DATA[i : i + 2000])
                time.sleep(0.1)
        except OSError:
            pass

    def slow_headers(conn: socket.socket, req: bytes) -> None:
        try:
            for c in b"HTTP/1.1 200 OK\r\n":
                conn.sendall(bytes([c]))
                time.sleep(0.2)
        except OSError:
            pass

    srv, srv2 = OneShotServer([trickle]), OneShotServer([slow_headers])
    try:
        with ArtifactServer(root) as s:
            r = _fetch(
                phase_boot_bin,
                art,
                tmp_path / "out",
                "--min-rate",
                "100000",
                "--rate-window",
                "1",
                "--timeout",
                "2",
                f"http://127.0.0.1:{srv.port}",
                f"http://127.0.0.1:{srv2.port}",
                s.url,
            )
    finally:
        srv.close()
        srv2.close()
    assert r.returncode == 0, r.stderr
    assert "too slow: " in r.stderr and "below the minimum of 100000" in r.stderr, r.stderr
    assert "no response headers within 2 s" in r.stderr, r.stderr
    assert (tmp_path / "out").read_bytes() == DATA


def _dns_name(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"


def _rr(name: str, rtype: int, rdata: bytes) -> bytes:
    return _dns_name(name) + struct.pack(">HHIH", rtype, 1, 120, len(rdata)) + rdata


def test_discover_parses_an_mdns_answer(phase_boot_bin: Path) -> None:
    service = "_phase-boot._tcp.local"
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(10)
    port = sock.getsockname()[1]
    seen: list[bytes] = []

    def respond() -> None:
        try:
            query, addr = sock.recvfrom(2048)
        except OSError:
            return
        seen.append(query)
        answers = [
            _rr(service, 12, _dns_name("node1." + service)),
            _rr("node1." + service, 33, struct.pack(">HHH", 0, 0, 8080) + _dns_name("node1.local")),
            _rr("node1.local", 1, socket.inet_aton("192.0.2.7")),
            _rr(service, 12, b"\xc0\x0c"),  # a compressed pointer back to the question name: skipped, not a crash
        ]
        sock.sendto(struct.pack(">HHHHHH", 0, 0x8400, 0, len(answers), 0, 0) + b"".join(answers), addr)

    t = threading.Thread(target=respond, daemon=True)
    t.start()
    r = run_tool(phase_boot_bin / "phase-discover", "--server", f"127.0.0.1:{port}", "--timeout", "2")
    t.join(timeout=5)
    sock.close()
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["http://192.0.2.7:8080"]
    assert _dns_name(service) in seen[0] and seen[0].endswith(b"\x00\x0c\x80\x01")  # PTR, QU, IN


def test_discover_reports_silence(phase_boot_bin: Path) -> None:
    r = run_tool(phase_boot_bin / "phase-discover", "--server", f"127.0.0.1:{free_port()}", "--timeout", "1")
    assert r.returncode == 1 and "no _phase-boot._tcp.local answered" in r.stderr


def test_serve_mdns_is_found_by_discover_on_loopback(phase_boot_bin: Path, store, tmp_path: Path) -> None:
    """Real mDNS, kept on loopback: `phase boot serve --mdns` answers phase-discover's one-shot query."""
    import selectors
    import subprocess
    import sys
    import time

    pytest.importorskip("zeroconf")
    root, _ = store
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pyphase.boot",
            "serve",
            str(root),
            "--listen",
            f"127.0.0.1:{port}",
            "--quiet",
            "--mdns",
            "--mdns-interfaces",
            "127.0.0.1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 30
        line = b""
        while b"serving" not in line and time.monotonic() < deadline:
            if sel.select(timeout=1):
                line = proc.stdout.readline()
                if not line:
                    break
        assert b"announced as" in line, line
        urls: list[str] = []
        for _ in range(3):  # the announcement may still be probing its name
            r = run_tool(phase_boot_bin / "phase-discover", "--interface", "127.0.0.1", "--timeout", "2")
            urls = r.stdout.split()
            if urls:
                break
        assert f"http://127.0.0.1:{port}" in urls, r.stderr
        r = run_tool(phase_boot_bin / "phase-fetch", "--manifest", "--out", tmp_path / "m.json", urls[0])
        assert r.returncode == 0, r.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=30)


class _HostileProxy:
    """A 'SOCKS5 proxy' that answers every greeting and CONNECT with the bytes it is given, then closes."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.greeting = b""
        self.reply = b""
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                try:
                    conn.settimeout(2)
                    conn.recv(16)
                    conn.sendall(self.greeting)
                    conn.recv(600)
                    conn.sendall(self.reply)
                except OSError:
                    pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def test_fetch_survives_hostile_proxy_replies(phase_boot_bin: Path, store, tmp_path: Path) -> None:
    """Whatever a proxy answers, phase-fetch ends with a one-line reason and exit 1: never a crash, never a file."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    _, art = store
    proxy = _HostileProxy()
    replies = st.one_of(
        st.binary(max_size=40),
        st.builds(
            lambda rep, atyp, tail: bytes([5, rep, 0, atyp]) + tail,
            st.integers(0, 255),
            st.sampled_from([1, 3, 4, 0, 9]),
            st.binary(max_size=300),
        ),
    )

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(greeting=st.one_of(st.just(b"\x05\x00"), st.binary(max_size=4)), reply=replies)
    def check(greeting: bytes, reply: bytes) -> None:
        proxy.greeting, proxy.reply = greeting, reply
        r = _fetch(
            phase_boot_bin,
            art,
            tmp_path / "out",
            "--socks",
            f"127.0.0.1:{proxy.port}",
            "--timeout",
            "2",
            "http://127.0.0.1:9",
            retries=1,
        )
        assert r.returncode == 1, (greeting, reply, r.returncode, r.stderr)
        assert "phase-fetch: every source failed; last: " in r.stderr
        assert not (tmp_path / "out").exists()

    try:
        check()
    finally:
        proxy.close()


def test_fetch_over_ipv6_by_literal_and_by_a_name_with_only_an_aaaa_record(
    phase_boot_bin: Path, store, tmp_path: Path
) -> None:
    """Sources on IPv6: http://[::1]:PORT, and a name whose only address is ::1 (dnsmasq answers AAAA)."""
    root, art = store
    with DnsServer({"v6.phase.test": "::1"}) as dns, ArtifactServer(root, "::1") as s:
        literal = _fetch(phase_boot_bin, art, tmp_path / "a", f"http://[::1]:{s.port}")
        named = _fetch(phase_boot_bin, art, tmp_path / "b", "--dns", f"127.0.0.1:{dns.port}",
                       f"http://v6.phase.test:{s.port}")  # fmt: skip
    assert literal.returncode == 0 and (tmp_path / "a").read_bytes() == DATA, literal.stderr
    assert named.returncode == 0 and (tmp_path / "b").read_bytes() == DATA, named.stderr
