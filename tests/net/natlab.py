"""A NAT lab in Linux network namespaces: an "Internet" (WAN) with home routers and hosts behind them.

Every byte stays inside namespaces the lab creates: no namespace has a link to the machine's own
network, and the WAN uses 198.18.0.0/24 (RFC 2544's benchmarking range, never routed on the Internet).

API (for any test; ``natlab`` is also a pytest fixture in tests/net/conftest.py)::

    from natlab import NatLab, natlab_skip_reason

    with NatLab() as lab:                       # the WAN namespace: a bridge, 198.18.0.1 (+ .2, STUN's second IP)
        wan = lab.wan                           # a Host: the WAN namespace itself, an "Internet server" at 198.18.0.1
        r1 = lab.router("r1", upnp=True)        # masquerading router, miniupnpd (UPnP-IGD + NAT-PMP) on its LAN
        r2 = lab.router("r2")                   # masquerading router, no UPnP
        r3 = lab.router("r3", symmetric=True)   # symmetric NAT: a random source port per connection (nft "random")
        h1 = lab.host("h1", behind=r1)          # 10.<router>.0.10+ behind r1, default route via r1
        c = lab.host("c")                       # a host on the WAN itself: 198.18.0.100+
        h1.ip, r1.wan_ip, r1.lan_ip, c.ip       # addresses (str)
        h1.run(["ip", "addr"])                  # subprocess.run inside the namespace (check=True, text output)
        p = h1.popen(["plasmd", ...], ...)      # subprocess.Popen inside the namespace; killed at lab.close()
        h1.exec_prefix                          # ["ip", "netns", "exec", NAME]: prefix for any argv
        h1.wait_listening(7465)                 # until something listens there (udp=True for UDP), else TimeoutError
        r1.mappings()                           # the router's current UPnP/NAT-PMP redirects (nft text)

* ``Router`` and ``Host`` both have ``name``, ``ns`` (namespace), ``run``, ``popen``; a ``Router`` also
  ``wan_ip``, ``lan_ip``, ``lan_net``, ``upnp``, ``symmetric``; ``lab.router(..., upnp=True)`` starts
  Debian's ``stund`` on the WAN first (miniupnpd's ``ext_perform_stun`` needs a STUN answer before it
  enables forwarding for a WAN address in a reserved range) and returns once miniupnpd listens.
* Cleanup: ``close()`` (the fixture calls it even when the test fails) kills every process started with
  ``popen`` and in the namespaces, and deletes the namespaces (their veth pairs go with them). Namespaces are
  named ``phlab-<pid>-…``; a new lab first deletes those left by a process that no longer exists (a test
  killed with SIGKILL cannot clean up after itself).
* ``natlab_skip_reason()`` is None when the lab can run here (root, ``ip``, ``nft``, ``miniupnpd``, ``stund``),
  else why not; the fixture skips with it. CI runs as root and ``.ci/setup --test`` installs the tools.
* DHT inside the lab: ``lab.allow`` is the networks to add to ``PHASE_DHT_ALLOW``, ``lab.env()`` the
  environment for a plasmd/phase started in the lab (that variable widened), ``lab.dht_bootstrap()`` starts
  a libtorrent DHT node on the WAN (198.18.0.1:6881, once) and returns ``HOST:PORT`` for ``--dht-bootstrap``
  (no DHT outside the lab is reachable from it). A client in a namespace also needs ``PHASE_DHT_LISTEN=IP:0``.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

WAN_NET = "198.18.0"
STUN_IPS = (f"{WAN_NET}.1", f"{WAN_NET}.2")
STUN_PORT = 3478
PREFIX = "phlab-"
TOOLS = ("ip", "nft", "miniupnpd", "stund")


def natlab_skip_reason() -> str | None:
    """Why the lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "the NAT lab needs root (network namespaces, nftables); CI runs as root"
    missing = [t for t in TOOLS if shutil.which(t) is None and not Path("/usr/sbin", t).exists()]
    if missing:
        return f"the NAT lab needs {', '.join(missing)} (bash .ci/setup --test installs them)"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def sweep_stale() -> None:
    """Delete lab namespaces whose creating process is gone."""
    out = _ip("netns", "list", check=False).stdout
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(PREFIX):
            continue
        pid = name[len(PREFIX) :].split("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            _delete_ns(name)


def _delete_ns(name: str) -> None:
    pids = _ip("netns", "pids", name, check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    _ip("netns", "delete", name, check=False)


class Host:
    """A network namespace with processes in it."""

    def __init__(self, lab: NatLab, name: str, ns: str, ip: str) -> None:
        self.lab = lab
        self.name = name
        self.ns = ns
        self.ip = ip

    @property
    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns]

    def run(
        self, argv: list[str], check: bool = True, timeout: float = 30, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.exec_prefix, *argv], check=check, capture_output=True, text=True, timeout=timeout, **kw
        )

    def popen(self, argv: list[str], **kw: Any) -> subprocess.Popen[Any]:
        proc = subprocess.Popen([*self.exec_prefix, *argv], **kw)
        self.lab._procs.append(proc)
        return proc

    def wait_listening(self, port: int, udp: bool = False, timeout: float = 10) -> None:
        """Return once something in this namespace listens on ``port`` (TCP, or UDP); TimeoutError after ``timeout``."""
        flags = "-ulnH" if udp else "-tlnH"
        _wait_for(lambda: f":{port} " in self.run(["ss", flags]).stdout, timeout, f"port {port} in {self.name}")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.ip}>"


