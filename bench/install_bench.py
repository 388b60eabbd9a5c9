"""Install figures: wheel sizes, install time from wheel and from sdist, idle plasmd memory, cross-arch latency.

    python bench/install_bench.py                 # wheels from dist/ (tools/build-wheels.sh), ~5 min
    python bench/install_bench.py --arm           # also a job to an arm64 node under qemu-user (needs the
                                                  # cached chroot of tests/packaging/test_arm.py)

Method
  * install: a fresh venv each time, offline from a wheelhouse filled first (pip download of the dependencies
    and build requirements), so the network is not measured. Wheel install against sdist install (which
    builds wasm3, libsodium and the extensions): the ratio is what a missing wheel costs a user.
  * idle memory: plasmd with its defaults (sandbox on, HTTP API on, metrics and history on) but 2 workers and
    no mDNS (no multicast here), once with --no-dht and once with the DHT on, joined through an unanswered
    loopback port (never the public routers); RSS and PSS of the node and of its fork server and idle workers
    10 s after it printed its address, then RSS again after one API request (which loads aiohttp), against a
    bare `python3 -c "import time; ..."` in the same run.
  * cross-arch latency: hello submitted N times from this host with pyphase.Client to a local x86_64 node and
    to an aarch64 node (no sandbox, under qemu-user emulation); median and p90 of each and their ratio.

Caveats: wall-clock timings on a shared 2-core machine (the load average is printed); never fails on numbers.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello" / "hello.wasm"


def fresh_venv(where: Path) -> Path:
    venv.create(where, with_pip=True)
    return where / "bin" / "python"


def timed(cmd: list[str], **kw: object) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, **kw)  # type: ignore[call-overload]
    return time.perf_counter() - start


def install_times(work: Path) -> dict[str, float]:
    wheels = sorted((ROOT / "dist").glob(f"pyphase-*-manylinux*_{os.uname().machine}.whl"))
    if not wheels:
        sys.exit("no wheel in dist/: run tools/build-wheels.sh first")
    from scikit_build_core.build import build_sdist

    sdist = work / build_sdist(str(work))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    house = work / "house"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "-d",
            str(house),
            *project["project"]["dependencies"],
            *project["build-system"]["requires"],
        ],
        check=True,
    )
    offline = ["--no-index", "--find-links", str(house), "--disable-pip-version-check", "-q"]
    py = fresh_venv(work / "w")
    wheel_s = timed([str(py), "-m", "pip", "install", *offline, str(wheels[-1])])
    py = fresh_venv(work / "s")
    sdist_s = timed([str(py), "-m", "pip", "install", *offline, str(sdist)], cwd=work)
    return {"wheel_s": wheel_s, "sdist_s": sdist_s}


def tree_memory(pid: int, children: bool = True) -> tuple[int, int]:
    """RSS and PSS (kB) of pid and (unless children is False) all its descendants."""
    rss = pss = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss += int(line.split()[1])
            elif line.startswith("Pss:"):
                pss += int(line.split()[1])
        for task in Path(f"/proc/{p}/task").iterdir() if children else ():
            todo += [int(c) for c in (task / "children").read_text().split()]
    return rss, pss


def idle_memory(work: Path, *flags: str) -> dict[str, int]:
    """plasmd's tree 10 s after it printed its address (idle), then again 2 s after one API request (aiohttp
    loaded on that first connection); a bare python in the same run for reference."""
    bare = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    data = work / f"node{len(list(work.glob('node*')))}"
    node = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "plasmd"),
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(data),
            "--no-mdns",
            "--workers",
            "2",
            *flags,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert node.stdout is not None
        node.stdout.readline()
        time.sleep(10)
        rss, pss = tree_memory(node.pid)
        node_rss = tree_memory(node.pid, children=False)[0]
        bare_rss, _ = tree_memory(bare.pid)
        url = (data / "api").read_text().strip()
        with urllib.request.urlopen(f"{url}/v1/node", timeout=30) as answer:
            answer.read()
        time.sleep(2)
        api_rss, _ = tree_memory(node.pid)
    finally:
        node.terminate()
        bare.kill()
        node.wait(30)
        bare.wait(30)
    return {
        "node_rss_kb": rss,
        "node_pss_kb": pss,
        "node_only_rss_kb": node_rss,
        "after_api_rss_kb": api_rss,
        "python_rss_kb": bare_rss,
    }


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def latency(address: str, n: int) -> list[float]:
    import pyphase

    module = HELLO.read_bytes()
    client = pyphase.Client(peers=[address])
    try:
        client.submit(module, b"Hello, World", timeout=120)
        times = []
        for _ in range(n):
            start = time.perf_counter()
            result = client.submit(module, b"Hello, World", timeout=120)
            times.append(time.perf_counter() - start)
            assert result.stdout == b"dlroW ,olleH"
        return times
    finally:
        client.close()


def start_node(cmd: list[str]) -> tuple[subprocess.Popen[str], str]:
    node = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert node.stdout is not None
    return node, node.stdout.readline().strip()


def cross_arch(work: Path, n: int) -> dict[str, float]:
    sys.path.insert(0, str(ROOT / "tests" / "packaging"))
    import test_arm  # the arm64 chroot with the aarch64 wheel installed, as the tests make it

    local, address = start_node(
        [
            str(Path(sys.executable).parent / "plasmd"),
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(work / "x86"),
            "--no-mdns",
            "--no-dht",
            "--workers",
            "1",
            "--no-sandbox",
        ]
    )
    try:
        x86 = latency(address, n)
    finally:
        local.terminate()
        local.wait(30)
    if why := test_arm.missing_tools():
        sys.exit(why)
    with test_arm.arm64_with_pyphase() as root:
        remote, address = start_node(
            [
                "chroot",
                str(root),
                f"{test_arm.VENV}/bin/plasmd",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                "/tmp/n",
                "--no-mdns",
                "--no-dht",
                "--no-sandbox",
                "--workers",
                "1",
            ]
        )
        try:
            arm = latency(address, n)
        finally:
            remote.terminate()
            remote.wait(60)
    return {
        "x86_64_p50_ms": statistics.median(x86) * 1e3,
        "aarch64_p50_ms": statistics.median(arm) * 1e3,
        "x86_64_p90_ms": statistics.quantiles(x86, n=10)[-1] * 1e3,
        "aarch64_p90_ms": statistics.quantiles(arm, n=10)[-1] * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arm", action="store_true", help="also measure a job to an aarch64 node (qemu-user)")
    parser.add_argument("--jobs", type=int, default=20, help="jobs per node for the latency figures")
    parser.add_argument("--skip-install", action="store_true", help="skip the install times (the sdist build is slow)")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for wheel in sorted((ROOT / "dist").glob("pyphase-*.whl")):
        print(f"{wheel.name}: {wheel.stat().st_size / 1e6:.2f} MB")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.skip_install:
            t = install_times(work)
            print(
                f"install from wheel {t['wheel_s']:.1f} s, from sdist {t['sdist_s']:.1f} s "
                f"(sdist/wheel = {t['sdist_s'] / t['wheel_s']:.1f}x)"
            )
        # the DHT joins through a loopback port nobody answers (never the public routers, its default) and maps no
        # port on a router (no multicast leaves this machine)
        for label, flags in (
            ("defaults but --no-dht", ["--no-dht"]),
            ("defaults, DHT on", ["--dht-bootstrap", f"127.0.0.1:{free_udp_port()}", "--no-upnp"]),
        ):
            m = idle_memory(work, *flags)
            print(
                f"idle plasmd, {label} (node + fork server + idle workers): RSS {m['node_rss_kb'] / 1024:.1f} MiB "
                f"(node alone {m['node_only_rss_kb'] / 1024:.1f}), PSS {m['node_pss_kb'] / 1024:.1f} MiB; "
                f"after one API request {m['after_api_rss_kb'] / 1024:.1f} MiB; bare python RSS "
                f"{m['python_rss_kb'] / 1024:.1f} MiB (node/python = {m['node_rss_kb'] / m['python_rss_kb']:.1f}x)"
            )
        if args.arm:
            c = cross_arch(work, args.jobs)
            print(
                f"hello, {args.jobs} jobs: x86_64 node p50 {c['x86_64_p50_ms']:.1f} ms p90 {c['x86_64_p90_ms']:.1f} ms; "
                f"aarch64 node (qemu-user) p50 {c['aarch64_p50_ms']:.1f} ms p90 {c['aarch64_p90_ms']:.1f} ms "
                f"(aarch64/x86_64 = {c['aarch64_p50_ms'] / c['x86_64_p50_ms']:.1f}x)"
            )


if __name__ == "__main__":
    main()
