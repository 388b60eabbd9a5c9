"""The node's HTTP/JSON API against real plasmd processes: examples, every documented error, the token rule."""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import wasm_build

from pyphase import verify_receipt
from pyphase.api import openapi

HELLO = Path(__file__).resolve().parents[2] / "examples" / "hello" / "hello.wasm"


def hello_job(**extra: Any) -> dict[str, Any]:
    return {"module": base64.b64encode(HELLO.read_bytes()).decode(), "input_text": "Hello, World", **extra}


def test_job_here_end_to_end(api_nodes: Callable[..., list[Any]]) -> None:
    (api,) = api_nodes()
    status, job, _ = api.call("POST", "/v1/jobs", hello_job(wait=True))
    assert status == 200, job
    assert job["state"] == "done" and job["status"] == "ok" and job["exit_code"] == 0
    assert job["stdout_text"] == "dlroW ,olleH" and job["stdout_bytes"] == 12
    peer_id = api.node.address.split("@")[0]
    assert job["peer"] == peer_id
    status, stdout, headers = api.call("GET", f"/v1/jobs/{job['id']}/stdout")
    assert (status, stdout, headers["Content-Type"]) == (200, b"dlroW ,olleH", "application/octet-stream")
    status, receipt, _ = api.call("GET", f"/v1/jobs/{job['id']}/receipt")
    verify_receipt(receipt, signer=peer_id, stdout=stdout, stderr=b"", input=b"Hello, World", module=HELLO.read_bytes())
    assert receipt["job_id"] == job["job_id"]
    # the node's history has it too, with the same receipt, and so do its receipts
    status, history, _ = api.call("GET", "/v1/history?limit=5")
    assert history["jobs"][0]["receipt"] == receipt and history["jobs"][0]["status"] == "ok"
    assert api.call("GET", "/v1/receipts")[1]["receipts"] == [receipt]
    assert api.call("GET", "/v1/jobs")[1]["jobs"][0]["id"] == job["id"]
    status, node, _ = api.call("GET", "/v1/node")
    assert node["peer_id"] == peer_id and node["address"] == api.node.address and node["api"] == api.url
    assert node["capabilities"]["max_limits"]["module_bytes"] > 0 and "load" in node["capabilities"]


def test_job_without_wait_is_followed_to_the_end(api_nodes: Callable[..., list[Any]]) -> None:
    (api,) = api_nodes()
    status, job, _ = api.call("POST", "/v1/jobs", hello_job(args=["x"], env={"K": "V"}, limits={"timeout_ms": 5000}))
    assert status == 202 and job["state"] in ("queued", "running", "done")
    deadline = time.monotonic() + 30
    while job["state"] not in ("done", "failed") and time.monotonic() < deadline:
        time.sleep(0.02)
        job = api.call("GET", f"/v1/jobs/{job['id']}")[1]
    assert job["state"] == "done" and job["stdout_text"] == "dlroW ,olleH"


def test_job_sent_to_the_network(api_nodes: Callable[..., list[Any]]) -> None:
    gateway, worker = api_nodes(2)
    status, job, _ = gateway.call(
        "POST", "/v1/jobs", hello_job(wait=True, where="network", peers=[worker.node.address])
    )
    assert status == 200 and job["state"] == "done", job
    assert job["stream"] is False  # a network job streams only when asked: a failure mid-job then fails over
    assert job["peer"] == worker.node.address.split("@")[0]
    assert worker.call("GET", "/v1/history")[1]["jobs"][0]["job_id"] == job["job_id"]
    assert gateway.call("GET", "/v1/history")[1]["jobs"] == []  # the gateway ran nothing itself
    peers = gateway.call("GET", "/v1/peers")[1]["peers"]
    assert [p["address"] for p in peers if p["source"] == "jobs"] == [worker.node.address]


def test_failed_network_job_says_why(api_nodes: Callable[..., list[Any]]) -> None:
    (api,) = api_nodes()
    dead = api.node.address.split("@")[0] + "@127.0.0.1:9"
    status, job, _ = api.call("POST", "/v1/jobs", hello_job(wait=True, where="network", peers=[dead]))
    assert status == 200 and job["state"] == "failed"
    # a peer never reached is named with the reason (NoPeers is a NetworkError)
    assert job["error"].startswith("NoPeers: no peer could take the job") and job["attempts"]
    assert "connection refused at 127.0.0.1:9" in job["error"]
    status, body, _ = api.call("GET", f"/v1/jobs/{job['id']}/stdout")
    assert status == 409 and body["error"] == "not_finished" and "failed" in body["detail"]


