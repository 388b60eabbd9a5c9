"""Attacks a stranger can make on a node or a client over loopback, each against real processes
(issue 10, "A node that survives the open Internet"). Each test is bounded in time and in connections,
and checks the node still serves an honest client at once afterwards."""

from __future__ import annotations

import os
import threading
import time

import msgpack
import pytest
import zmq
import zmq.utils.z85
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyphase import Client, Identity
from pyphase.errors import NetworkError
from pyphase.limits import Limits
from pyphase.manifest import make_manifest
from pyphase.net import wire

from attackers import BIG_OUTPUT, predicted_routing_ids
from test_robustness import Raw, header


def _claim_routing_ids(node, hello_bytes) -> list[Raw]:
    """The attack of issue 10: peers claim the ids libzmq would hand the next anonymous connections (computed
    as an attacker would, from an unseeded ``rand()``); then honest (anonymous) clients connect."""
    claims = []
    for rid in predicted_routing_ids(6):
        raw = Raw(node.address, routing_id=rid)
        raw.send([header(t="caps?")])
        assert raw.recv() is not None and node.alive
        claims.append(raw)
    try:
        for _ in range(3):  # several anonymous connections walk the counter over the claimed ids
            with Client(peers=[node.address]) as client:
                assert client.submit(hello_bytes, input=b"abc", retries=0).stdout == b"cba"
        for _ in range(10):  # and more, each answered on its own connection
            anonymous = Raw(node.address)
            anonymous.send([header(t="caps?")])
            claims.append(anonymous)
            msg = anonymous.recv()
            assert msg is not None and msg.type == "caps"
    except (NetworkError, AssertionError):
        pass  # the node died: the callers say whether it should have
    return claims


def test_claimed_routing_id_cannot_crash_the_node(tmp_path, hello_bytes):
    """Attack 1, against a node whose libzmq counter is predictable on purpose: no id a peer claims is used
    (the node assigns every connection's id through ZAP), so nothing collides with libzmq's own."""
    from net_support import NodeProc, loopback_host

    node = NodeProc(tmp_path / "node", loopback_host(), sandbox=False, misbehave="predictable-routing-ids").start()
    claims: list[Raw] = []
    try:
        claims = _claim_routing_ids(node, hello_bytes)
        assert node.alive, node.log_tail()
        with Client(peers=[node.address]) as client:
            assert client.submit(hello_bytes, input=b"abc", retries=0).stdout == b"cba"
    finally:
        for raw in claims:
            raw.close()
        node.stop()


def test_claimed_routing_id_attack_is_real(tmp_path, hello_bytes):
    """The same attack on the node as it was (peers keep their claimed ids, counter unseeded) aborts it in
    libzmq (socket_base.cpp add_out_pipe): the test above tests something. If a libzmq release fixes
    router_t::identify_peer, this fails, and the ZAP-assigned ids become defence in depth only."""
    from net_support import NodeProc, loopback_host

    node = NodeProc(tmp_path / "node", loopback_host(), sandbox=False, misbehave="peer-routing-ids").start()
    claims: list[Raw] = []
    try:
        claims = _claim_routing_ids(node, hello_bytes)
        deadline = time.monotonic() + 5
        while node.alive and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not node.alive
        assert "Assertion failed" in node.log_tail()
    finally:
        for raw in claims:
            raw.close()
        node.stop()


def test_a_claimed_routing_id_is_never_used(start_nodes, hello_bytes):
    """Two peers claim the same routing id: each still gets its own answers (the node assigned each its own
    id; with claimed ids libzmq would have ignored the second peer)."""
    node = start_nodes(1, sandbox=False)[0]
    a, b = Raw(node.address, routing_id=b"same"), Raw(node.address, routing_id=b"same")
    try:
        for raw in (a, b):
            raw.send([header(t="caps?")])
            msg = raw.recv()
            assert msg is not None and msg.type == "caps"
    finally:
        a.close()
        b.close()


