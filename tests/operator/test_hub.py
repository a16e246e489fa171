"""The operator's hub client against the local hub mirror (real HTTP on loopback)."""

from __future__ import annotations

import asyncio
import gc
import weakref

from scibox_operator.runtime.hub import HubClient, HubError
from tests.fixtures.hub import TINY_REPO
from tests.waiting import wait_for


def logged(hub, path: str) -> int:
    """The mirror logs a request after answering it: wait until the log has caught up."""
    wait_for(f"the mirror to log {path}", lambda: hub.requests("GET", path), timeout=5)
    return len(hub.requests("GET", path))


def test_metadata_is_read_once_per_repo_and_revision(hub):
    async def twice():
        client = HubClient(hub.endpoint)
        try:
            return [await client.metadata(TINY_REPO, "main") for _ in range(2)]
        finally:
            await client.close()

    first, second = asyncio.run(twice())
    assert first.config["model_type"] == "llama" and second is first
    assert logged(hub, f"/{TINY_REPO}/resolve/main/config.json") == 1


class _Payload:
    """Stands for what a reconcile pass holds: rendered children, parsed specs."""


def test_a_remembered_failure_keeps_no_caller_alive(hub):
    """A failure is remembered for a while and answered without asking the hub again; raising
    the remembered exception object itself would chain every caller's frame onto its traceback
    and keep what those frames hold (1.4 GB at 300 objects sharing an unreachable hub)."""
    client = HubClient(hub.endpoint)

    async def one_pass() -> tuple[weakref.ref, tuple[str, bool]]:
        payload = _Payload()
        try:
            await client.metadata("scibox/no-such-model", "main")
        except HubError as exc:
            verdict = (exc.reason, exc.permanent)  # not exc itself: its traceback is this frame
        else:
            raise AssertionError("a missing repo must fail")
        return weakref.ref(payload), verdict

    async def passes():
        try:
            return [await one_pass() for _ in range(3)]
        finally:
            await client.close()

    gc.disable()  # only reference counting: what a cycle keeps stays, as between collections
    try:
        results = asyncio.run(passes())
        for payload, _ in results:
            assert payload() is None, "a caller's frame is still referenced"
    finally:
        gc.enable()
    assert [verdict for _, verdict in results] == [("ModelNotFound", True)] * 3
    assert logged(hub, "/scibox/no-such-model/resolve/main/config.json") == 1


def test_concurrent_callers_share_one_request_and_get_their_own_failure(hub):
    client, waiters = HubClient(hub.endpoint), 4

    async def together():
        try:
            return await asyncio.gather(*(client.metadata("scibox/no-such-model", "main") for _ in range(waiters)),
                                        return_exceptions=True)
        finally:
            await client.close()

    errors = asyncio.run(together())
    assert all(isinstance(e, HubError) and e.reason == "ModelNotFound" for e in errors)
    assert len({id(e) for e in errors}) == waiters
    assert logged(hub, "/scibox/no-such-model/resolve/main/config.json") == 1
