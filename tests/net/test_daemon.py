"""plasmd itself: configuration, the address file, graceful SIGTERM, event logs."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from net_support import spin_input
from pyphase import Client
from pyphase.net.config import load_config


def test_help_and_help_config():
    out = subprocess.run([sys.executable, "-m", "pyphase.daemon", "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "--listen" in out.stdout and "--data-dir" in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "pyphase.daemon", "--help-config"], capture_output=True, text=True, timeout=30
    )
    assert "cache_bytes" in out.stdout and "[limits]" in out.stdout
    assert "``" not in out.stdout and "::" not in out.stdout, out.stdout  # plain text, not reST


def test_config_file_env_and_flags(tmp_path):
    cfg = tmp_path / "plasmd.toml"
    cfg.write_text(
        'listen = "127.0.0.1:9000"\nworkers = 3\ncache_bytes = "1MiB"\nmdns = false\n'
        '[limits]\nmemory = "32MiB"\ntimeout = "5s"\n'
    )
    c = load_config(cfg, env={})
    assert (c.listen, c.workers, c.cache_bytes, c.mdns) == ("127.0.0.1:9000", 3, 1 << 20, False)
    assert c.ceiling.memory_bytes == 32 << 20 and c.ceiling.timeout_ms == 5000
    c = load_config(cfg, env={"PLASMD_WORKERS": "5", "PLASMD_LIMITS_MEMORY": "8MiB"})
    assert c.workers == 5 and c.max_memory == 8 << 20
    c = load_config(cfg, env={"PLASMD_WORKERS": "5"}, workers=7)
    assert c.workers == 7
    defaults = load_config(None, env={})
    assert defaults.mdns and defaults.sandbox and defaults.listen.endswith(":7465")
    bad = tmp_path / "bad.toml"
    bad.write_text("colour = 'blue'\n")
    with pytest.raises(ValueError, match="unknown key"):
        load_config(bad, env={})


def test_bad_config_exits_2(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pyphase.daemon", "--listen", "nonsense:port", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and "plasmd:" in out.stderr


def test_address_file_identity_and_logs(start_nodes):
    (node,) = start_nodes(1)
    assert (node.data_dir / "address").read_text().strip() == node.address
    assert oct((node.data_dir / "identity.key").stat().st_mode & 0o777) == "0o600"
    listening = node.wait_event("listening")
    assert listening["address"] == node.address and listening["executor"] in ("sandbox", "thread")
    first_id = node.address.split("@")[0]
    assert node.terminate() == 0
    assert not (node.data_dir / "address").exists()
    node.close_pipes()
    node.start()
    assert node.address.split("@")[0] == first_id  # same identity after a restart


def test_sigterm_lets_running_jobs_finish(start_nodes, spin_bytes):
    (node,) = start_nodes(1)
    outcome = {}
    job_input = spin_input(60_000, b"finish me")  # about half a second
    with Client(peers=[node.address]) as client:
        client.submit(spin_bytes, spin_input(0))  # module cached, connection up

        def run():
            try:
                outcome["result"] = client.submit(spin_bytes, job_input, retries=0)
            except BaseException as exc:
                outcome["error"] = exc

        t = threading.Thread(target=run)
        t.start()
        node.wait_event_count("offer", 2)
        code = node.terminate()
        t.join(timeout=30)
    assert code == 0
    assert "error" not in outcome, outcome.get("error")
    assert outcome["result"].stdout == job_input
    names = [e["event"] for e in node.events()]
    assert names.index("stopping") < names.index("stopped")
    assert names.count("result") == 2


def test_offers_after_sigterm_are_rejected(start_nodes, spin_bytes, hello_bytes):
    (node,) = start_nodes(1, env={"PLASMD_SHUTDOWN_GRACE": "10s"})
    with Client(peers=[node.address]) as client:
        client.submit(spin_bytes, spin_input(0))
        t = threading.Thread(target=lambda: client.submit(spin_bytes, spin_input(100_000), retries=0))
        t.start()
        node.wait_event_count("offer", 2)
        node.proc.send_signal(15)
        node.wait_event("stopping")
        with Client(peers=[node.address]) as late:
            with pytest.raises(Exception, match="shutting_down|reachable|dropped"):
                late.submit(hello_bytes, retries=0)
        t.join(timeout=30)
    assert node.proc.wait(timeout=30) == 0


def _plasmd(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyphase.daemon", *args], capture_output=True, text=True, timeout=timeout
    )


def test_port_in_use_fails_fast_and_says_which(tmp_path):
    import json
    import socket
    import time

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        out = _plasmd(
            "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path), "--no-mdns", "--no-sandbox", timeout=20
        )
    assert time.monotonic() - started < 15
    assert out.returncode == 1, out.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr and "in use" in out.stderr, out.stderr
    assert out.stdout == ""
    events = [json.loads(line)["event"] for line in out.stderr.splitlines() if line.startswith("{")]
    assert "listening" not in events
    if "stopped" in events:
        assert "stopping" in events and events.index("stopping") < events.index("stopped"), events


def test_listen_needs_host_and_port(tmp_path):
    out = _plasmd("--listen", "7071", "--data-dir", str(tmp_path), "--no-mdns", timeout=20)
    assert out.returncode == 2, out.stderr
    assert "7071" in out.stderr and "127.0.0.1:7071" in out.stderr and "0.0.0.0:7071" in out.stderr, out.stderr
