"""Fixtures of the network tests: nodes started per test and stopped afterwards (see net_support.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from net_support import SPIN_ECHO, NodeProc, loopback_host  # noqa: E402

# Never announce or browse on this machine's real interfaces from a test.
os.environ["PHASE_MDNS_INTERFACES"] = "127.0.0.1"
# Nor send the tests' connections through a proxy the developer's shell names (tests/net/test_socks.py sets its own).
os.environ.pop("PHASE_SOCKS_PROXY", None)


@pytest.fixture
def start_nodes(tmp_path: Path) -> Iterator[Callable[..., list[NodeProc]]]:
    """``start_nodes(n, **options)`` -> n running nodes, each on its own 127.0.0.x; all stopped afterwards."""
    started: list[NodeProc] = []
    count = [0]

    def start(n: int = 1, **options: object) -> list[NodeProc]:
        nodes = []
        for _ in range(n):
            count[0] += 1
            node = NodeProc(tmp_path / f"node{count[0]}", loopback_host(), **options)  # type: ignore[arg-type]
            started.append(node)
            nodes.append(node.start())
        return nodes

    yield start
    for node in started:
        node.stop()


@pytest.fixture(scope="session")
def spin_bytes(wat: Callable[[str], bytes]) -> bytes:
    return wat(SPIN_ECHO)


@pytest.fixture
def natlab() -> Iterator[object]:
    """A NAT lab in network namespaces (tests/net/natlab.py documents its API); removed even when the test
    fails. Skips, saying why, where it cannot run (not root, tools missing); CI runs as root."""
    from natlab import NatLab, natlab_skip_reason

    reason = natlab_skip_reason()
    if reason:
        pytest.skip(reason)
    lab = NatLab()
    try:
        yield lab
    finally:
        lab.close()
