"""A Mainline DHT at scale on loopback: N libtorrent sessions over a few processes, Phase records and announces,
20% churn, lookups before and after.

    python bench/dht_sim.py --nodes 1000 --procs 4          # ~3 min on 2 shared cores; --nodes 100 for a quick one
    python -m pytest -m sim tests/net/test_dht_sim.py       # the same as a test (asserts >= 99% success)

Method. Node k listens on 127.<b>.<c>.1 (one /24 per node inside 127/8, so every libtorrent default is kept:
routing-table and search IP restrictions, node-id enforcement, rate limits) at one shared port. Sessions are
DHT only (no TCP/uTP, UPnP, NAT-PMP, LSD; the posix disk back end, so one thread each) and each is primed with
8 random others (what a big network's bootstrap reply gives). Then, from the coordinator (this process):

* findable: a fresh session (pyphase's ``Dht``) bootstraps from two nodes and puts its record; timed from
  creating the session until another client reads the record back verified.
* publish: --records nodes put a signed node record (BEP 44, salt ``phase/1``; waited for until libtorrent says
  each put is done) and announce their port under the shared rendezvous hash and under a hash of their own (so
  each announce is looked up on its own; announces post no completion, so 5 s are given).
* lookups (before churn, then after killing --churn of the other nodes at once, with no republish): a read-only
  client resolves every record (get + PyNaCl verification) and looks up every own-hash announce (libtorrent
  ``get_peers``); a lookup succeeds if it returns the right address. Stage 1's C lookup (``phase-dht
  --target``) runs the same announce lookups and reports hops (answers between bootstrap and the first peer).
  The rendezvous is timed until all --records announcers are found (N nodes from the rendezvous).
* cost: resident memory and threads of the worker processes, per session.

Nothing leaves 127/8 (PHASE_DHT_ALLOW is set as in the test suite; every session names its bootstrap nodes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ["PHASE_DHT_ALLOW"] = "127.0.0.0/8"
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pyphase.identity import Identity  # noqa: E402
from pyphase.net import dht, records  # noqa: E402

SECOND_OCTET = 200  # nodes live in 127.200.0.0 - 127.215.255.255; the tests' dht_support uses 127.60-119


def address(k: int) -> str:
    return f"127.{SECOND_OCTET + k // 250}.{k % 250 + 1}.1"


def proc_status() -> tuple[int, int]:
    rss = threads = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    return rss, threads


# ---- worker process: a share of the sessions ----------------------------------------------------------


def worker(conn: Any, indices: list[int], total: int, port: int, seed: int) -> None:
    import libtorrent as lt

    rng = random.Random(seed)
    base = proc_status()
    sessions: dict[int, Any] = {}
    for k in indices:
        boot = ",".join(f"{address(j)}:{port}" for j in rng.sample(range(total), 2))
        settings = {
            **dht.DHT_ONLY_SETTINGS,
            "listen_interfaces": f"{address(k)}:{port}",
            "dht_bootstrap_nodes": boot,
            "alert_mask": 0,
        }
        params = lt.session_params(settings)
        params.disk_io_constructor = "posix_disk_io_constructor"
        sessions[k] = lt.session(params)
    for k, s in sessions.items():
        for j in rng.sample(range(total), 8):
            if j != k:
                s.add_dht_node((address(j), port))
    conn.send(("ready", base, proc_status()))
    while True:
        cmd, arg = conn.recv()
        if cmd == "put":  # [(k, seed32, value)] -> nodes that stored each, once every put has finished
            pending = {}
            for k, seed32, value in arg:
                ident = Identity.from_seed(seed32)
                sessions[k].apply_settings({"alert_mask": int(lt.alert_category.dht | lt.alert_category.dht_operation)})
                sessions[k].dht_put_mutable_item(records.expanded_secret(ident), ident.public_key, value, records.SALT)
                pending[k] = None
            deadline = time.monotonic() + 60
            while any(v is None for v in pending.values()) and time.monotonic() < deadline:
                for k in [k for k, v in pending.items() if v is None]:
                    for a in sessions[k].pop_alerts():
                        if isinstance(a, lt.dht_put_alert):
                            pending[k] = int(a.num_success)
                time.sleep(0.05)
            for k in pending:
                sessions[k].apply_settings({"alert_mask": 0})
            conn.send(("stored", pending))
        elif cmd == "announce":  # [(k, info_hash, port)]
            for k, info_hash, p in arg:
                sessions[k].dht_announce(lt.sha1_hash(info_hash), p, 0)
            conn.send(("ok",))
        elif cmd == "kill":
            for k in arg:
                s = sessions.pop(k, None)
                if s is not None:
                    s.pause()
                    del s
            conn.send(("ok",))
        elif cmd == "stats":
            conn.send(("stats", proc_status(), len(sessions)))
        elif cmd == "quit":
            conn.send(("bye",))
            return


# ---- coordinator --------------------------------------------------------------------------------------


def pct(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(len(xs) * q))] if xs else float("nan")


def ms(s: float) -> str:
    return f"{s * 1000:.0f} ms"


def build_phase_dht() -> Path | None:
    out = ROOT / "build" / "phase-boot-sim"
    proc = subprocess.run(
        ["make", "-s", "-C", str(ROOT / "csrc" / "boot"), f"O={out}", f"SODIUM_PREFIX={ROOT / 'build' / 'libsodium-boot'}",
         f"PYTHON={sys.executable}"],
        capture_output=True, text=True,
    )  # fmt: skip
    return out / "phase-dht" if proc.returncode == 0 else None


class Sim:
    def __init__(self, nodes: int, procs: int, port: int) -> None:
        self.nodes, self.port = nodes, port
        self.alive = set(range(nodes))
        ctx = mp.get_context("spawn")
        self.conns = []
        self.procs = []
        self.owner: dict[int, int] = {}
        shares = [list(range(i, nodes, procs)) for i in range(procs)]
        for i, share in enumerate(shares):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=worker, args=(child, share, nodes, port, i + 1), daemon=True)
            p.start()
            self.conns.append(parent)
            self.procs.append(p)
            for k in share:
                self.owner[k] = i
        self.cost = []
        for c in self.conns:
            _, base, after = c.recv()
            self.cost.append((base, after))

    def each(self, cmd: str, per_worker: dict[int, list[Any]]) -> list[Any]:
        for i, arg in per_worker.items():
            self.conns[i].send((cmd, arg))
        return [self.conns[i].recv() for i in per_worker]

    def by_owner(self, items: list[Any], key: Any = lambda x: x[0]) -> dict[int, list[Any]]:
        out: dict[int, list[Any]] = {}
        for it in items:
            out.setdefault(self.owner[key(it)], []).append(it)
        return out

    def stats(self) -> list[Any]:
        return self.each("stats", {i: None for i in range(len(self.conns))})

    def close(self) -> None:
        for c in self.conns:
            try:
                c.send(("quit", None))
                c.recv()
            except (OSError, EOFError):
                pass
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.kill()


def lookups(
    client: dht.Dht, tool: Path | None, boots: list[str], published: list[dict], round_no: int
) -> dict[str, Any]:
    """Every record and own-hash announce looked up once, and once more if the first try missed (a client
    retries); success counted both ways. Stage 1's lookup runs as a booting machine would: from an address of
    its own (libtorrent blocks a source address above 5 queries/s for minutes, so a hundred lookups from one
    address in a row would be a flood) and from two random live nodes."""
    rec_first = rec_ok = ann_first = ann_ok = c_ok = 0
    rec_t: list[float] = []
    ann_t: list[float] = []
    hops: list[int] = []
    c_t: list[float] = []
    failures: list[str] = []

    def record(p: dict) -> bool:
        try:
            return client.get_record(p["pk"], timeout=10, settle=0).addresses == (p["addr"],)
        except Exception as exc:
            failures.append(f"record of node {p['k']}: {exc}")
            return False

    def announce(p: dict) -> bool:
        peers = client.get_peers(p["hash"], timeout=5, want=1)
        if (p["host"], p["port"]) not in peers:
            failures.append(f"announce of node {p['k']}: got {peers}")
            return False
        return True

    for i, p in enumerate(published):
        t = time.monotonic()
        first = record(p)
        rec_t.append(time.monotonic() - t)
        rec_first += first
        rec_ok += first or record(p)
        t = time.monotonic()
        first = announce(p)
        ann_t.append(time.monotonic() - t)
        ann_first += first
        ann_ok += first or announce(p)
        if tool is not None:
            proc = subprocess.run(
                [str(tool), "--target", p["hash"].hex(), "--bootstrap", random.choice(boots), "--timeout", "10",
                 "--source", f"127.{SECOND_OCTET + 18}.{i % 250 + 1}.{round_no}"],
                capture_output=True, text=True,
            )  # fmt: skip
            found = f"http://{p['host']}:{p['port']}" in proc.stdout.split()
            c_ok += found
            if not found:
                failures.append(f"phase-dht for node {p['k']}: {proc.stderr.strip()}")
            words = proc.stderr.replace(",", " ").split()
            if "hops" in words:
                hops.append(int(words[words.index("hops") - 1]))
            if "ms" in words:
                c_t.append(float(words[words.index("ms") - 1]) / 1000)
    n = len(published)
    return {
        "record_ok_first": rec_first / n, "record_ok": rec_ok / n, "record_p50": statistics.median(rec_t),
        "record_p90": pct(rec_t, 0.9),
        "announce_ok_first": ann_first / n, "announce_ok": ann_ok / n, "announce_p50": statistics.median(ann_t),
        "announce_p90": pct(ann_t, 0.9),
        "c_ok": c_ok / n if tool else None, "c_p50": statistics.median(c_t) if c_t else None,
        "hops_median": statistics.median(hops) if hops else None, "hops_max": max(hops) if hops else None,
        "failures": failures,
    }  # fmt: skip


def run(nodes: int, procs: int, n_records: int, churn: float, settle: float, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    port = 20000 + os.getpid() % 20000
    t0 = time.monotonic()
    sim = Sim(nodes, procs, port)
    made = time.monotonic() - t0
    result: dict[str, Any] = {"nodes": nodes, "procs": procs, "sessions_made_s": round(made, 1)}
    print(f"{nodes} sessions in {procs} processes made and primed in {made:.1f} s; settling {settle:.0f} s", flush=True)
    time.sleep(settle)
    tool = build_phase_dht()
    try:
        # what a session costs
        rss_added = sum(after[0] - base[0] for base, after in sim.cost)
        threads_added = sum(after[1] - base[1] for base, after in sim.cost)
        result["kib_per_session"] = round(rss_added / nodes)
        result["threads_per_session"] = round(threads_added / nodes, 2)
        print(f"cost: {rss_added / nodes:.0f} KiB and {threads_added / nodes:.2f} threads per session", flush=True)

        boot_ks = rng.sample(range(nodes), 2)  # the clients' bootstrap nodes: kept alive through the churn
        client_boot = [(address(k), port) for k in boot_ks]

        # findable: a fresh node bootstraps, publishes, another client reads it
        ident = Identity.generate()
        reader = dht.Dht(f"127.{SECOND_OCTET + 17}.1.1:0", client_boot, read_only=True)
        reader.wait_bootstrapped(10)
        t = time.monotonic()
        fresh = dht.Dht(f"127.{SECOND_OCTET + 17}.2.1:0", client_boot)
        fresh.wait_bootstrapped(10)
        _, stored = fresh.put_record(ident, records.encode_value(["127.0.0.1:7465"], ["wasm3"], {}))
        reader.get_record(ident.public_key, timeout=20, settle=0)
        result["findable_s"] = time.monotonic() - t
        result["findable_stored_on"] = stored
        print(f"fresh node findable: {ms(result['findable_s'])} (record stored on {stored} nodes)", flush=True)
        fresh.close()

        # publish
        publishers = rng.sample([k for k in range(nodes) if k not in boot_ks], n_records)
        published, puts, anns = [], [], []
        for k in publishers:
            seed32 = rng.randbytes(32)
            pk = Identity.from_seed(seed32).public_key
            host, p = address(k), 7000 + k % 1000
            value = records.encode_value([f"{host}:{p}"], ["wasm3"], {})
            own = hashlib.sha1(b"phase/1/sim/" + pk).digest()
            published.append({"k": k, "pk": pk, "addr": f"{host}:{p}", "host": host, "port": p, "hash": own})
            puts.append((k, seed32, value))
            anns += [(k, own, p), (k, dht.rendezvous_hash(), p)]
        stored_on = [n for reply in sim.each("put", sim.by_owner(puts)) for n in reply[1].values()]
        result["puts_stored_on_median"] = statistics.median(x or 0 for x in stored_on)
        result["puts_unfinished"] = sum(x is None for x in stored_on)
        sim.each("announce", sim.by_owner(anns))
        time.sleep(5)  # announces post no completion: give their traversals time

        def c_boots() -> list[str]:
            live = sorted(sim.alive)
            return [f"{address(a)}:{port},{address(b)}:{port}" for a, b in (rng.sample(live, 2) for _ in range(200))]

        def rendezvous() -> tuple[int, float]:
            t = time.monotonic()
            found = reader.get_peers(dht.rendezvous_hash(), timeout=30, want=n_records, rounds=3)
            mine = {(p["host"], p["port"]) for p in published}
            return len(mine & set(found)), time.monotonic() - t

        before = lookups(reader, tool, c_boots(), published, 1)
        got, took = rendezvous()
        before.update(rendezvous_found=f"{got}/{n_records}", rendezvous_s=took)
        result["before"] = before
        print(f"before churn: {json.dumps(before, default=str)}", flush=True)

        # churn: kill a share of the other nodes at once, no republish
        keep = set(publishers) | set(boot_ks)
        victims = rng.sample([k for k in range(nodes) if k not in keep], int(nodes * churn))
        sim.each("kill", sim.by_owner(victims, key=lambda k: k))
        sim.alive -= set(victims)
        result["killed"] = len(victims)
        print(f"killed {len(victims)} of {nodes} nodes", flush=True)
        after = lookups(reader, tool, c_boots(), published, 2)
        got, took = rendezvous()
        after.update(rendezvous_found=f"{got}/{n_records}", rendezvous_s=took)
        result["after"] = after
        print(f"after churn: {json.dumps(after, default=str)}", flush=True)
        print(
            f"ratios after/before churn (same run): record p50 {after['record_p50'] / before['record_p50']:.2f}x, "
            f"announce p50 {after['announce_p50'] / before['announce_p50']:.2f}x",
            flush=True,
        )
        stats = sim.stats()
        result["worker_rss_kib"] = sum(s[1][0] for s in stats)
        result["worker_threads"] = sum(s[1][1] for s in stats)
        reader.close()
    finally:
        sim.close()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--records", type=int, default=100, help="nodes that publish a record and announce")
    ap.add_argument("--churn", type=float, default=0.2)
    ap.add_argument("--settle", type=float, default=20.0, help="seconds for routing tables to fill before publishing")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", metavar="FILE", help="also write the figures here")
    args = ap.parse_args()
    result = run(args.nodes, args.procs, args.records, args.churn, args.settle, args.seed)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
