"""The NAT lab itself (tests/net/natlab.py): each router behaves as the kind of NAT it claims to be.

Observed with real sockets in the namespaces: a UDP echo on the WAN reports the source address it sees.
"""

from __future__ import annotations

import sys

import pytest

from natlab import NatLab, natlab_skip_reason

pytestmark = pytest.mark.skipif(natlab_skip_reason() is not None, reason=natlab_skip_reason() or "")

# Answers every datagram with the source address it came from (what a STUN server tells).
ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
while True:
    data, src = s.recvfrom(100)
    s.sendto(f"{src[0]}:{src[1]}".encode(), src)
"""

# From one socket, asks both echo servers what they see; prints both answers.
ASK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(10)
for target in sys.argv[1:]:
    host, port = target.split(":")
    s.sendto(b"?", (host, int(port)))
    print(s.recvfrom(100)[0].decode())
"""

CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()
    print("connected")
except OSError as exc:
    print(type(exc).__name__)
"""


def _seen(lab: NatLab, host, echo_ports=(4001, 4002)) -> list[str]:
    return host.run([sys.executable, "-c", ASK, *(f"{lab.wan.ip}:{p}" for p in echo_ports)]).stdout.split()


def test_routers_masquerade_cone_and_symmetric_and_block_unsolicited() -> None:
    with NatLab() as lab:
        cone = lab.router("cone")
        sym = lab.router("sym", symmetric=True)
        h_cone = lab.host("hc", behind=cone)
        h_sym = lab.host("hs", behind=sym)
        wan_host = lab.host("w")
        for port in (4001, 4002):
            lab.wan.popen([sys.executable, "-c", ECHO, lab.wan.ip, str(port)])
        lab.wan.wait_listening(4001, udp=True)
        lab.wan.wait_listening(4002, udp=True)
        # masquerade: the WAN sees the router's address; a cone NAT keeps one external port per socket
        a, b = _seen(lab, h_cone)
        assert a.split(":")[0] == b.split(":")[0] == cone.wan_ip
        assert a.split(":")[1] == b.split(":")[1]
        # symmetric NAT: one socket, two destinations, two external ports
        a, b = _seen(lab, h_sym)
        assert a.split(":")[0] == b.split(":")[0] == sym.wan_ip
        assert a.split(":")[1] != b.split(":")[1]
        # a host on the WAN itself is seen as it is
        assert _seen(lab, wan_host)[0].split(":")[0] == wan_host.ip
        # nothing unsolicited gets in: a WAN host cannot reach a host behind a router, nor its private address
        server = h_cone.popen(
            [sys.executable, "-c", "import socket,time; s=socket.create_server(('0.0.0.0', 4100)); time.sleep(30)"]
        )
        h_cone.wait_listening(4100)
        assert h_cone.run([sys.executable, "-c", CONNECT, "127.0.0.1", "4100"]).stdout.strip() == "connected"
        for target in (cone.wan_ip, h_cone.ip):
            out = wan_host.run([sys.executable, "-c", CONNECT, target, "4100"]).stdout.strip()
            assert out != "connected", target
        server.kill()


def test_upnp_router_enables_forwarding_after_stun_and_lab_cleans_up() -> None:
    with NatLab() as lab:
        r = lab.router("r", upnp=True)
        log = lab.miniupnpd_log(r)
        assert "Port forwarding is now enabled" in log, log[-2000:]
        namespaces = [lab.wan.ns, r.ns]
    import subprocess

    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(ns in listed for ns in namespaces)


def test_a_lab_left_by_a_killed_process_is_swept() -> None:
    """A test killed with SIGKILL cannot clean up: the next lab deletes namespaces whose creator is gone."""
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"phlab-{dead.pid}-1-wan"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        with NatLab():
            listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
            assert stale not in listed.split()
    finally:
        subprocess.run(["ip", "netns", "delete", stale], capture_output=True)