class Router(Host):
    """A NAT router: ``wan0`` on the WAN bridge, ``lan0`` a bridge for its hosts, nftables masquerade."""

    def __init__(self, lab: NatLab, name: str, ns: str, index: int, upnp: bool, symmetric: bool) -> None:
        super().__init__(lab, name, ns, f"{WAN_NET}.{10 + index}")
        self.index = index
        self.wan_ip = self.ip
        self.lan_net = f"10.{index}.0"
        self.lan_ip = f"{self.lan_net}.1"
        self.upnp = upnp
        self.symmetric = symmetric
        self.hosts = 0

    def mappings(self) -> str:
        """The port redirects miniupnpd installed (nftables text of its prerouting chain)."""
        return self.run(["nft", "list", "chain", "inet", "filter", "prerouting_miniupnpd"], check=False).stdout


def _ruleset(symmetric: bool) -> str:
    nat = "masquerade random" if symmetric else "masquerade"
    # table and chain names are miniupnpd's defaults (upnp_table_name, upnp_forward_chain, ...)
    return f"""
table inet filter {{
    chain forward {{
        type filter hook forward priority 0; policy drop;
        ct state established,related accept
        iifname "lan0" oifname "wan0" accept
        jump miniupnpd
    }}
    chain miniupnpd {{
    }}
    chain prerouting {{
        type nat hook prerouting priority -100; policy accept;
        jump prerouting_miniupnpd
    }}
    chain postrouting {{
        type nat hook postrouting priority 100; policy accept;
        jump postrouting_miniupnpd
        oifname "wan0" {nat}
    }}
    chain prerouting_miniupnpd {{
    }}
    chain postrouting_miniupnpd {{
    }}
}}
"""