def _flood_then_close(node, connections: int = 4, messages: int = 2000) -> None:
    """More messages than a bounded receive queue holds, all there at once, from connections already closed:
    libzmq stops reading each on its full queue, sees the peer gone (_io_error) when it writes an answer there,
    and its next heartbeat asserts !_io_error (stream_engine_base.cpp:310, libzmq #4841). All there at once: the
    node is paused (SIGSTOP) while the connections send and close, so its kernel holds every byte for it."""
    import signal

    frame = header(t="caps?")
    raws = [Raw(node.address, source="127.0.0.96") for _ in range(connections)]
    for raw in raws:  # connected and authenticated first (the handshake needs the running node)
        raw.send([frame])
        assert raw.recv() is not None
    node.proc.send_signal(signal.SIGSTOP)
    try:
        for raw in raws:
            raw.sock.linger = 2000  # every message goes out before the close
            for _ in range(messages):
                raw.send([frame])
        for raw in raws:
            raw.close()
        time.sleep(2.5)  # a heartbeat falls due meanwhile
    finally:
        node.proc.send_signal(signal.SIGCONT)


def test_a_full_receive_queue_then_a_close_cannot_abort_the_node(tmp_path, hello_bytes):
    """The libzmq abort on a connection closed while its reading was stopped: the node has no receive queue
    limit (RECEIVE_QUEUE_LIMIT), so its reading never stops; the traffic that aborts a socket with a limit
    (tests/net/test_receive_queue.py) leaves it serving, past two more heartbeats."""
    from net_support import NodeProc, loopback_host

    node = NodeProc(tmp_path / "node", loopback_host(), sandbox=False).start()
    try:
        _flood_then_close(node)
        time.sleep(4.5)  # two more heartbeats (2 s apart)
        assert node.alive, node.log_tail()
        with Client(peers=[node.address]) as client:
            assert client.submit(hello_bytes, input=b"abc", retries=0).stdout == b"cba"
    finally:
        node.stop()


IDLE_CLIENT_FLOOD = """
import sys, threading, time
import zmq, zmq.utils.z85
from pyphase import Client, Identity
identity = Identity.generate()
ctx = zmq.Context()
sock = ctx.socket(zmq.ROUTER)
sock.linger = 2000
sock.curve_server = True
pub, sec = identity.curve_keypair()
sock.curve_publickey, sock.curve_secretkey = zmq.utils.z85.encode(pub), zmq.utils.z85.encode(sec)
port = sock.bind_to_random_port("tcp://127.0.0.1")
client = Client(peers=[f"{identity.peer_id}@127.0.0.1:{port}"])
peers = []
def serve():
    while not peers or sock.poll(100):
        if sock.poll(50):
            peers.append(sock.recv_multipart()[0])
server = threading.Thread(target=serve)
server.start()
try:
    client.submit(open(sys.argv[1], "rb").read(), input=b"x", timeout=1.5, retries=0)
except Exception as exc:
    print("submit failed:", type(exc).__name__, flush=True)
server.join()
for _ in range(3000):  # the client is idle now: it reads nothing
    sock.send_multipart([peers[0], b"x" * 100])
time.sleep(0.1)
sock.close()
time.sleep(3.5)  # three of the client's heartbeats
client.close()
print("client alive", flush=True)
"""


