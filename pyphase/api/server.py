"""The node's HTTP server (aiohttp, in plasmd's own event loop): the JSON API, ``/metrics``, the dashboard.

Bounded: request bodies (``client_max_size``: a module and an input in base64, plus slack), time to
read a body, open connections (beyond ``max_connections`` a request is answered 503), unfinished API
jobs (beyond the node's workers + queue: 429). Every error is JSON ``{"error", "detail"}``. Requests
from loopback are trusted; from any other address they need ``Authorization: Bearer <token>``, the
token plasmd writes to ``DATA_DIR/api_token`` (mode 0600) when the API listens beyond loopback.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import socket
import time
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import fastjsonschema  # type: ignore[import-untyped]
from aiohttp import web

from pyphase.api import openapi
from pyphase.api.listen import is_loopback
from pyphase.api.jobs import ApiJob, ApiJobs, BadRequest, TooBig
from pyphase.metrics import CONTENT_TYPE
from pyphase.receipt import timestamp

if TYPE_CHECKING:
    from pyphase.history import History
    from pyphase.metrics import NodeMetrics
    from pyphase.net.node import Node

WAIT_SLACK_S = 10.0
EVENT_PIECE = 48 << 10  # output bytes per server-sent event (64 KiB once in base64)
KEEPALIVE_S = 10.0  # a comment line on a quiet event stream, so idle proxies keep it open
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, code: str, detail: str) -> web.Response:
    return web.json_response({"error": code, "detail": detail}, status=status)


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    408: "timeout",
    409: "not_finished",
    413: "too_big",
    415: "unsupported_media_type",
    429: "busy",
    503: "unavailable",
}


class ApiServer:
    """The aiohttp application of one node; ``await start(host, port)``, ``await close()``."""

    def __init__(
        self,
        node: Node,
        history: History,
        metrics: NodeMetrics,
        *,
        token: str | None,
        max_connections: int,
        peers: Callable[[], list[dict[str, Any]]],
        started: float,
    ) -> None:
        self.node = node
        self.history = history
        self.metrics = metrics
        self.token = token
        self.max_connections = max_connections
        self.peers = peers
        self.started = started
        c = node.config
        capacity = c.worker_count + c.queue
        self.jobs = ApiJobs(
            self._own_address,
            self._known_peer_addresses,
            capacity=capacity,
            max_module=c.max_module,
            max_input=c.max_input,
            threads=min(16, max(2, c.worker_count * 2)),
        )
        self.max_body = (c.max_module + c.max_input + 2) // 3 * 4 + (1 << 20)
        self.body_timeout_s = c.api_body_timeout_ms / 1000
        schema = {
            **openapi()["components"]["schemas"]["JobRequest"],
            "$defs": {"Limits": openapi()["components"]["schemas"]["Limits"]},
        }
        self._check_job = fastjsonschema.compile(
            json.loads(json.dumps(schema).replace("#/components/schemas/", "#/$defs/"))
        )
        self.runner: web.AppRunner | None = None
        self.url = ""
        self.closing = False

    def _own_address(self) -> str:
        host = self.node.config.listen.rpartition(":")[0].strip("[]")
        if host in ("", "0.0.0.0", "*"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        return f"{self.node.identity.peer_id}@{'[' + host + ']' if ':' in host else host}:{self.node.port}"

    def _known_peer_addresses(self) -> list[str]:
        return [p["address"] for p in self.peers() if p.get("address")]

    def connections(self) -> int:
        server = self.runner.server if self.runner is not None else None
        return len(server.connections) if server is not None else 0

    # ---- application ---------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body, middlewares=[self._guard])
        r = app.router
        r.add_get("/openapi.json", self.get_openapi)
        r.add_get("/v1/node", self.get_node)
        r.add_get("/v1/peers", self.get_peers)
        r.add_post("/v1/jobs", self.post_job)
        r.add_get("/v1/jobs", self.list_jobs)
        r.add_get("/v1/jobs/{id}", self.get_job)
        r.add_get("/v1/jobs/{id}/stdout", self.get_output)
        r.add_get("/v1/jobs/{id}/stderr", self.get_output)
        r.add_get("/v1/jobs/{id}/receipt", self.get_receipt)
        r.add_get("/v1/jobs/{id}/events", self.get_events)
        r.add_get("/v1/history", self.get_history)
        r.add_get("/v1/receipts", self.get_receipts)
        r.add_get("/v1/stats", self.get_stats)
        r.add_get("/metrics", self.get_metrics)
        r.add_get("/", self.get_dashboard)
        r.add_static("/static/", Path(str(resources.files("pyphase.api").joinpath("static"))), show_index=False)
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.connections() > self.max_connections:
            response = _error(503, "too_many_connections", f"more than {self.max_connections} open connections")
            response.force_close()
            return response
        if not is_loopback(request.remote or "") and not self._authorized(request):
            return _error(
                401,
                "unauthorized",
                "requests from beyond loopback need 'Authorization: Bearer TOKEN' "
                "(the token is in the node's DATA_DIR/api_token)",
            )
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = _HTTP_CODES.get(exc.status, "error")
            detail = exc.text if exc.text and not exc.text.startswith(str(exc.status)) else exc.reason
            return _error(exc.status, code, detail or exc.reason)

    def _authorized(self, request: web.Request) -> bool:
        if self.token is None:
            return False
        given = request.headers.get("Authorization", "")
        return given.startswith("Bearer ") and hmac.compare_digest(given[7:].strip().encode(), self.token.encode())

    # ---- handlers ------------------------------------------------------------------------------------

    async def get_openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi())

    async def get_node(self, request: web.Request) -> web.Response:
        node = self.node
        return web.json_response(
            {
                "peer_id": node.identity.peer_id,
                "address": node.address,
                "api": self.url,
                "public_key": base64.b64encode(node.identity.public_key).decode("ascii"),
                "started_at": timestamp(datetime.fromtimestamp(self.started, timezone.utc)),
                "uptime_s": int(time.time() - self.started),
                "capabilities": node.capabilities(),
                "reachability": node.reachability,
            }
        )

    async def get_peers(self, request: web.Request) -> web.Response:
        return web.json_response({"peers": self.peers()})

    async def post_job(self, request: web.Request) -> web.Response:
        if request.content_type != "application/json":
            return _error(415, "unsupported_media_type", "send the job as application/json")
        try:
            raw = await asyncio.wait_for(request.read(), self.body_timeout_s)
        except asyncio.TimeoutError:
            response = _error(408, "timeout", f"the body took longer than {self.body_timeout_s:g} s to arrive")
            response.force_close()
            return response
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            return _error(400, "bad_json", f"the body is not JSON: {exc}")
        try:
            self._check_job(body)
        except fastjsonschema.JsonSchemaValueException as exc:
            if isinstance(body, dict) and "input" in body and "input_text" in body:
                return _error(400, "bad_request", "give input or input_text, not both")
            if isinstance(body, dict) and "peers" in body and body.get("where") != "network":
                return _error(400, "bad_request", "peers are for where=network")
            return _error(400, "bad_request", f"not a JobRequest (see /openapi.json): {exc.message}")
        try:
            job = self.jobs.parse(body)
        except TooBig as exc:
            return _error(413, "too_big", str(exc))
        except BadRequest as exc:
            return _error(400, "bad_request", str(exc))
        if self.jobs.unfinished() >= self.jobs.capacity:
            return _error(429, "busy", f"{self.jobs.capacity} API jobs are unfinished; try again later")
        self.jobs.start(job)
        if body.get("wait"):
            wait_s = job.limits.timeout_ms / 1000 * (4 if job.where == "network" else 1) + WAIT_SLACK_S
            try:
                await asyncio.wait_for(asyncio.shield(job.done.wait()), wait_s)
            except asyncio.TimeoutError:
                pass
            return web.json_response(job.to_json(), status=200 if job.done.is_set() else 202)
        return web.json_response(job.to_json(), status=202)

    async def list_jobs(self, request: web.Request) -> web.Response:
        limit = self._limit(request)
        jobs = list(self.jobs.jobs.values())[-limit:]
        return web.json_response({"jobs": [j.to_json() for j in reversed(jobs)]})

    def _job(self, request: web.Request) -> ApiJob:
        job = self.jobs.jobs.get(request.match_info["id"])
        if job is None:
            raise web.HTTPNotFound(
                text=f"no job {request.match_info['id']} on this node's API "
                "(finished jobs are kept for a while; see /v1/history)"
            )
        return job

    def _finished(self, job: ApiJob) -> Any:
        if job.state != "done":
            raise web.HTTPConflict(text=f"job {job.id} is {job.state}" + (f": {job.error}" if job.error else ""))
        return job.result

    async def get_job(self, request: web.Request) -> web.Response:
        return web.json_response(self._job(request).to_json())

    async def get_output(self, request: web.Request) -> web.Response:
        result = self._finished(self._job(request))
        stream = request.path.rsplit("/", 1)[1]
        return web.Response(body=getattr(result, stream), content_type="application/octet-stream")

    async def get_receipt(self, request: web.Request) -> web.Response:
        return web.json_response(self._finished(self._job(request)).receipt)

    async def get_events(self, request: web.Request) -> web.StreamResponse:
        """The job's output as server-sent events while it runs (``stdout``/``stderr``, each piece at its offset,
        base64), then ``end`` with the job as ``GET /v1/jobs/{id}`` gives it. Every reader gets the output from
        offset 0; a job submitted with ``stream`` false has all of it at its end. Output is unverified until ``end`` says ``done``; a failed job's shown output is not to be trusted.
        """
        job = self._job(request)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
        await response.prepare(request)
        sent = {1: 0, 2: 0}
        while True:
            changed = job.changed
            for stream, name in ((1, "stdout"), (2, "stderr")):
                data = job.output(stream)
                while sent[stream] < len(data):
                    piece = bytes(data[sent[stream] : sent[stream] + EVENT_PIECE])
                    event = {"offset": sent[stream], "data": base64.b64encode(piece).decode("ascii")}
                    await response.write(f"event: {name}\ndata: {json.dumps(event)}\n\n".encode())
                    sent[stream] += len(piece)
            if job.done.is_set() or self.closing:
                break
            try:
                await asyncio.wait_for(changed.wait(), KEEPALIVE_S)
            except asyncio.TimeoutError:
                await response.write(b": still running\n\n")
        if job.done.is_set():
            await response.write(f"event: end\ndata: {json.dumps(job.to_json())}\n\n".encode())
        await response.write_eof()
        return response

    def _limit(self, request: web.Request) -> int:
        text = request.query.get("limit", "50")
        if not text.isdigit() or not 1 <= int(text) <= 1000:
            raise web.HTTPBadRequest(text="limit must be an integer from 1 to 1000")
        return int(text)

    async def get_history(self, request: web.Request) -> web.Response:
        return web.json_response({"jobs": self.history.jobs(self._limit(request))})

    async def get_receipts(self, request: web.Request) -> web.Response:
        return web.json_response({"receipts": self.history.receipts(self._limit(request))})

    async def get_stats(self, request: web.Request) -> web.Response:
        recent = self.metrics.recent
        return web.json_response({"bucket_s": recent.bucket_s, "buckets": recent.buckets()})

    async def get_metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

    async def get_dashboard(self, request: web.Request) -> web.Response:
        page = resources.files("pyphase.api").joinpath("static", "index.html").read_bytes()
        return web.Response(body=page, content_type="text/html", charset="utf-8")

    # ---- life cycle ----------------------------------------------------------------------------------

    async def start(self, socks: list[socket.socket], url: str) -> None:
        """Serve on sockets already listening (:func:`pyphase.api.listen.listen_sockets`)."""
        self.runner = web.AppRunner(self.app(), access_log=None, handler_cancellation=True, keepalive_timeout=15.0)
        await self.runner.setup()
        for sock in socks:
            await web.SockSite(self.runner, sock, backlog=self.max_connections).start()
        self.url = url

    async def close(self) -> None:
        self.closing = True  # followers of running jobs end their event streams
        for job in list(self.jobs.jobs.values()):
            job.wake()
        self.jobs.close()
        if self.runner is not None:
            await self.runner.cleanup()