@pytest.mark.parametrize(
    "case",
    [
        "bad_json",
        "not_object",
        "schema",
        "base64",
        "both_inputs",
        "media_type",
        "oversize",
        "module_too_big",
        "unknown_job",
        "bad_limit",
        "unknown_route",
        "peers_here",
        "bad_job_id",
    ],
)
def test_errors_are_clear_json(api_nodes: Callable[..., list[Any]], case: str) -> None:
    (api,) = api_nodes(
        extra=("--config", str(_small_config(api_nodes))) if case in ("oversize", "module_too_big") else ()
    )
    calls: dict[str, tuple[Any, ...]] = {
        "bad_json": ("POST", "/v1/jobs", None, b"{not json", 400, "bad_json", "not JSON"),
        "not_object": ("POST", "/v1/jobs", [1, 2], None, 400, "bad_request", "JobRequest"),
        "schema": (
            "POST",
            "/v1/jobs",
            hello_job(limits={"memory_bytes": -1}),
            None,
            400,
            "bad_request",
            "memory_bytes",
        ),
        "base64": ("POST", "/v1/jobs", {"module": "!!!"}, None, 400, "bad_request", "module must match pattern"),
        "both_inputs": ("POST", "/v1/jobs", hello_job(input="AA=="), None, 400, "bad_request", "not both"),
        "media_type": ("POST", "/v1/jobs", None, b"x=1", 415, "unsupported_media_type", "application/json"),
        "oversize": ("POST", "/v1/jobs", {"module": "A" * (5 << 20)}, None, 413, "too_big", "exceeded"),
        "module_too_big": ("POST", "/v1/jobs", {"module": "A" * (3 << 20)}, None, 413, "too_big", "module exceeds"),
        "unknown_job": ("GET", "/v1/jobs/" + "0" * 32, None, None, 404, "not_found", "no job"),
        "bad_limit": ("GET", "/v1/history?limit=0", None, None, 400, "bad_request", "limit"),
        "unknown_route": ("GET", "/v2/nothing", None, None, 404, "not_found", "Not Found"),
        "peers_here": ("POST", "/v1/jobs", hello_job(peers=["x"]), None, 400, "bad_request", "where=network"),
        "bad_job_id": ("GET", "/v1/jobs/zz/receipt", None, None, 404, "not_found", "no job"),
    }
    method, path, body, raw, want_status, want_code, want_text = calls[case]
    headers = {"Content-Type": "application/x-www-form-urlencoded"} if case == "media_type" else None
    status, answer, got = api.call(method, path, body, raw=raw, headers=headers)
    assert status == want_status, answer
    assert got["Content-Type"].startswith("application/json")
    assert answer["error"] == want_code and want_text in answer["detail"], answer
    assert api.call("GET", "/v1/node")[0] == 200  # and the node goes on


def _small_config(api_nodes: Any) -> Path:
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"plasmd-small-{os.getpid()}-{random.randrange(1 << 30)}.toml"
    path.write_text('[limits]\nmodule = "1MiB"\ninput = "1MiB"\n')
    return path


def test_openapi_is_served_and_shipped(api_nodes: Callable[..., list[Any]]) -> None:
    (api,) = api_nodes()
    status, doc, _ = api.call("GET", "/openapi.json")
    assert status == 200 and doc == openapi() and doc["openapi"] == "3.1.0"
    served = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    for method, path in served:
        probe = path.replace("{id}", "0" * 32)
        status, _, _ = api.call(method, probe, {} if method == "POST" else None)
        assert status != 405 and (status != 404 or "{id}" in path), (method, path, status)