def test_a_hostile_node_flooding_an_idle_client_then_leaving_cannot_abort_it(hello_bytes, tmp_path):
    """The same libzmq abort from the other side: a peer that never answers the job sends an idle ``Client``
    3,000 messages, then closes. With libzmq's default receive queue (1,000) the client process aborted
    (``!_io_error``) at its next heartbeat; with RECEIVE_QUEUE_LIMIT it lives on."""
    import subprocess
    import sys

    module = tmp_path / "hello.wasm"
    module.write_bytes(hello_bytes)
    done = subprocess.run(
        [sys.executable, "-c", IDLE_CLIENT_FLOOD, str(module)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "client alive" in done.stdout, (done.returncode, done.stderr[-2000:])


def curve_router(ctx: zmq.Context, identity: Identity) -> tuple[zmq.Socket, str]:
    """A CURVE server ROUTER of ``identity`` on a free loopback port, and its address ``PEERID@127.0.0.1:PORT``."""
    sock = ctx.socket(zmq.ROUTER)
    sock.linger = 0
    pub, sec = identity.curve_keypair()
    sock.curve_server = True
    sock.curve_publickey, sock.curve_secretkey = zmq.utils.z85.encode(pub), zmq.utils.z85.encode(sec)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    return sock, f"{identity.peer_id}@127.0.0.1:{port}"


IDLE_CLIENT_HOLD = """
import sys, time
from pyphase import Client
client = Client(peers=[sys.argv[1]])
try:
    client.submit(open(sys.argv[2], "rb").read(), input=b"x", timeout=1.0, retries=0)
except Exception as exc:
    print("submit failed:", type(exc).__name__, flush=True)
print("idle", flush=True)
time.sleep(float(sys.argv[3]))  # idle: no call reads the peer
status = open("/proc/self/status").read()
print("peak", int(next(x.split()[1] for x in status.splitlines() if x.startswith("VmHWM:"))) << 10, flush=True)
print("why", client.failures().get(sys.argv[1], ""), flush=True)
client.close()
"""


def test_what_a_hostile_node_sends_an_idle_client_is_bounded(hello_bytes, tmp_path):
    """Between calls nothing read a peer's messages and libzmq kept them all (no receive limit, for the abort
    above): a node the client once used could grow it without bound, 64 KiB at a time. Now an idle reader drops
    them and disconnects a peer that sends more than the idle allowance (pyphase.net.client.IDLE_BYTES)."""
    import subprocess
    import sys

    from pyphase.net.client import IDLE_BYTES

    module = tmp_path / "hello.wasm"
    module.write_bytes(hello_bytes)
    identity = Identity.generate()
    ctx = zmq.Context()
    sock, address = curve_router(ctx, identity)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    flood_bytes = 512 << 20
    proc = subprocess.Popen(
        [sys.executable, "-c", IDLE_CLIENT_HOLD, address, str(module), "6"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert sock.poll(10_000), "the client never offered its job"
        peer = sock.recv_multipart()[0]
        while proc.stdout.readline().strip() != "idle":
            pass
        sent, gone, block = 0, False, [peer, b"x" * (64 << 10)]
        deadline = time.monotonic() + 20
        while sent < flood_bytes and time.monotonic() < deadline:
            try:
                sock.send_multipart(block, zmq.NOBLOCK)
                sent += len(block[1])
            except zmq.Again:
                time.sleep(0.001)
            except zmq.ZMQError as exc:
                assert exc.errno == zmq.EHOSTUNREACH
                gone = True  # the client closed the connection
                break
        out = proc.communicate(timeout=30)[0]
    finally:
        proc.kill()
        sock.close()
        ctx.term()
    peak = int(out.split("peak ")[1].split()[0])
    # the router may not see the close while its queue to the client is full (libzmq keeps the pipe): the
    # client's own word and its memory are what count
    assert sent < flood_bytes, (sent, gone, out)
    assert peak < 160 << 20, f"the idle client grew to {peak >> 20} MiB while {sent >> 20} MiB were sent to it"
    assert "unasked while the client was idle" in out, out
    assert sent >= IDLE_BYTES


# ---- a hostile peer beside an honest one: the client moves on ---------------------------------------


class HostilePeer:
    """A real CURVE ROUTER with its own identity that answers every message with ``answer(tag)`` frames."""

    def __init__(self) -> None:
        self.identity = Identity.generate()
        self.ctx = zmq.Context()
        self.sock, self.address = curve_router(self.ctx, self.identity)
        self.answer: object = None
        self.offers = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            if not self.sock.poll(50):
                continue
            frames = self.sock.recv_multipart()
            rid, head = frames[0], frames[1]
            try:
                msg = msgpack.unpackb(head)
            except Exception:
                continue
            tag = msg.get("job", b"") if isinstance(msg, dict) else b""
            if isinstance(msg, dict) and msg.get("t") == "caps?":  # looks like any node until it is used
                caps = {"peer_id": self.identity.peer_id, "load": {"running": 0, "queued": 0, "workers": 4}}
                self.sock.send_multipart([rid, *wire.encode("caps", caps=caps)])
                continue
            if isinstance(msg, dict) and msg.get("t") == "offer":
                self.offers += 1
            answer = self.answer
            frames_out = answer(tag) if callable(answer) else None
            if frames_out is not None:
                self.sock.send_multipart([rid, *frames_out])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        self.ctx.term()


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    from net_support import NodeProc, loopback_host

    n = NodeProc(tmp_path_factory.mktemp("abuse") / "node", loopback_host(), sandbox=False).start()
    yield n
    n.stop()


@pytest.fixture(scope="module")
def hostile():
    peer = HostilePeer()
    yield peer
    peer.close()


def _hostile_first(client: Client, honest) -> None:
    """Make the client try the hostile peer first: the honest one looks as if it failed a moment ago."""
    client.peers()
    for peer_id, peer in client._peers.items():
        peer.down_until = time.monotonic() + 0.05 if honest.address.startswith(peer_id) else 0.0


def test_mixed_key_header_moves_the_job_on(honest, hostile, hello_bytes):
    """Attack 6: a header mixing a text key and a bytes key it does not know raised TypeError out of submit."""
    hostile.answer = lambda tag: [
        msgpack.packb({"v": 1, "t": "accept", "job": tag, "module": False, "x": 1, b"y": 2}, use_bin_type=True)
    ]
    with Client(peers=[hostile.address, honest.address]) as client:
        for _ in range(3):
            offers = hostile.offers
            _hostile_first(client, honest)
            result = client.submit(hello_bytes, input=b"abc", timeout=5, retries=2)
            assert result.stdout == b"cba" and hostile.offers == offers + 1
            assert "malformed answer" in result.attempts[0][1]


_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.floats(allow_nan=True),
        st.text(max_size=8),
        st.binary(max_size=8),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(st.text(max_size=6), st.binary(max_size=6)), inner, max_size=3),
    ),
    max_leaves=8,
)
_answers = st.tuples(
    st.sampled_from(["accept", "reject", "result", "error", "caps", "offer", "bogus"]),
    st.dictionaries(
        st.sampled_from(["module", "reason", "detail", "load", "receipt", "code", "caps", "x", "v"]),
        _values,
        max_size=4,
    ),
    st.dictionaries(st.binary(min_size=1, max_size=4), _values, max_size=2),
    st.lists(st.binary(max_size=16), max_size=3),
    st.booleans(),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_answers)
def test_any_hostile_answer_is_a_failed_attempt(honest, hostile, hello_bytes, answer):
    """Whatever a peer answers (types, fields, field types, byte keys, payload frames), submit either
    returns the honest node's verified result or raises NetworkError: never another exception."""
    type_, fields, byte_keys, payloads, echo_tag = answer

    def reply(tag: bytes) -> list[bytes]:
        head = {"v": 1, "t": type_, **fields, **byte_keys}
        if echo_tag:
            head["job"] = tag
        return [msgpack.packb(head, use_bin_type=True), *payloads]

    hostile.answer = reply
    with Client(peers=[hostile.address, honest.address]) as client:
        _hostile_first(client, honest)
        try:
            result = client.submit(hello_bytes, input=b"abc", timeout=3, retries=2)
        except NetworkError:
            return
        assert result.stdout == b"cba" and result.peer == honest.address.split("@")[0]


# ---- logs ------------------------------------------------------------------------------------------


def test_malformed_headers_do_not_amplify_the_log(honest, hello_bytes):
    """Attack 5: headers with 4 x 60 KiB of zeros in ``v`` were each logged in full (49 MB became 246 MB)."""
    before = honest.log_path.stat().st_size
    raw = Raw(honest.address)
    sent = 0
    try:
        big = msgpack.packb({"v": [b"\0" * (60 << 10)] * 4, "t": "caps?"}, use_bin_type=True)
        for _ in range(200):
            raw.send([big])
            sent += len(big)
        replies = 0
        while replies < 200 and raw.recv(timeout_ms=5000) is not None:
            replies += 1
    finally:
        raw.close()
    with Client(peers=[honest.address]) as client:  # the node still answers
        assert client.submit(hello_bytes, input=b"ok").stdout == b"ko"
    grown = honest.log_path.stat().st_size - before
    assert grown < sent / 100, f"{sent} bytes sent grew the log by {grown}"


# ---- fair shares -----------------------------------------------------------------------------------


def _offer(raw: Raw, tag: bytes, module: bytes, data: bytes, **manifest_options) -> None:
    raw.send(wire.encode("offer", (data,), job=tag, manifest=make_manifest(module, data, **manifest_options)))


def _rss_and_fds(pid: int) -> tuple[int, int]:
    status = open(f"/proc/{pid}/status").read()
    rss = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) << 10
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def test_offers_waiting_for_modules_do_not_hold_the_node(start_nodes, hello_bytes):
    """Attack 2: 70 offers for modules the node lacks, never followed by the module; then a disconnect.
    Every honest job was rejected busy for 40 s."""
    node = start_nodes(1, sandbox=False)[0]
    raw = Raw(node.address, source="127.0.0.90")
    for i in range(70):
        _offer(raw, b"w%d" % i, os.urandom(64), b"x" * 300)
    assert raw.recv() is not None  # the node has read them
    with Client(peers=[node.address]) as client:  # while the attacker is still connected
        assert client.submit(hello_bytes, input=b"abc", retries=0).stdout == b"cba"
    raw.close()
    with Client(peers=[node.address]) as client:  # and after it left
        assert client.submit(hello_bytes, input=b"abc", retries=0).stdout == b"cba"
    keys = [Raw(node.address, source="127.0.0.91") for _ in range(20)]  # fresh keys, one address
    try:
        for n, k in enumerate(keys):
            for i in range(4):
                _offer(k, b"k%d" % i, os.urandom(64), b"y")
        with Client(peers=[node.address]) as client:
            assert client.submit(hello_bytes, input=b"abc", retries=0).stdout == b"cba"
    finally:
        for k in keys:
            k.close()