class NatLab:
    """The WAN namespace and everything added to it; ``close()`` removes it all."""

    _labs = itertools.count(1)

    def __init__(self) -> None:
        reason = natlab_skip_reason()
        if reason:
            raise RuntimeError(reason)
        sweep_stale()
        self.tag = f"{PREFIX}{os.getpid()}-{next(self._labs)}"
        self.dir = Path(tempfile.mkdtemp(prefix="natlab-"))
        self._namespaces: list[str] = []
        self._procs: list[subprocess.Popen[Any]] = []
        self._routers: list[Router] = []
        self._wan_hosts = 0
        self._stun: subprocess.Popen[Any] | None = None
        self._bootstrap: str | None = None
        self.allow = f"{WAN_NET}.0/24,10.0.0.0/8"
        try:
            ns = self._new_ns("wan")
            self.wan = Host(self, "wan", ns, STUN_IPS[0])
            _ip("-n", ns, "link", "add", "br0", "type", "bridge")
            for ip in STUN_IPS:
                _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", "br0")
            _ip("-n", ns, "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise

    def _new_ns(self, role: str) -> str:
        name = f"{self.tag}-{role}"
        _ip("netns", "add", name)
        self._namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")
        return name

    def _veth(self, ns: str, dev: str, peer_ns: str, peer_dev: str, bridge: str) -> None:
        """A veth pair made directly inside the two namespaces (never in the machine's own), one end on ``bridge``."""
        _ip("-n", ns, "link", "add", dev, "type", "veth", "peer", "name", peer_dev, "netns", peer_ns)
        _ip("-n", peer_ns, "link", "set", peer_dev, "master", bridge, "up")
        _ip("-n", ns, "link", "set", dev, "up")

    def router(self, name: str, upnp: bool = False, symmetric: bool = False) -> Router:
        index = len(self._routers) + 1
        ns = self._new_ns(name)
        r = Router(self, name, ns, index, upnp, symmetric)
        self._routers.append(r)
        self._veth(ns, "wan0", self.wan.ns, f"r{index}", "br0")
        _ip("-n", ns, "addr", "add", f"{r.wan_ip}/24", "dev", "wan0")
        _ip("-n", ns, "route", "add", "default", "via", STUN_IPS[0])
        _ip("-n", ns, "link", "add", "lan0", "type", "bridge")
        _ip("-n", ns, "addr", "add", f"{r.lan_ip}/24", "dev", "lan0")
        _ip("-n", ns, "link", "set", "lan0", "up")
        r.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        r.run(["nft", "-f", "-"], input=_ruleset(symmetric))
        if upnp:
            self._start_miniupnpd(r)
        return r

    def host(self, name: str, behind: Router | None = None) -> Host:
        ns = self._new_ns(name)
        if behind is None:
            self._wan_hosts += 1
            ip = f"{WAN_NET}.{99 + self._wan_hosts}"
            self._veth(ns, "eth0", self.wan.ns, f"h{self._wan_hosts}", "br0")
            _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        else:
            behind.hosts += 1
            ip = f"{behind.lan_net}.{9 + behind.hosts}"
            self._veth(ns, "eth0", behind.ns, f"h{behind.hosts}", "lan0")
            _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
            _ip("-n", ns, "route", "add", "default", "via", behind.lan_ip)
        return Host(self, name, ns, ip)

    def env(self, **extra: str) -> dict[str, str]:
        """``os.environ`` with ``PHASE_DHT_ALLOW`` widened to the lab's networks, plus ``extra``."""
        allowed = os.environ.get("PHASE_DHT_ALLOW", "127.0.0.0/8")
        return {**os.environ, "PHASE_DHT_ALLOW": f"{allowed},{self.allow}", **extra}

    def dht_bootstrap(self) -> str:
        """A DHT node on the WAN for the lab's nodes to join through (started once); -> ``HOST:PORT``."""
        if self._bootstrap is None:
            where = f"{self.wan.ip}:6881"
            code = "import sys, time; from pyphase.net.dht import Dht; d = Dht(sys.argv[1], []); time.sleep(1e6)"
            self.wan.popen([sys.executable, "-c", code, where], env=self.env())
            self.wan.wait_listening(6881, udp=True, timeout=20)
            self._bootstrap = where
        return self._bootstrap

    def _start_stun(self) -> None:
        if self._stun is None:
            self._stun = self.wan.popen(
                ["stund", "-h", STUN_IPS[0], "-a", STUN_IPS[1], "-p", str(STUN_PORT)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self.wan.wait_listening(STUN_PORT, udp=True, timeout=10)

    def _start_miniupnpd(self, r: Router) -> None:
        self._start_stun()
        conf = self.dir / f"{r.name}-miniupnpd.conf"
        conf.write_text(
            "\n".join(
                [
                    "ext_ifname=wan0",
                    "listening_ip=lan0",
                    "port=0",
                    "enable_upnp=yes",
                    "enable_natpmp=yes",
                    "secure_mode=yes",
                    "system_uptime=no",
                    "ext_perform_stun=yes",
                    f"ext_stun_host={STUN_IPS[0]}",
                    f"ext_stun_port={STUN_PORT}",
                    f"uuid=3a1b2c3d-0000-4000-8000-{r.index:012d}",
                    f"lease_file={self.dir}/{r.name}-leases",
                    f"allow 1024-65535 {r.lan_net}.0/24 1024-65535",
                    "deny 0-65535 0.0.0.0/0 0-65535",
                    "",
                ]
            )
        )
        log = open(self.dir / f"{r.name}-miniupnpd.log", "wb")
        r.popen(["miniupnpd", "-d", "-f", str(conf), "-P", str(self.dir / f"{r.name}.pid")], stdout=log, stderr=log)
        log.close()
        r.wait_listening(5351, udp=True, timeout=20)  # miniupnpd's NAT-PMP port: it listens once STUN answered

    def miniupnpd_log(self, r: Router) -> str:
        path = self.dir / f"{r.name}-miniupnpd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(self._procs):
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for ns in reversed(self._namespaces):
            _delete_ns(ns)
        self._namespaces.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> NatLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _wait_for(ok: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)
