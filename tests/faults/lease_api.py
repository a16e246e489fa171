"""A loopback HTTP server playing the Lease endpoints of coordination.k8s.io/v1 (aiohttp).

Real HTTP, real JSON, the API server's optimistic concurrency (a PUT carrying a stale
resourceVersion gets 409 Conflict, a POST of an existing Lease 409 AlreadyExists). Each
replica talks to its own port onto the one shared Lease, so a test can cut one replica off
(`hang(port)`: its requests are read and never answered, as across a network partition or a
stuck API server connection) while the other keeps being served.
"""

from __future__ import annotations

import asyncio
import copy
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

PREFIX = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"


@dataclass
class Write:
    """One accepted write of the Lease, stamped with this process's monotonic clock."""

    at: float
    port: int
    holder: str | None


@dataclass
class LeaseApi:
    lease: dict[str, Any] | None = None
    writes: list[Write] = field(default_factory=list)
    _version: int = 0
    _hung: set[int] = field(default_factory=set)
    _release: asyncio.Event = field(default_factory=asyncio.Event)
    _runners: list[web.AppRunner] = field(default_factory=list)

    # --- what tests use -----------------------------------------------------------------------

    async def serve(self) -> int:
        """One more port onto the shared Lease; returns it."""
        app = web.Application()
        app.router.add_get(PREFIX + "/{name}", self._get)
        app.router.add_put(PREFIX + "/{name}", self._put)
        app.router.add_post(PREFIX, self._post)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runners.append(runner)
        return site._server.sockets[0].getsockname()[1]

    def hang(self, port: int) -> None:
        self._hung.add(port)

    def put_lease(self, namespace: str, name: str, spec: dict[str, Any]) -> None:
        """A Lease written by some other party (e.g. a holder whose clock is skewed)."""
        self._version += 1
        self.lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                      "metadata": {"name": name, "namespace": namespace, "resourceVersion": str(self._version)},
                      "spec": dict(spec)}

    def holder(self) -> str | None:
        return ((self.lease or {}).get("spec") or {}).get("holderIdentity")

    def last_write_by(self, holder: str) -> float:
        return max(w.at for w in self.writes if w.holder == holder)

    def first_write_by(self, holder: str) -> float | None:
        return min((w.at for w in self.writes if w.holder == holder), default=None)

    async def close(self) -> None:
        self._release.set()  # hung handlers return, so the runners shut down at once
        for runner in self._runners:
            await runner.cleanup()

    # --- the endpoints ------------------------------------------------------------------------

    async def _maybe_hang(self, request: web.Request) -> None:
        port = request.transport.get_extra_info("sockname")[1]
        if port in self._hung:
            await self._release.wait()
            raise web.HTTPServiceUnavailable()

    async def _get(self, request: web.Request) -> web.Response:
        await self._maybe_hang(request)
        if self.lease is None or self.lease["metadata"]["name"] != request.match_info["name"]:
            return _status(404, "NotFound")
        return web.json_response(self.lease)

    async def _post(self, request: web.Request) -> web.Response:
        await self._maybe_hang(request)
        body = await request.json()
        if self.lease is not None:
            return _status(409, "AlreadyExists")
        return self._store(request, body, 201)

    async def _put(self, request: web.Request) -> web.Response:
        await self._maybe_hang(request)
        body = await request.json()
        if self.lease is None:
            return _status(404, "NotFound")
        if (body.get("metadata") or {}).get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
            return _status(409, "Conflict")
        return self._store(request, body, 200)

    def _store(self, request: web.Request, body: dict[str, Any], code: int) -> web.Response:
        self._version += 1
        body = copy.deepcopy(body)
        body.setdefault("metadata", {})["resourceVersion"] = str(self._version)
        self.lease = body
        port = request.transport.get_extra_info("sockname")[1]
        self.writes.append(Write(time.monotonic(), port, (body.get("spec") or {}).get("holderIdentity")))
        return web.json_response(body, status=code)


def _status(code: int, reason: str) -> web.Response:
    return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
                              "message": reason, "code": code}, status=code)