def test_jobs_of_a_client_that_left_are_dropped(start_nodes, spin_bytes, hello_bytes):
    """Attack 3: 66 jobs that spin to their 1 s timeout, then the client goes: honest clients got busy or
    timed out until the backlog drained (33 s)."""
    from net_support import spin_input

    node = start_nodes(1, sandbox=False)[0]
    with Client(peers=[node.address]) as client:
        client.submit(spin_bytes, spin_input(0))  # the module is cached
    raw = Raw(node.address, source="127.0.0.92")
    for i in range(66):
        _offer(raw, b"s%d" % i, spin_bytes, spin_input(10_000_000), limits=Limits(timeout_ms=1000))
    assert raw.recv() is not None
    raw.close()
    node.wait_event("cancelled")
    with Client(peers=[node.address]) as client:
        t = time.monotonic()
        assert client.submit(hello_bytes, input=b"abc", retries=0).stdout == b"cba"
        assert time.monotonic() - t < 5


GONE_CLIENT = """
import struct, sys, time
sys.path.insert(0, {here!r})
import zmq
from attackers import Conn
from pyphase.limits import Limits
from pyphase.net import wire

spin = open({spin!r}, "rb").read()
conn = Conn(zmq.Context(), {address!r}, "127.0.0.91")
for i in range(2):
    conn.offer(b"r%d" % i, spin, struct.pack("<I", 10_000_000), limits=Limits(timeout_ms=30_000))
accepted = 0
while accepted < 2:
    for msg in conn.drain(5000):
        if msg.type == "accept":
            accepted += 1
            if msg["module"]:
                conn.send(wire.encode("module", (spin,), job=msg["job"]))
print("accepted", flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("leaves", ["killed", "frozen"])
def test_running_jobs_of_a_client_that_left_are_stopped(start_nodes, spin_bytes, hello_bytes, tmp_path, leaves):
    """A client process starts two jobs that would spin for 30 s on both workers, then is killed (its
    connection closes) or frozen (SIGSTOP: its heartbeats stop). The node stops both jobs, says so
    (``cancelled``, state running) and an honest job runs at once instead of 30 s later."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    node = start_nodes(1, workers=2)[0]
    spin = tmp_path / "spin.wasm"
    spin.write_bytes(spin_bytes)
    code = GONE_CLIENT.format(here=str(Path(__file__).parent), spin=str(spin), address=node.address)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"accepted\n"
        time.sleep(1.0)  # both jobs running
        proc.send_signal(signal.SIGKILL if leaves == "killed" else signal.SIGSTOP)
        cancelled = node.wait_event_count("cancelled", 2, timeout=20)  # heartbeats time out after 6 s
        assert [e["state"] for e in cancelled] == ["running", "running"], cancelled
        t = time.monotonic()
        with Client(peers=[node.address]) as client:
            assert client.submit(hello_bytes, input=b"abc", retries=0).stdout == b"cba"
        assert time.monotonic() - t < 5
        assert not node.events("abandoned") and node.alive
    finally:
        proc.kill()
        proc.wait()