def test_api_beyond_loopback_needs_the_token(tmp_path: Path) -> None:
    """In a network namespace of its own (a bridge with no ports, nothing leaves): the node and its client talk
    over 10.x, a non-loopback address, so the token rule applies; loopback inside the namespace does not."""
    ip = shutil.which("ip")
    if os.geteuid() != 0 or ip is None:
        pytest.skip("needs root and iproute2 for a network namespace")
    ns = f"phase-api-{os.getpid()}-{random.randrange(1 << 20):05x}"
    net = f"10.79.{random.randint(1, 254)}"

    def run(*args: str) -> None:
        subprocess.run([ip, *args], check=True, capture_output=True, timeout=30)

    run("netns", "add", ns)
    node = None
    try:
        run("-n", ns, "link", "set", "lo", "up")
        run("-n", ns, "link", "add", "br0", "type", "bridge")
        run("-n", ns, "addr", "add", f"{net}.1/24", "dev", "br0")
        run("-n", ns, "link", "set", "br0", "up")
        data = tmp_path / "node"
        node = subprocess.Popen(
            [
                ip,
                "netns",
                "exec",
                ns,
                sys.executable,
                "-m",
                "pyphase.daemon",
                "--listen",
                f"{net}.1:0",
                "--api",
                f"{net}.1:0",
                "--data-dir",
                str(data),
                "--no-mdns",
                "--workers",
                "1",
            ],
            stdout=subprocess.PIPE,
            stderr=open(tmp_path / "log", "wb"),
        )
        assert node.stdout is not None and node.stdout.readline(), (tmp_path / "log").read_text()
        url = (data / "api").read_text().strip()
        token_file = data / "api_token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        probe = (
            "import json, sys, urllib.request, urllib.error\n"
            "req = urllib.request.Request(sys.argv[1], headers=json.loads(sys.argv[2]))\n"
            "try:\n    r = urllib.request.urlopen(req, timeout=10); print(r.status, r.read().decode())\n"
            "except urllib.error.HTTPError as e:\n    print(e.code, e.read().decode())\n"
        )

        def get(headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
            out = subprocess.run(
                [ip, "netns", "exec", ns, sys.executable, "-c", probe, url + "/v1/node", json.dumps(headers)],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout
            code, _, body = out.partition(" ")
            return int(code), json.loads(body)

        status, body = get({})
        assert status == 401 and body["error"] == "unauthorized" and "api_token" in body["detail"]
        assert get({"Authorization": "Bearer wrong"})[0] == 401
        status, body = get({"Authorization": f"Bearer {token}"})
        assert status == 200 and body["address"].endswith(f"{net}.1:" + body["address"].rsplit(":", 1)[1])
    finally:
        if node is not None:
            node.terminate()
            node.wait(timeout=20)
        subprocess.run([ip, "netns", "del", ns], capture_output=True, timeout=30)


def test_loopback_api_writes_no_token(api_nodes: Callable[..., list[Any]]) -> None:
    (api,) = api_nodes()
    assert not (api.node.data_dir / "api_token").exists()
    assert api.url.startswith("http://127.0.0.1:")


def test_connections_beyond_the_cap_are_refused(api_nodes: Callable[..., list[Any]], tmp_path: Path) -> None:
    import socket

    config = tmp_path / "cap.toml"
    config.write_text("api_max_connections = 3\n")
    (api,) = api_nodes(extra=("--config", str(config)))
    host, port = api.url.removeprefix("http://").rsplit(":", 1)
    idle = [socket.create_connection((host, int(port)), timeout=5) for _ in range(4)]  # open, never asking
    try:
        time.sleep(0.3)
        status, body, _ = api.call("GET", "/v1/node")
        assert status == 503 and body["error"] == "too_many_connections"
    finally:
        for s in idle:
            s.close()
    deadline = time.monotonic() + 10
    while api.call("GET", "/v1/node")[0] != 200:  # the cap frees as connections close
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_private_mode_keeps_history_in_memory(api_nodes: Callable[..., list[Any]]) -> None:
    (api,) = api_nodes(extra=("--ephemeral",))
    status, job, _ = api.call("POST", "/v1/jobs", hello_job(wait=True))
    assert status == 200 and job["state"] == "done"
    assert api.call("GET", "/v1/history")[1]["jobs"][0]["job_id"] == job["job_id"]
    assert not (api.node.data_dir / "history.sqlite").exists()


def test_peers_found_on_the_lan_are_listed(api_nodes: Callable[..., list[Any]]) -> None:
    """mDNS bound to 127.0.0.1 (other sessions' nodes may show up too: only B is looked for)."""
    a, b = api_nodes(2, mdns=True)
    wanted = b.node.address.split("@")[0][:16]
    deadline = time.monotonic() + 20
    while True:
        peers = a.call("GET", "/v1/peers")[1]["peers"]
        if any(p["source"] == "mdns" and p["name"].startswith(wanted) for p in peers):
            break
        assert time.monotonic() < deadline, peers
        time.sleep(0.2)


def test_a_body_that_never_arrives_is_given_up(api_nodes: Callable[..., list[Any]], tmp_path: Path) -> None:
    import socket

    config = tmp_path / "slow.toml"
    config.write_text('api_body_timeout = "1s"\n')
    (api,) = api_nodes(extra=("--config", str(config)))
    host, port = api.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(
            b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
        )
        t0 = time.monotonic()
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
    assert 0.8 < time.monotonic() - t0 < 8
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408") and json.loads(body)["error"] == "timeout"
    assert api.call("GET", "/v1/node")[0] == 200


def _loaded(pid: int, library: str) -> bool:
    return library in Path(f"/proc/{pid}/maps").read_text()


def test_an_idle_node_loads_aiohttp_only_when_asked(api_nodes) -> None:
    """The API's port answers from the start, but its HTTP stack costs memory (about 8 MB) only once used:
    aiohttp's C parts are not mapped into an idle node, and are after the first request."""
    (api,) = api_nodes(1)
    assert api.node.proc is not None
    pid = api.node.proc.pid
    assert not _loaded(pid, "/aiohttp/") and not _loaded(pid, "/multidict/")
    status, body, _ = api.call("GET", "/v1/node")
    assert status == 200 and body["api"] == api.url
    assert _loaded(pid, "/aiohttp/")
    status, text, _ = api.call("GET", "/metrics")
    assert status == 200 and b"phase_cache_hits_total 0.0" in text


def test_the_daemon_imports_neither_http_stack_nor_metrics_library() -> None:
    """Both are loaded on first use (pyphase/api/services.py, pyphase/metrics.py); so are the schema compiler
    and importlib's metadata and resources readers, with the email, zipfile, tempfile, bz2, lzma they bring
    (pyphase/schemas, pyphase/engines.py, pyphase/api/__init__.py): an idle node needs none of them."""
    lazy = {
        "aiohttp",
        "prometheus_client",
        "libtorrent",
        "fastjsonschema",
        "importlib.metadata",
        "importlib.resources",
        "email",
        "zipfile",
        "tempfile",
    }
    # What the interpreter loaded before pyphase (a site .pth may import certifi, which reads importlib.resources)
    # is not the daemon's doing.
    code = f"import sys; before = set(sys.modules); import pyphase.daemon; print(sorted({lazy!r} & (set(sys.modules) - before)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _events(api: Any, job_id: str) -> Iterator[tuple[float, str, dict[str, Any]]]:
    """Read ``/v1/jobs/{id}/events`` as it comes: (seconds since the request, event, parsed data)."""
    start = time.monotonic()
    with urllib.request.urlopen(f"{api.url}/v1/jobs/{job_id}/events", timeout=60) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
        event = data = None
        for raw in resp:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
            elif line == "" and event is not None:
                yield time.monotonic() - start, event, data
                event = data = None


def _collect(api: Any, job_id: str) -> tuple[dict[str, bytes], list[tuple[float, str]], dict[str, Any]]:
    out = {"stdout": b"", "stderr": b""}
    seen, end = [], None
    for at, event, data in _events(api, job_id):
        seen.append((at, event))
        if event == "end":
            end = data
        else:
            assert data["offset"] == len(out[event])  # in order, nothing lost
            out[event] += base64.b64decode(data["data"])
    assert end is not None and seen[-1][1] == "end"
    return out, seen, end


def test_output_streams_as_server_sent_events_while_the_job_runs(api_nodes: Callable[..., list[Any]]) -> None:
    (api,) = api_nodes()
    drip = wasm_build.build_c("drip.c").read_bytes()
    body = {"module": base64.b64encode(drip).decode(), "args": ["5", "500"], "limits": {"timeout_ms": 30000}}
    status, job, _ = api.call("POST", "/v1/jobs", body)
    assert status == 202
    out, seen, end = _collect(api, job["id"])
    assert out == {
        "stdout": b"".join(b"tick %d\n" % i for i in range(5)),
        "stderr": b"tock 1\ntock 3\n",
    }
    first = next(at for at, event in seen if event == "stdout")
    assert first < seen[-1][0] - 1.0  # the first tick came while 4 pauses of 0.5 s were still to run
    assert end["state"] == "done" and end["status"] == "ok" and end["engine"] == "wasm3" and end["stream"] is True
    # what was streamed is what the receipt covers
    _, receipt, _ = api.call("GET", f"/v1/jobs/{job['id']}/receipt")
    verify_receipt(receipt, signer=api.node.address.split("@")[0], stdout=out["stdout"], stderr=out["stderr"])
    # a reader that comes after the end gets all of it from offset 0, then the end
    assert _collect(api, job["id"])[0] == out
    status, error, _ = api.call("GET", "/v1/jobs/" + "0" * 32 + "/events")
    assert status == 404 and error["error"] == "not_found"


def test_a_failed_job_ends_its_event_stream_with_the_reason(api_nodes: Callable[..., list[Any]]) -> None:
    (api,) = api_nodes()
    dead = api.node.address.split("@")[0] + "@127.0.0.1:9"
    status, job, _ = api.call("POST", "/v1/jobs", hello_job(where="network", peers=[dead]))
    out, seen, end = _collect(api, job["id"])
    assert out == {"stdout": b"", "stderr": b""} and [e for _, e in seen] == ["end"]
    assert end["state"] == "failed" and end["error"].startswith(("NoPeers", "NetworkError")), end


def _free_port_with_room() -> int:
    """A free port P with P + 1 and P + 1000 free too (checked, not reserved: others may race for them)."""
    import socket

    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 1000 > 65535:
            continue
        try:
            for p in (port + 1, port + 1000, port + 1001):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port with room after it")


def test_nodes_on_consecutive_ports_each_get_an_api(tmp_path: Path) -> None:
    """The API's default port is far from phase/1's, so nodes on ports P and P + 1 both start (acceptance's
    remote.sh starts three so); a taken default means a free port and a note in the log, not a failed start."""
    import socket

    from net_support import NodeProc, loopback_host

    port = _free_port_with_room()
    nodes = [NodeProc(tmp_path / f"n{i}", loopback_host()) for i in range(3)]
    held = socket.socket()
    try:
        held.bind(("127.0.0.1", port + 1002))  # node 2's default API port, taken by someone else
        held.listen(1)
        for i, node in enumerate(nodes):
            node.port = port + i
            node.start()
        urls = [(node.data_dir / "api").read_text().strip() for node in nodes]
        assert urls[:2] == [f"http://127.0.0.1:{port + 1000}", f"http://127.0.0.1:{port + 1001}"]
        assert urls[2] != f"http://127.0.0.1:{port + 1002}"
        assert "(the default) is taken" in nodes[2].log_path.read_text()
        for node, url in zip(nodes, urls):
            with urllib.request.urlopen(url + "/v1/node", timeout=30) as resp:
                assert json.load(resp)["address"] == node.address
    finally:
        held.close()
        for node in nodes:
            node.stop()


def test_a_network_job_streams_when_asked(api_nodes: Callable[..., list[Any]]) -> None:
    gateway, worker = api_nodes(2)
    drip = wasm_build.build_c("drip.c").read_bytes()
    body = {"module": base64.b64encode(drip).decode(), "args": ["4", "500"], "where": "network"}
    status, job, _ = gateway.call("POST", "/v1/jobs", {**body, "peers": [worker.node.address], "stream": True})
    out, seen, end = _collect(gateway, job["id"])
    assert end["state"] == "done" and end["peer"] == worker.node.address.split("@")[0]
    assert out["stdout"] == b"tick 0\ntick 1\ntick 2\ntick 3\n"
    assert next(at for at, event in seen if event == "stdout") < seen[-1][0] - 0.7
