"""Honest clients under abuse: what each attack of issue 10 costs the honest clients of one ``plasmd``.

    python bench/abuse_bench.py [--seconds 10] [--clients 2] [--executor sandbox|thread] [--only all]

Method: one node (2 job workers, default settings, ``--boot-store`` serving a 16 MB artifact over HTTP) on
127.0.0.x. The reference is the honest load alone, measured in the same run: ``--clients`` threads, each with
its own ``Client``, submitting examples/hello/hello.wasm back to back (module cached, receipt verified) for
``--seconds``, and an honest boot client fetching the boot manifest every 0.1 s. Then the same load again while
each attacker of tests/net/attackers.py runs beside it from its own loopback address (claimed routing ids,
offers never followed by their module, spinning jobs whose client left, 16 MiB results never read, malformed
240 KiB headers, 300 idle connections; on the boot server, attack 8: 34 slow readers from 34 addresses and
1,100 connections trickling their headers), and once with the six phase/1 attacks at the same time.
For each: honest p50/p99 latency and success rate, the p99 as a ratio to the unattacked p99, plasmd's
peak RSS and open descriptors (sampled every 50 ms) and its CPU use (100 % = one core), and, from the node's
log, where the honest jobs' time went inside the node: p99 from offer to start (queued) and of the run; and
the share of the honest boot fetches answered 200 (the others: 503 "too many connections", or no answer); and
"attack offers", the attackers' offers the node accepted (how much of the job-running attacks got through), and
"demoted", the job workers the node moved to the lowest CPU priority (``job_demote_after``).

Goal (issue 10): every honest job succeeds, p99 under 10x the unattacked p99, RSS under 256 MB.
Caveats: attackers, honest clients and node share this machine's cores, so some of the slowdown is CPU the
attackers' own processes take (each attacker runs in a process of its own); nothing here fails on a number.

``--attackers-cgroup WEIGHT``: a real attacker's client processes run on its own machines, not beside the node.
With it, every attacked case is measured twice in the same run, alternating: once as above, and once with the
attacker *client* processes (not the node, not the jobs they make it run) in a cgroup of their own with CPU weight
WEIGHT (the default is 100: cgroup v2 ``cpu.weight``, or cgroup v1 ``cpu.shares`` scaled to 1024), created under
the CPU controller's root and removed at the end (needs root; without it the bench says why and measures only the
plain cases). ``--job-demote-after``: the node's ``job_demote_after`` (docs/NETWORK.md), for A/B runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "net"), str(ROOT / "tests")]

from attackers import (  # noqa: E402
    ATTACKS,
    BIG_OUTPUT,
    BOOT_ATTACKS,
    HONEST_KEYS,
    AttackProcess,
    BootFetcher,
    Sampler,
    honest_load,
    make_boot_store,
    percentile,
)
from net_support import SPIN_ECHO, NodeProc  # noqa: E402

HELLO = ROOT / "examples" / "hello" / "hello.wasm"
BOOT_ARTIFACT_BYTES = 16 << 20
CGROUP_NAME = "phase-abuse-attackers"


class CpuCgroup:
    """A cgroup with a low CPU weight for the attackers' client processes, made under the root of the CPU
    controller's hierarchy (cgroup v2 with ``cpu`` enabled, else v1's ``cpu``) and removed by :meth:`close`.
    ``CpuCgroup.make(weight)`` returns it, or a sentence saying why it cannot be made here."""

    def __init__(self, path: Path, v2: bool, parent: Path, enabled_cpu: bool) -> None:
        self.path, self.v2, self.parent, self._enabled_cpu = path, v2, parent, enabled_cpu

    @classmethod
    def make(cls, weight: int) -> CpuCgroup | str:
        v2_root = v1_root = None
        try:
            mounts = Path("/proc/self/mountinfo").read_text().splitlines()
        except OSError as exc:
            return f"no /proc/self/mountinfo ({exc})"
        for line in mounts:
            fields, _, super_fields = line.partition(" - ")
            where, (fstype, _, options) = Path(fields.split()[4]), super_fields.split()[:3]
            if fstype == "cgroup2" and v2_root is None:
                v2_root = where
            elif fstype == "cgroup" and "cpu" in options.split(","):
                v1_root = where
        enabled_cpu = False
        try:
            if v2_root is not None and "cpu" in (v2_root / "cgroup.controllers").read_text().split():
                if "cpu" not in (v2_root / "cgroup.subtree_control").read_text().split():
                    (v2_root / "cgroup.subtree_control").write_text("+cpu")
                    enabled_cpu = True
                path, v2 = v2_root / CGROUP_NAME, True
                path.mkdir(exist_ok=True)
                (path / "cpu.weight").write_text(str(weight))
                root = v2_root
            elif v1_root is not None:
                path, v2 = v1_root / CGROUP_NAME, False
                path.mkdir(exist_ok=True)
                (path / "cpu.shares").write_text(str(max(2, weight * 1024 // 100)))
                root = v1_root
            else:
                return "no cgroup hierarchy with the cpu controller is mounted"
        except OSError as exc:
            return f"cannot make a cgroup with the cpu controller here ({exc.strerror}: {exc.filename}; root needed)"
        return cls(path, v2, root, enabled_cpu)

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def close(self) -> None:
        """Move what is left in it back to its parent, remove it, and undo the controller we enabled."""
        try:
            for pid in (self.path / "cgroup.procs").read_text().split():
                try:
                    (self.parent / "cgroup.procs").write_text(pid)
                except OSError:
                    pass  # gone meanwhile
            self.path.rmdir()
        except OSError as exc:
            print(f"could not remove the cgroup {self.path}: {exc}", file=sys.stderr)
        if self._enabled_cpu:
            try:
                (self.parent / "cgroup.subtree_control").write_text("-cpu")
            except OSError:
                pass  # another cgroup uses it now


def run(
    seconds: float,
    clients: int,
    sandbox: bool,
    only: str = "",
    keep_log: str = "",
    attackers_weight: int = 0,
    demote_after: str = "",
) -> None:
    cgroup: CpuCgroup | None = None
    if attackers_weight:
        made = CpuCgroup.make(attackers_weight)
        if isinstance(made, str):
            print(f"--attackers-cgroup: {made}; measuring without it", file=sys.stderr)
        else:
            cgroup = made
    try:
        _run(seconds, clients, sandbox, only, keep_log, cgroup, attackers_weight, demote_after)
    finally:
        if cgroup is not None:
            cgroup.close()


def _run(
    seconds: float,
    clients: int,
    sandbox: bool,
    only: str,
    keep_log: str,
    cgroup: CpuCgroup | None,
    weight: int,
    demote_after: str,
) -> None:
    import wasm_build

    modules = {"spin": wasm_build.build_wat(SPIN_ECHO), "big_output": wasm_build.build_wat(BIG_OUTPUT)}
    hello = HELLO.read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        modules["boot_path"] = make_boot_store(Path(tmp) / "store", BOOT_ARTIFACT_BYTES).encode()
        extra = ("--boot-store", str(Path(tmp) / "store"), "--boot-listen", "127.0.0.2:0")
        env = {"PLASMD_JOB_DEMOTE_AFTER": demote_after} if demote_after else {}
        node = NodeProc(Path(tmp) / "node", "127.0.0.2", sandbox=sandbox, extra=extra, env=env).start()
        boot = node.events("boot_serving")[0]["url"].removeprefix("http://")
        api = node.events("api_listening")[0]["url"]
        try:
            honest_load(node.address, hello, 1.0, clients)  # warm up: module cached, connections up
            rows = []
            cases: list[tuple[str, list[type]]] = [("no attack", [])]
            cases += [(a.name_, [a]) for a in ATTACKS + BOOT_ATTACKS]
            cases.append(("all six phase/1 attacks at once", list(ATTACKS)))
            if only:  # the reference and the cases whose name contains ``only``
                cases = [c for c in cases if c[0] == "no attack" or only in c[0]]
            if cgroup is not None:  # each attacked case again, right after, its attackers in the cgroup
                cases = [x for c in cases for x in ([c] if not c[1] else [c, (f"{c[0]} [attackers cgroup]", c[1])])]
            for name, attacks in cases:
                log_from = node.log_path.stat().st_size
                demoted_before = _demoted(api)
                sampler = Sampler(node.proc.pid)
                sampler.start()
                running = [
                    AttackProcess(cls, node.address, f"127.0.0.{100 + i}", modules, boot)
                    for i, cls in enumerate(attacks)
                ]
                for a in running:
                    a.start()
                    if cgroup is not None and name.endswith("[attackers cgroup]") and a.pid is not None:
                        cgroup.add(a.pid)
                time.sleep(2.0 if attacks else 0)  # let the attack build up first
                fetcher = BootFetcher(boot)
                fetcher.start()
                latencies, tried, failures = honest_load(node.address, hello, seconds, clients)
                fetcher.stop()
                for a in running:
                    a.stop()
                sampler.stop()
                waits = _honest_waits(node.log_path, log_from)
                cpu = sampler.cpu_s / sampler.wall_s if sampler.wall_s else 0.0
                boot_ok = sum(1 for status, _ in fetcher.answers if status == 200) / max(1, len(fetcher.answers))
                waits += (_demoted(api) - demoted_before,)
                rows.append((name, latencies, tried, failures, sampler.peak_rss, sampler.peak_fds, cpu, waits, boot_ok))
                if not node.alive:
                    print(f"plasmd died during {name!r}: {node.log_tail()}")
                    return
                time.sleep(1.5)  # the node settles between cases
        finally:
            node.stop()
            if keep_log:
                import shutil

                shutil.copyfile(node.log_path, keep_log)
    base_p99 = percentile(rows[0][1], 99)
    print(
        f"honest load: {clients} clients back to back, {seconds:g} s per case; executor "
        f"{'sandbox' if sandbox else 'thread'}; node job_demote_after {demote_after or 'default'}; "
        f"load average {os.getloadavg()[0]:.1f} at the end"
    )
    if cgroup is not None:
        print(f"[attackers cgroup]: the attackers' client processes in {cgroup.path} at CPU weight {weight}")
    print(
        f"{'case':58} {'jobs':>6} {'ok':>7} {'p50 ms':>8} {'p99 ms':>8} {'p99/ref':>8} {'RSS MB':>7} {'fds':>5} "
        f"{'CPU':>5} {'queue p99':>9} {'run p99':>8} {'boot ok':>8} {'attack offers':>13} {'demoted':>7}"
    )
    for name, latencies, tried, failures, rss, fds, cpu, (queue_ms, run_ms, others, demoted), boot_ok in rows:
        ok = len(latencies) / tried if tried else 0.0
        p50, p99 = percentile(latencies, 50) * 1e3, percentile(latencies, 99) * 1e3
        print(
            f"{name:58} {tried:6d} {ok:7.1%} {p50:8.1f} {p99:8.1f} {p99 / (base_p99 * 1e3):8.2f} "
            f"{rss / 1e6:7.0f} {fds:5d} {cpu:5.0%} {queue_ms:9.1f} {run_ms:8.1f} {boot_ok:8.0%} "
            f"{others:13d} {demoted:7d}"
        )
        for why in sorted(set(failures))[:3]:
            print(f"    failed: {why}")


def _demoted(api: str) -> int:
    """The node's ``phase_jobs_demoted_total``: workers it demoted for their CPU (``job_demote_after``)."""
    import urllib.request

    with urllib.request.urlopen(f"{api}/metrics", timeout=10) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith("phase_jobs_demoted_total "):
                return int(float(line.split()[1]))
    return 0