def test_one_clients_backlog_does_not_starve_another(start_nodes, spin_bytes, hello_bytes):
    """A client that keeps its share of the queue full: another client's job runs within about one turn."""
    from net_support import spin_input

    node = start_nodes(1, sandbox=False)[0]
    with Client(peers=[node.address]) as client:
        client.submit(spin_bytes, spin_input(0))
    hogs = [Raw(node.address, source=f"127.0.0.{93 + i}") for i in range(2)]
    try:
        for n, hog in enumerate(hogs):
            for i in range(8):
                _offer(hog, b"h%d" % i, spin_bytes, spin_input(10_000_000), limits=Limits(timeout_ms=500))
        time.sleep(0.3)
        with Client(peers=[node.address]) as client:
            t = time.monotonic()
            assert client.submit(hello_bytes, input=b"abc", retries=0).stdout == b"cba"
            waited = time.monotonic() - t
        # FIFO would have run the 16 jobs ahead of it first (8 s on 2 workers); turns put it after about one round
        assert waited < 3, waited
    finally:
        for hog in hogs:
            hog.close()


def test_a_spinning_strangers_worker_yields_the_cpu(start_nodes, spin_bytes, hello_bytes):
    """A stranger's job that has used ``job_demote_after`` of CPU runs at a lower priority for the rest of it;
    the node, its fork server and the workers of short jobs keep theirs (a plain ``job_nice`` for every worker
    made the honest jobs wait too)."""
    from demotion import BASE_NICE, demoted
    from net_support import spin_input
    from pyphase.sandbox.demote import children

    node = start_nodes(1, env={"PLASMD_JOB_DEMOTE_AFTER": "50ms"})[0]
    (server,) = [pid for pid in children(node.proc.pid) if b"sandbox" in open(f"/proc/{pid}/cmdline", "rb").read()]
    with Client(peers=[node.address]) as client:
        client.submit(spin_bytes, spin_input(0))  # the module is cached
        for _ in range(10):
            assert client.submit(hello_bytes, input=b"abc", retries=0).stdout == b"cba"
        assert not any(demoted(pid) for pid in children(server))
        raw = Raw(node.address, source="127.0.0.97")
        try:
            _offer(raw, b"spin", spin_bytes, spin_input(10_000_000), limits=Limits(timeout_ms=5000))
            deadline = time.monotonic() + 4
            while not any(demoted(pid) for pid in children(server)):
                assert time.monotonic() < deadline, "the spinning job's worker kept its priority"
                time.sleep(0.01)
            assert client.submit(hello_bytes, input=b"abc", retries=0).stdout == b"cba"  # on the other worker
            assert sum(demoted(pid) for pid in children(server)) == 1
            for pid in (node.proc.pid, server):
                assert os.getpriority(os.PRIO_PROCESS, pid) == BASE_NICE
        finally:
            raw.close()
    assert node.alive


