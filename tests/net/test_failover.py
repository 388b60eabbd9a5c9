"""Failover: a node killed mid-job, nodes that cheat, hang or are gone -> the job completes elsewhere, once."""

from __future__ import annotations

import threading
import time

import pytest

from net_support import spin_input
from pyphase import Client
from pyphase.errors import NetworkError


def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def test_sigkill_mid_job_result_from_another_node_once(start_nodes, spin_bytes):
    nodes = start_nodes(2)
    by_id = {n.address.split("@")[0]: n for n in nodes}
    job_input = spin_input(150_000, b"kill-me")  # ~1 s of work
    outcome: dict = {}
    client = Client(peers=[n.address for n in nodes])
    client.submit(spin_bytes, spin_input(0))  # warm: connections up, module cached on one node
    for n in nodes:
        client.submit(spin_bytes, spin_input(0))

    def run() -> None:
        try:
            outcome["result"] = client.submit(spin_bytes, job_input, timeout=30)
        except BaseException as exc:  # surfaced by the assertion below
            outcome["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    victim = wait_for(lambda: next((n for n in nodes if _has_running_offer(n)), None), what="the job offered")
    victim.kill()
    t.join(timeout=60)
    client.close()
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert result.stdout == job_input
    survivor = by_id[result.peer]
    assert survivor is not victim
    assert any(peer == victim.address.split("@")[0] and "dropped" in why for peer, why in result.attempts), (
        result.attempts
    )
    # exactly once: the survivor produced this result once, and the client returned one result
    assert sum(1 for r in survivor.events("result") if r["job"] == _last_offer_job(survivor)) == 1


def _has_running_offer(node) -> bool:
    offers = node.events("offer")
    results = {r["job"] for r in node.events("result")}
    return any(o["job"] not in results for o in offers)


def _last_offer_job(node) -> str:
    return node.events("offer")[-1]["job"]


@pytest.mark.parametrize("misbehave", ["forge-receipt", "mismatch-stdout", "wrong-signer"])
def test_bad_receipts_rejected_and_retried_elsewhere(start_nodes, hello_bytes, misbehave):
    (bad,) = start_nodes(1, misbehave=misbehave, sandbox=False)
    (good,) = start_nodes(1, sandbox=False)
    bad_id = bad.address.split("@")[0]
    with Client(peers=[bad.address]) as alone:
        with pytest.raises(NetworkError, match="bad receipt"):
            alone.submit(hello_bytes, input=b"abc", retries=0)
    seen_bad = False
    for i in range(20):  # fresh clients know nothing of either node, so each picks one at random first
        with Client(peers=[bad.address, good.address]) as client:
            result = client.submit(hello_bytes, input=b"job%d" % i)
        assert result.stdout == (b"job%d" % i)[::-1]
        assert result.peer == good.address.split("@")[0]
        seen_bad |= any(peer == bad_id and "bad receipt" in why for peer, why in result.attempts)
        if seen_bad:
            break
    assert seen_bad


def test_hanging_node_times_out_and_job_moves(start_nodes, hello_bytes):
    (hung,) = start_nodes(1, misbehave="hang", sandbox=False)
    (good,) = start_nodes(1, sandbox=False)
    with Client(peers=[hung.address]) as alone:
        with pytest.raises(NetworkError, match="timed out"):
            alone.submit(hello_bytes, input=b"x", timeout=0.5, retries=0)
    with Client(peers=[hung.address, good.address]) as client:
        for i in range(6):
            result = client.submit(hello_bytes, input=b"ab", timeout=2.0)
            assert result.stdout == b"ba" and result.peer == good.address.split("@")[0]


def test_dead_and_unknown_peers_are_skipped(start_nodes, hello_bytes):
    (good,) = start_nodes(1)
    (dead,) = start_nodes(1)
    dead.kill()
    with Client(peers=[dead.address, good.address]) as client:
        for _ in range(3):
            assert client.submit(hello_bytes, input=b"abc").stdout == b"cba"


def test_node_restart_reuses_client_connection(start_nodes, hello_bytes):
    (node,) = start_nodes(1)
    with Client(peers=[node.address]) as client:
        assert client.submit(hello_bytes, input=b"12").stdout == b"21"
        node.restart()
        assert client.submit(hello_bytes, input=b"34", retries=5).stdout == b"43"


def test_busy_node_rejects_and_client_backs_off(start_nodes, spin_bytes):
    (node,) = start_nodes(1, workers=1, sandbox=False, env={"PLASMD_QUEUE": "0"})
    results: dict = {}

    def run(i: int) -> None:
        with Client(peers=[node.address]) as client:
            try:
                results[i] = client.submit(spin_bytes, spin_input(20_000, b"%d" % i), retries=20).stdout
            except BaseException as exc:
                results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(results[i] == spin_input(20_000, b"%d" % i) for i in range(3)), results
    assert any(r["reason"] == "busy" for r in node.events("reject"))