def _honest_waits(log_path: Path, offset: int) -> tuple[float, float, int]:
    """From the node's log since ``offset``: p99 of the honest jobs' time from offer to start (queued) and from
    start to result (running), in ms, where an honest job's time went inside the node; and how many of the
    attackers' offers the node accepted (how much of the job-running attacks got through)."""
    import json

    queued, running, others = [], [], 0
    with open(log_path, "rb") as f:
        f.seek(offset)
        for line in f:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "result" and event.get("client") in HONEST_KEYS:
                queued.append(event["start_us"] / 1e3)
                running.append(event["exec_us"] / 1e3)
            elif event.get("event") == "offer" and event.get("client") not in HONEST_KEYS:
                others += 1
    return percentile(queued, 99), percentile(running, 99), others


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--clients", type=int, default=2)
    p.add_argument("--executor", choices=("sandbox", "thread"), default="sandbox")
    p.add_argument("--only", default="", help="run only the cases whose name contains this (and the reference)")
    p.add_argument("--keep-log", default="", metavar="PATH", help="copy the node's log (JSON lines) there")
    p.add_argument(
        "--attackers-cgroup",
        type=int,
        default=0,
        metavar="WEIGHT",
        help="also measure each attacked case with the attackers' client processes in a cgroup of this CPU weight "
        "(1-10000; the default weight is 100); needs root",
    )
    p.add_argument("--job-demote-after", default="", metavar="DURATION", help="the node's job_demote_after (0: never)")
    args = p.parse_args()
    if not 0 <= args.attackers_cgroup <= 10000:
        p.error("--attackers-cgroup: a weight from 1 to 10000")
    run(
        args.seconds,
        args.clients,
        args.executor == "sandbox",
        args.only,
        args.keep_log,
        args.attackers_cgroup,
        args.job_demote_after,
    )


if __name__ == "__main__":
    main()