# ---- bounded memory --------------------------------------------------------------------------------


def test_results_nobody_reads_do_not_fill_memory(start_nodes, wat, hello_bytes):
    """Attack 4: a client asks for 16 MiB outputs and never reads: plasmd grew from 32 MB to 2.4 GB in 45 s."""
    import struct

    module = wat(BIG_OUTPUT)
    node = start_nodes(1, sandbox=False)[0]
    raw = Raw(node.address, source="127.0.0.95")
    raw.sock.setsockopt(zmq.RCVBUF, 4096)  # and its libzmq reads nothing ahead: TCP pushes back on the node
    raw.sock.setsockopt(zmq.RCVHWM, 1)
    data = struct.pack("<I", 256)  # 16 MiB of stdout per job
    limits = Limits(output_bytes=16 << 20, timeout_ms=10_000)
    peak = 0
    try:
        deadline = time.monotonic() + 12
        i = 0
        while time.monotonic() < deadline:
            for _ in range(8):
                _offer(raw, b"o%d" % i, module, data, limits=limits)
                i += 1
            if i == 8:  # the first offer asks for the module
                time.sleep(0.2)
                raw.send(wire.encode("module", (module,), job=b"o0"))
            time.sleep(0.25)
            peak = max(peak, _rss_and_fds(node.proc.pid)[0])
        with Client(peers=[node.address]) as client:
            assert client.submit(hello_bytes, input=b"abc", retries=0).stdout == b"cba"
    finally:
        raw.close()
    assert node.events("abandoned"), node.log_tail()
    assert peak < 256 << 20, f"plasmd peak RSS {peak >> 20} MiB"


