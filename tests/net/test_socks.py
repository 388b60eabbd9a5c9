"""Clients through a SOCKS5 proxy (Private mode, Tor): a real proxy (microsocks) in front of real nodes.

The proxy binds its outgoing connections to 127.0.0.254, an address no test node or client uses, so a
node's ``peer_connected`` event shows whether a connection came through the proxy (127.0.0.254) or
directly. Fail closed: with the proxy down the node must never see the client at all.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from pyphase import Client, verify_receipt
from pyphase.net.addresses import parse_address, parse_socks_proxy, resolve_socks_proxy
from pyphase.errors import NetworkError, NoPeers

PROXY_SOURCE = "127.0.0.254"  # microsocks -b: where the proxy's own connections come from


class Microsocks:
    """One ``microsocks`` process on 127.0.0.1; its log (one line per connection it opens) in a file."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Microsocks:
        for _ in range(5):  # a port taken between probe and bind: try another
            self.port = _free_port()
            log = open(self.log_path, "ab")
            self.proc = subprocess.Popen(
                ["microsocks", "-i", "127.0.0.1", "-p", str(self.port), "-b", PROXY_SOURCE],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
            log.close()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return self
                except OSError:
                    time.sleep(0.02)
            self.stop()
        raise RuntimeError(f"microsocks did not start: {self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def socks_proxy(tmp_path: Path) -> Iterator[Microsocks]:
    if shutil.which("microsocks") is None:
        pytest.skip("needs a SOCKS5 server: apt-get install microsocks")
    proxy = Microsocks(tmp_path / "microsocks.log").start()
    yield proxy
    proxy.stop()


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections for the whole test (bound, never listening)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    # conftest.py removed any PHASE_SOCKS_PROXY of the developer's shell from os.environ
    return subprocess.run(
        [sys.executable, "-m", "pyphase", *args], capture_output=True, timeout=120, env=dict(os.environ, **(env or {}))
    )


# ---- (1) a job through the proxy ------------------------------------------------------------------------


def test_job_through_proxy_verifies(start_nodes, socks_proxy, hello_bytes):
    (node,) = start_nodes(1)
    with Client(peers=[node.address], socks_proxy=socks_proxy.address) as client:
        assert client.socks_proxy == socks_proxy.address
        result = client.submit(hello_bytes, input=b"Hello, World")
    assert result.stdout == b"dlroW ,olleH" and result.status == "ok"
    verify_receipt(
        result.receipt,
        module=hello_bytes,
        input=b"Hello, World",
        stdout=result.stdout,
        stderr=result.stderr,
        signer=node.address.split("@")[0],
    )
    # the proxy opened the connection to the node's port, and the node saw it come from the proxy
    assert f"connected to {node.host}:{node.port}" in socks_proxy.log()
    assert [e["address"] for e in node.events("peer_connected")] == [PROXY_SOURCE]


def test_cli_submit_through_proxy_flag_and_environment(start_nodes, socks_proxy, hello_bytes, tmp_path):
    (node,) = start_nodes(1)
    hello = tmp_path / "hello.wasm"
    hello.write_bytes(hello_bytes)
    receipt = tmp_path / "r.json"
    out = _cli(
        "submit",
        str(hello),
        "--input",
        "abc",
        "--peer",
        node.address,
        "--socks-proxy",
        socks_proxy.address,
        "--receipt",
        str(receipt),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"cba"
    check = _cli("verify", str(receipt), "--input-text", "abc", "--signer", node.address.split("@")[0])
    assert check.returncode == 0, check.stderr
    out = _cli(
        "submit", str(hello), "--input", "xy", "--peer", node.address, env={"PHASE_SOCKS_PROXY": socks_proxy.address}
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"yx"
    assert socks_proxy.log().count(f"connected to {node.host}:{node.port}") == 2
    assert {e["address"] for e in node.events("peer_connected")} == {PROXY_SOURCE}


# ---- (2) a host name, resolved by the proxy ----------------------------------------------------------------


def test_hostname_peer_resolved_by_proxy(tmp_path, socks_proxy, hello_bytes):
    from net_support import NodeProc

    first = socket.getaddrinfo("localhost", None, type=socket.SOCK_STREAM)[0][4][0]
    if first != "127.0.0.1":
        pytest.skip(f"localhost resolves to {first} first here; the node listens on IPv4")
    node = NodeProc(tmp_path / "named", "127.0.0.1", sandbox=False).start()
    try:
        peer_id = node.address.split("@")[0]
        with Client(peers=[f"{peer_id}@localhost:{node.port}"], socks_proxy=socks_proxy.address) as client:
            assert client.peers() == [f"{peer_id}@localhost:{node.port}"]
            result = client.submit(hello_bytes, input=b"name")
        assert result.stdout == b"eman"
        verify_receipt(result.receipt, stdout=result.stdout, stderr=result.stderr, signer=peer_id)
        # the name went to the proxy as a name (SOCKS5 address type 3), and the proxy resolved it
        assert f"connected to localhost:{node.port}" in socks_proxy.log()
        assert [e["address"] for e in node.events("peer_connected")] == [PROXY_SOURCE]
    finally:
        node.stop()


def test_addresses_accept_names_and_refuse_junk():
    peer_id = "a" * 52
    onion = "x" * 56 + ".onion"
    assert parse_address(f"{peer_id}@{onion}:7000")[2:] == (onion, 7000)
    assert parse_address(f"{peer_id}@localhost")[2:] == ("localhost", 7465)
    assert parse_address(f"{peer_id}@[::1]:7000")[2:] == ("::1", 7000)
    for bad in (
        "@:7000",
        "@a b:7000",
        "@-bad:7000",
        "@bad-.x:7000",
        "@a..b:7000",
        "@host:0",
        "@host:x",
        "@" + "a" * 64 + ".onion:7000",
        "@[::1:7000",
        "@host/evil:7000",
    ):
        with pytest.raises(ValueError):
            parse_address(peer_id + bad)


# ---- (3) the proxy down: fail closed -------------------------------------------------------------------------


def test_proxy_down_fails_closed(start_nodes, dead_port, hello_bytes):
    (node,) = start_nodes(1)
    started = time.monotonic()
    with Client(peers=[node.address], socks_proxy=f"127.0.0.1:{dead_port}") as client:
        with pytest.raises(NetworkError) as info:
            client.submit(hello_bytes, input=b"x", retries=1, timeout=5)
    assert time.monotonic() - started < 10
    message = str(info.value)
    assert f"SOCKS proxy 127.0.0.1:{dead_port} is unreachable" in message, message
    assert len(info.value.attempts) == 2
    # nothing went around the proxy: the node never saw this client
    assert node.events("peer_connected") == [] and node.events("offer") == []


def test_cli_proxy_down_exits_69_and_node_sees_nothing(start_nodes, dead_port, hello_bytes, tmp_path):
    (node,) = start_nodes(1)
    hello = tmp_path / "hello.wasm"
    hello.write_bytes(hello_bytes)
    out = _cli(
        "submit",
        str(hello),
        "--peer",
        node.address,
        "--retries",
        "0",
        "--timeout",
        "2s",
        env={"PHASE_SOCKS_PROXY": f"127.0.0.1:{dead_port}"},
    )
    assert out.returncode == 69, out.stderr  # a clean exit, not libzmq's SIGABRT on close
    assert b"SOCKS proxy" in out.stderr and b"unreachable" in out.stderr
    assert node.events("peer_connected") == [] and node.events("offer") == []


def test_proxy_cannot_reach_peer_says_so(start_nodes, socks_proxy, hello_bytes):
    (node,) = start_nodes(1)
    gone = node.address.rsplit(":", 1)[0] + f":{node.port}"
    node.kill()
    with Client(peers=[gone], socks_proxy=socks_proxy.address) as client:
        with pytest.raises(NetworkError) as info:
            client.submit(hello_bytes, retries=0, timeout=5)
    message = str(info.value)
    assert f"could not connect to {node.host}:{node.port} (connection refused" in message.lower(), message


# ---- (4) a proxy and no peers: discovery refused ------------------------------------------------------------


def test_proxy_refuses_discovery(monkeypatch, hello_bytes):
    import pyphase.net.discovery

    def no_mdns(*args: object, **kwargs: object) -> list[object]:
        raise AssertionError("mDNS must not run with a proxy set")

    monkeypatch.setattr(pyphase.net.discovery, "discover", no_mdns)
    with Client(socks_proxy="127.0.0.1:9050") as client:
        with pytest.raises(NoPeers) as info:
            client.submit(hello_bytes)
    message = str(info.value)
    assert "discovery" in message and "SOCKS proxy" in message and "--peer" in message
    monkeypatch.setenv("PHASE_SOCKS_PROXY", "127.0.0.1:9050")
    with Client() as client:
        with pytest.raises(NoPeers, match="discovery"):
            client.peers()


def test_cli_proxy_refuses_discovery(hello_bytes, tmp_path):
    hello = tmp_path / "hello.wasm"
    hello.write_bytes(hello_bytes)
    out = _cli("submit", str(hello), "--socks-proxy", "127.0.0.1:9050")
    assert out.returncode == 2 and b"discovery" in out.stderr and b"--peer" in out.stderr, out.stderr
    out = _cli("peers", env={"PHASE_SOCKS_PROXY": "127.0.0.1:9050"})
    assert out.returncode == 2 and b"discovery" in out.stderr, out.stderr


# ---- (5) the proxy's text --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "127.0.0.1",
        "127.0.0.1:",
        ":9050",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "127.0.0.1:port",
        "socks5://127.0.0.1:9050",
        "socks5h://tor:9050",
        "a b:9050",
        "-tor:9050",
        "::1:9050",
        "[::1:9050",
        "[tor]:9050",
        "127.0.0.1:9050:1",
        "127.0.0.1:٩٠٥٠",
    ],
)
def test_bad_proxy_text_is_a_value_error(text):
    with pytest.raises(ValueError, match="SOCKS proxy"):
        parse_socks_proxy(text)
    with pytest.raises(ValueError, match="SOCKS proxy"):
        Client(peers=[], socks_proxy=text)


def test_proxy_precedence_and_good_forms(monkeypatch):
    assert parse_socks_proxy(" 127.0.0.1:9050 ") == "127.0.0.1:9050"
    assert parse_socks_proxy("[::1]:9050") == "[::1]:9050"
    assert parse_socks_proxy("tor.internal:09050") == "tor.internal:9050"
    assert resolve_socks_proxy(None, {}) is None
    assert resolve_socks_proxy(None, {"PHASE_SOCKS_PROXY": ""}) is None
    assert resolve_socks_proxy(None, {"PHASE_SOCKS_PROXY": "127.0.0.1:9050"}) == "127.0.0.1:9050"
    # an explicit value wins over the environment; "" means no proxy even when the variable is set
    assert resolve_socks_proxy("127.0.0.1:1080", {"PHASE_SOCKS_PROXY": "127.0.0.1:9050"}) == "127.0.0.1:1080"
    assert resolve_socks_proxy("", {"PHASE_SOCKS_PROXY": "127.0.0.1:9050"}) is None
    with pytest.raises(ValueError, match="PHASE_SOCKS_PROXY"):
        resolve_socks_proxy(None, {"PHASE_SOCKS_PROXY": "tor"})
    monkeypatch.setenv("PHASE_SOCKS_PROXY", "127.0.0.1:9050")
    with Client() as client:
        assert client.socks_proxy == "127.0.0.1:9050" and client.connect_timeout == 30.0
    with Client(socks_proxy="") as client:
        assert client.socks_proxy is None and client.connect_timeout == 2.0
    monkeypatch.setenv("PHASE_SOCKS_PROXY", "nonsense")
    with pytest.raises(ValueError, match="PHASE_SOCKS_PROXY"):
        Client()


def test_cli_bad_proxy_text_exits_2(hello_bytes, tmp_path):
    hello = tmp_path / "hello.wasm"
    hello.write_bytes(hello_bytes)
    out = _cli("submit", str(hello), "--peer", "a" * 52 + "@127.0.0.1:7000", "--socks-proxy", "tor")
    assert out.returncode == 2 and b"SOCKS proxy is HOST:PORT" in out.stderr, out.stderr
    out = _cli("submit", str(hello), "--peer", "a" * 52 + "@127.0.0.1:7000", env={"PHASE_SOCKS_PROXY": "tor"})
    assert out.returncode == 2 and b"PHASE_SOCKS_PROXY" in out.stderr, out.stderr
