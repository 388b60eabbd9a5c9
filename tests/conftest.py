"""Shared fixtures: real wasm built from sources under tests/ (cached in tests/.wasm-cache), and the DHT guard."""

from __future__ import annotations

import atexit
import ipaddress
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import wasm_build  # noqa: E402

# The DHT guard: no test may reach the public Mainline DHT. pyphase.net.dht refuses any session (in this
# process and in every plasmd/phase it starts, through the environment) whose bootstrap nodes or listen
# address lie outside these networks, and any session left to libtorrent's default routers; sessions a
# test makes with libtorrent directly are checked by the same rule below. Tests in network namespaces
# add their own subnets to the variable.
DHT_ALLOWED = "127.0.0.0/8"
os.environ["PHASE_DHT_ALLOW"] = DHT_ALLOWED
os.environ.pop("PHASE_DHT_BOOTSTRAP", None)

# The user's own state stays out of the suite: phase run's default data dir (compiled code, auto's history) and the
# default identity live under a directory of this session, for this process and every phase/plasmd it starts. A
# module compiled into ~/.local/share by an earlier run would otherwise change what a later run measures.
_HOME = tempfile.mkdtemp(prefix="phase-tests-home-")
atexit.register(shutil.rmtree, _HOME, True)
os.environ["XDG_DATA_HOME"] = os.path.join(_HOME, "data")
os.environ["XDG_CONFIG_HOME"] = os.path.join(_HOME, "config")
os.environ["XDG_CACHE_HOME"] = os.path.join(_HOME, "cache")
os.environ.pop("PHASE_HOME", None)


def _dht_settings_allowed(settings: dict) -> None:
    """Raise PermissionError unless a libtorrent session's DHT stays inside the allowed networks."""
    if not settings.get("enable_dht", True):
        return
    nets = [ipaddress.ip_network(n) for n in os.environ.get("PHASE_DHT_ALLOW", DHT_ALLOWED).split(",") if n]

    def inside(endpoint: str) -> bool:
        host = endpoint.strip().rpartition(":")[0].strip("[]")
        try:
            return any(ipaddress.ip_address(host) in n for n in nets)
        except ValueError:
            return False

    routers = settings.get("dht_bootstrap_nodes")
    if routers is None:
        raise PermissionError("test DHT session left to libtorrent's default routers: set dht_bootstrap_nodes")
    for endpoint in filter(None, str(routers).split(",")):
        if not inside(endpoint):
            raise PermissionError(f"test DHT bootstrap node {endpoint} is outside {nets}")
    for endpoint in filter(None, str(settings.get("listen_interfaces", "0.0.0.0:6881")).split(",")):
        if not inside(endpoint):
            raise PermissionError(f"test DHT session listens on {endpoint}, outside {nets}")


def _guard_libtorrent() -> None:
    try:
        import libtorrent
    except ImportError:
        return
    if getattr(libtorrent.session, "_phase_guarded", False):
        return

    class GuardedSession(libtorrent.session):  # type: ignore[misc,name-defined]
        _phase_guarded = True

        def __init__(self, params=None, *args, **kwargs):
            settings = params.settings if hasattr(params, "settings") else dict(params or {})
            _dht_settings_allowed(dict(settings))
            super().__init__(params, *args, **kwargs) if params is not None else super().__init__(*args, **kwargs)

        def apply_settings(self, settings):
            _dht_settings_allowed({**self.get_settings(), **dict(settings)})
            return super().apply_settings(settings)

    libtorrent.session = GuardedSession


_guard_libtorrent()


@pytest.fixture(autouse=True)
def _dht_guard_in_place():
    """A test must not widen (or drop) the DHT guard for the tests after it."""
    yield
    assert os.environ.get("PHASE_DHT_ALLOW", "").startswith(DHT_ALLOWED), "a test removed the DHT guard"
    os.environ["PHASE_DHT_ALLOW"] = DHT_ALLOWED


ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello" / "hello.wasm"


@pytest.fixture(scope="session")
def hello_bytes() -> bytes:
    return HELLO.read_bytes()


@pytest.fixture(scope="session")
def probe_bytes() -> bytes:
    """tests/programs/wasi_probe.c built with zig's default flags (as users build)."""
    return wasm_build.build_c("wasi_probe.c").read_bytes()


@pytest.fixture(scope="session")
def probe_mvp_bytes() -> bytes:
    return wasm_build.build_c("wasi_probe.c", wasm_build.ZIG_MVP).read_bytes()


@pytest.fixture(scope="session")
def wat():
    return wasm_build.build_wat


@pytest.fixture
def no_data_dir():
    """A test that starts without a process-wide data dir for ``auto`` and compiled code (pyphase.engines), which an
    in-process node of an earlier test may have set."""
    from pyphase import engines

    engines.use_data_dir(None)
    yield
    engines.use_data_dir(None)