def test_float_size_is_refused(honest, hello_bytes):
    """Smaller: a float size (1234.0) passed the schema, the job ran, and the node failed to answer."""
    raw = Raw(honest.address)
    try:
        manifest = make_manifest(hello_bytes, b"in")
        manifest["module"]["size"] = float(manifest["module"]["size"])
        raw.send(wire.encode("offer", (b"in",), job=b"f1", manifest=manifest))
        reply = raw.recv()
        assert reply is not None and reply.type == "reject" and reply["reason"] == "bad_manifest", reply
        assert "float" in reply["detail"]
    finally:
        raw.close()


def test_expired_inputs_give_their_memory_back(start_nodes, hello_bytes):
    """Smaller: the memory of 66 pending 16 MiB inputs was not given back after they expired."""
    node = start_nodes(1, sandbox=False, env={"PLASMD_MODULE_WAIT": "1s"})[0]
    base = _rss_and_fds(node.proc.pid)[0]
    data = os.urandom(8 << 20)
    raws = [Raw(node.address, source=f"127.0.0.{100 + i}") for i in range(5)]
    try:
        for n, raw in enumerate(raws):
            for i in range(2):
                _offer(raw, b"p%d" % i, os.urandom(64), data)
            for i in range(2):
                reply = raw.recv()
                assert reply is not None and reply.type == "accept", reply
        held = _rss_and_fds(node.proc.pid)[0]
        node.wait_event_count("module_timeout", 10, timeout=10)
        time.sleep(0.5)
        after = _rss_and_fds(node.proc.pid)[0]
    finally:
        for raw in raws:
            raw.close()
    assert held - base > 24 << 20, (base, held)  # the inputs were really held
    assert after - base < 16 << 20, f"{(after - base) >> 20} MiB still held after the inputs expired"


# ---- descriptors -----------------------------------------------------------------------------------


def test_idle_connections_from_one_address_are_capped(start_nodes, hello_bytes):
    """Attack 7: about 1,000 idle CURVE connections made a node with a 1,024 open-file limit unreachable.
    Here the node starts with a soft limit of 256 (hard 4096) and one address opens 120 connections (the cap is 64)."""
    node = start_nodes(1, sandbox=False, prefix=("prlimit", "--nofile=256:4096"))[0]
    limits = open(f"/proc/{node.proc.pid}/limits").read()
    assert "Max open files            4096                 4096" in limits, limits
    raws = [Raw(node.address, source="127.0.0.120") for _ in range(120)]
    try:
        for raw in raws:
            try:  # a refused connection has no pipe left: a blocking send would wait for ever
                raw.sock.send_multipart([header(t="caps?")], zmq.NOBLOCK)
            except zmq.Again:
                pass
        answered = sum(1 for raw in raws if raw.recv(timeout_ms=50) is not None)
        assert answered <= 64 + 1, answered
        assert node.events("refused")
        with Client(peers=[node.address]) as client:
            assert client.submit(hello_bytes, input=b"abc", retries=0).stdout == b"cba"
    finally:
        for raw in raws:
            raw.close()


def _job(raw: Raw, tag: bytes, module: bytes, data: bytes) -> wire.Message:
    """Offer a job on ``raw`` (sending the module when the node asks for it); the node's final answer."""
    _offer(raw, tag, module, data)
    while True:
        msg = raw.recv(timeout_ms=15_000)
        assert msg is not None, f"no answer to job {tag!r}"
        if msg.type != "accept":
            return msg
        if msg["module"]:
            raw.send(wire.encode("module", (module,), job=tag))


