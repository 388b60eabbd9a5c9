"""Fixtures of the API tests: real plasmd processes (tests/net/net_support.py) and a small HTTP helper."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "net"))

from net_support import NodeProc, loopback_host  # noqa: E402


class Api:
    """The API of one node: ``call(method, path, body)`` -> (status, parsed JSON or bytes, headers)."""

    def __init__(self, node: NodeProc) -> None:
        self.node = node
        self.url = (node.data_dir / "api").read_text().strip()

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> tuple[int, Any, dict[str, str]]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        hdrs = {"Content-Type": "application/json"} if data is not None else {}
        hdrs.update(headers or {})
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                status, payload, got = resp.status, resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            status, payload, got = exc.code, exc.read(), dict(exc.headers)
        if got.get("Content-Type", "").startswith("application/json"):
            return status, json.loads(payload), got
        return status, payload, got


@pytest.fixture
def api_nodes(tmp_path: Path) -> Iterator[Callable[..., list[Api]]]:
    """``api_nodes(n, **options)`` -> the APIs of n running nodes (stopped afterwards)."""
    started: list[NodeProc] = []

    def start(n: int = 1, **options: Any) -> list[Api]:
        out = []
        for _ in range(n):
            node = NodeProc(tmp_path / f"node{len(started) + 1}", loopback_host(), **options)
            started.append(node)
            out.append(Api(node.start()))
        return out

    yield start
    for node in started:
        node.stop()
