"""The API server's connection failing under the operator's feet (no cluster needed).

kube-apiserver restarts cut connections in the middle of requests: a reused keep-alive
connection is closed before the answer, an answer stops half-way, a proxy answers garbage.
Every such failure must reach the operator's loops as an error they treat as transient
(ApiError, OSError or a timeout): anything else is logged as a crash by the reconcile loop and,
worse, ends the leader election loop silently, leaving a replica that believes it leads.
"""

from __future__ import annotations

import asyncio

import kopf
import pytest

from scibox_operator.runtime.kube import ApiError, KubeClient
from scibox_operator.runtime.leader import LeaderElector, Timing

TRANSIENT = (ApiError, OSError, asyncio.TimeoutError)

BEHAVIOURS = {
    # the connection closes after the request, before any answer (a killed server)
    "closed-before-answer": b"",
    # headers promise more body than arrives
    "answer-cut-short": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"kind\":",
    # not HTTP at all
    "garbage": b"\x00\x01 this is not http\r\n\r\n",
}


class BrokenServer:
    """A loopback TCP server that reads a request and answers with `reply`, then closes."""

    def __init__(self, reply: bytes):
        self.reply = reply
        self.server: asyncio.AbstractServer | None = None
        self.requests = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
            if self.reply:
                writer.write(self.reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()


def client_for(url: str) -> KubeClient:
    return KubeClient(lambda: kopf.ConnectionInfo(server=url, insecure=True))


@pytest.mark.parametrize("behaviour", sorted(BEHAVIOURS))
def test_a_broken_connection_is_a_transient_error(behaviour):
    async def scenario():
        async with BrokenServer(BEHAVIOURS[behaviour]) as url:
            client = client_for(url)
            try:
                with pytest.raises(Exception) as info:
                    await client.request("GET", "/apis/coordination.k8s.io/v1/namespaces/ns/leases/x")
            finally:
                await client.close()
            return info.value

    exc = asyncio.run(scenario())
    assert isinstance(exc, TRANSIENT), f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
    assert str(exc), "an error without a message"


@pytest.mark.parametrize("behaviour", sorted(BEHAVIOURS))
def test_leader_election_keeps_running_through_broken_connections(behaviour):
    async def scenario():
        async with BrokenServer(BEHAVIOURS[behaviour]) as url:
            client = client_for(url)
            changes: list[bool] = []
            elector = LeaderElector(client, namespace="ns", identity="me", timing=Timing(retry_seconds=0.05),
                                    on_change=changes.append)
            elector.start()
            try:
                await asyncio.sleep(0.6)
                alive = not elector._task.done()
                error = None if alive or elector._task.cancelled() else elector._task.exception()
            finally:
                await elector.stop()
                await client.close()
            return alive, error, elector.leading, changes

    alive, error, leading, changes = asyncio.run(scenario())
    assert alive, f"the election loop died: {type(error).__name__}: {error}"
    assert leading is False and changes == []