def test_descriptor_exhaustion_at_job_start_is_refused_then_recovers(start_nodes, hello_bytes):
    """With no descriptor free (the node's open-file limit lowered under it to 3: every descriptor it holds
    stays, no new one can be made), a job whose module must be stored, and jobs whose sandbox worker channel
    cannot be taken, are refused ``busy`` saying why: never a signed ``crashed``, never silence, never a
    crash. With the limit back, the same connection runs jobs again, and no descriptor leaked."""
    import resource

    node = start_nodes(1)[0]  # sandboxed: a job's worker channel is a descriptor the node receives
    pid = node.proc.pid
    raw = Raw(node.address)
    other = hello_bytes + b"\x00\x05\x04salt"  # a custom section: a module the node has not stored
    try:
        assert _job(raw, b"warm", hello_bytes, b"abc").type == "result"
        time.sleep(0.5)  # spare workers set up
        before = _rss_and_fds(pid)[1]
        limits = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (3, limits[1]))
        try:
            msg = _job(raw, b"new", other, b"abc")
            assert msg.type == "reject" and msg["reason"] == "busy", msg.fields
            assert "cannot store the module" in msg["detail"], msg["detail"]
            answers = [_job(raw, b"j%d" % i, hello_bytes, b"abc") for i in range(8)]
        finally:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, limits)
        for msg in answers:
            if msg.type == "result":  # a spare worker already set up before the squeeze
                assert msg["receipt"]["status"] == "ok", msg["receipt"]
            else:
                assert msg.type == "reject" and msg["reason"] == "busy", msg.fields
                assert "file descriptors" in msg["detail"], msg["detail"]
        assert sum(msg.type == "reject" for msg in answers) >= 4  # at most 2 workers per slot were ready
        assert node.alive, node.log_tail()
        for i in range(4):
            assert _job(raw, b"again%d" % i, hello_bytes, b"abc").type == "result"
        assert _job(raw, b"new2", other, b"abc").type == "result"
        time.sleep(0.5)
        assert _rss_and_fds(pid)[1] <= before + 2
    finally:
        raw.close()


def test_a_boot_store_under_trickled_headers_leaves_phase1_jobs_alone(start_nodes, hello_bytes, tmp_path):
    """Attack 8 on ``plasmd --boot-store``: 1,100 connections sending their headers a byte at a time cost a thread
    and a descriptor each and took the node's descriptors, so ``phase/1`` jobs failed too. Now, on a node whose
    open-file limit is 512 (hard), 1,200 trickling connections from 4 addresses (reopened whenever the server
    closes them) get their capped slots or a 503, the boot server stays within the descriptors the node reserves
    for it (it took 265 when it accepted everything and answered 503), and every honest job meanwhile succeeds."""
    import resource

    from attackers import TrickledBootHeaders, make_boot_store

    from pyphase.boot.server import DEFAULT_MAX_CONNECTIONS

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))  # this process holds 1,200
    make_boot_store(tmp_path / "store", 1 << 20)
    node = start_nodes(
        1,
        prefix=("prlimit", "--nofile=512:512"),
        extra=("--boot-store", str(tmp_path / "store"), "--boot-listen", "127.0.0.1:0", "--no-api"),
    )[0]
    boot = node.events("boot_serving")[0]["url"].removeprefix("http://")
    idle_fds = len(os.listdir(f"/proc/{node.proc.pid}/fd"))
    attackers = [TrickledBootHeaders(node.address, f"127.0.3.{i + 1}", {}, boot) for i in range(4)]
    for attack in attackers:
        attack.connections = 300
        attack.start()
    try:
        time.sleep(1.5)  # all of them open and trickling
        peak_fds, results = 0, []
        with Client(peers=[node.address]) as client:
            for _ in range(20):
                results.append(client.submit(hello_bytes, input=b"abc", retries=0).stdout)
                peak_fds = max(peak_fds, len(os.listdir(f"/proc/{node.proc.pid}/fd")))
        opened = sum(a.count for a in attackers)
    finally:
        for attack in attackers:
            attack.stop()
    assert results == [b"cba"] * 20 and node.alive
    assert opened > 1200, opened  # the server closed (503) most of them and they came back
    assert peak_fds - idle_fds <= 2 * DEFAULT_MAX_CONNECTIONS + 8, (idle_fds, peak_fds)  # its reserved budget
    deadline = time.monotonic() + 5  # the connections still in the kernel's backlog are closed first
    while (status := http_get(boot, "/boot/manifest.json")) != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert status == 200
    assert not node.events("internal_error")


def http_get(hostport: str, path: str) -> int:
    import http.client

    host, port = hostport.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        c.request("GET", path)
        return c.getresponse().status
    finally:
        c.close()
