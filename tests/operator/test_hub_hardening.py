"""The hub client against a hostile HTTP server on 127.0.0.1 (issue 18): size cap, timeout,
quoted path segments, and errors in the operator's own words."""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

from scibox_operator.runtime.hub import MAX_METADATA_BYTES, MIB, HubClient, HubError, quote_repo

CONFIG = {"model_type": "llama", "hidden_size": 64}
# Repo org -> the status the hostile hub answers with (the names carry no digits, so a code in a
# message can only come from the answer).
ERRORS = {"oops": 500, "busy": 503, "teapot": 418, "legal": 451, "moved": 302, "weird": 299}


class HostileHub:
    """Real HTTP on loopback. Each repo name picks a behaviour; raw request paths are recorded."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.sent: dict[str, int] = {}
        self.endpoint = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.paths.append(request.raw_path)
        behaviour = request.match_info["org"]
        if behaviour == "huge":  # no Content-Length: streams until the client stops reading
            return await self._stream(request, "huge", total=100 * MIB, pause=0.0)
        if behaviour == "declared":  # says up front that it is too large
            resp = web.StreamResponse(headers={"Content-Length": str(100 * MIB)})
            await resp.prepare(request)
            await resp.write(b"{")
            await asyncio.sleep(5)
            return resp
        if behaviour == "slow":  # answers at once, then one byte every 0.2 s
            return await self._stream(request, "slow", total=10 * MIB, pause=0.2, chunk=1)
        if behaviour in ERRORS:
            return web.Response(status=ERRORS[behaviour], text="SECRET-BODY from 169.254.169.254: instance credentials")
        if behaviour == "array":
            return web.json_response([1, 2, 3])
        if request.path.endswith("config.json") and not request.path.endswith("index.json"):
            return web.json_response(CONFIG)
        return web.Response(status=404)

    async def _stream(self, request, name, *, total, pause, chunk=64 * 1024):
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        self.sent[name] = 0
        try:
            while self.sent[name] < total:
                await resp.write(b" " * chunk)
                self.sent[name] += chunk
                await asyncio.sleep(pause)
        except (ConnectionError, asyncio.CancelledError):
            pass  # the client hung up: what it took is in self.sent
        return resp


@asynccontextmanager
async def hostile_hub():
    hub = HostileHub()
    app = web.Application()
    app.router.add_get("/{org}/{tail:.*}", hub.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    hub.endpoint = f"http://127.0.0.1:{port}"
    try:
        yield hub
    finally:
        await runner.cleanup()


def fail(repo: str, **client_options) -> tuple[HubError, float, HostileHub]:
    async def go():
        async with hostile_hub() as hub:
            client = HubClient(hub.endpoint, **client_options)
            started = time.monotonic()
            try:
                await client.metadata(repo, "main")
            except HubError as exc:
                return exc, time.monotonic() - started, hub
            finally:
                await client.close()
            raise AssertionError(f"{repo}: no HubError")

    return asyncio.run(go())


def test_an_endless_body_is_cut_at_the_cap_and_not_read_further():
    error, _, hub = fail("huge/model")
    assert error.reason == "HubResponseTooLarge" and error.permanent
    assert "larger than 8 MiB" in error.message
    # The server could write only what the cap plus socket buffers took in, not 100 MiB.
    assert MAX_METADATA_BYTES < hub.sent["huge"] < MAX_METADATA_BYTES + 16 * MIB


def test_a_declared_oversized_body_is_refused_before_reading_it():
    error, seconds, _ = fail("declared/model", timeout=30)
    assert error.reason == "HubResponseTooLarge"
    assert seconds < 3, "refused from the Content-Length, without waiting for the body"


def test_a_smaller_cap_applies_to_small_bodies_too():
    error, _, _ = fail("huge/model", max_bytes=1024)
    assert error.reason == "HubResponseTooLarge"


def test_a_body_that_drips_slowly_times_out():
    error, seconds, hub = fail("slow/model", timeout=1.0)
    assert error.reason == "HubUnreachable" and not error.permanent
    assert "did not answer within 1 s" in error.message
    assert 0.9 < seconds < 3 and hub.sent["slow"] < 64


@pytest.mark.parametrize("behaviour, code", sorted(ERRORS.items()))
def test_errors_carry_neither_the_body_nor_the_status_code(behaviour, code):
    error, _, _ = fail(f"{behaviour}/model")
    assert error.reason == "HubUnavailable" and not error.permanent
    url, _, said = error.message.rpartition(": ")
    assert said == "the hub answered with an error", error.message
    # The URL holds a random port, which can contain the status code's digits.
    assert url.startswith("http://127.0.0.1:") and url.endswith(f"/{behaviour}/model/resolve/main/config.json")
    for leaked in ("SECRET-BODY", "169.254", "credentials", str(code)):
        assert leaked not in said and leaked not in url.split("/", 3)[-1], error.message


def test_path_segments_are_quoted_never_concatenated_raw():
    async def go():
        async with hostile_hub() as hub:
            client = HubClient(hub.endpoint)
            meta = await client.metadata("ok/we?ird#name", "refs/pr/1")
            await client.close()
            return meta, hub.paths

    meta, paths = asyncio.run(go())
    assert meta.config == CONFIG
    assert paths[0] == "/ok/we%3Fird%23name/resolve/refs%2Fpr%2F1/config.json", paths
    assert quote_repo("org/na me@x") == "org/na%20me%40x"
    for bad in ("org/..", "../etc", "org//x", ""):
        with pytest.raises(HubError) as err:
            quote_repo(bad)
        assert err.value.reason == "InvalidModelName"


def test_a_config_that_is_not_an_object_is_refused():
    error, _, _ = fail("array/model")
    assert error.reason == "InvalidModelConfig" and "not a JSON object" in error.message


def test_an_unreachable_hub_says_so_without_the_socket_error():
    async def go():
        async with hostile_hub() as hub:
            closed = hub.endpoint  # the server goes away when the context ends
        client = HubClient(closed, timeout=2)
        try:
            await client.metadata("org/model", "main")
        except HubError as exc:
            return exc
        finally:
            await client.close()

    error = asyncio.run(go())
    assert error.reason == "HubUnreachable" and error.message.endswith("cannot connect to the hub")
    assert "Errno" not in error.message and "refused" not in error.message.lower()


def test_json_of_the_real_shape_still_works():
    async def go():
        async with hostile_hub() as hub:
            client = HubClient(hub.endpoint)
            meta = await client.metadata("ok/model", "main")
            await client.close()
            return meta

    meta = asyncio.run(go())
    assert meta.config == CONFIG and meta.safetensors_index is None
    assert json.dumps(meta.config)
