"""The reconcile pass under the administrator's policy (issue 18), offline: the real Controller
and hub client against two recording HTTP servers on 127.0.0.1, one standing in for the API
server (answers status patches, events, the token Secret and applies) and one for a hub.

A VLLMDeployment naming an endpoint the administrator did not allow gets Ready=False
EndpointNotAllowed, and neither its token Secret is read nor the endpoint asked anything; the
allowed endpoint gets the token. (The same on a real cluster is left to the cluster tests.)
"""

from __future__ import annotations

import asyncio
import base64
import json
from contextlib import asynccontextmanager

from aiohttp import web

from scibox_operator.config import Settings
from scibox_operator.reconcile.reconciler import Controller
from scibox_operator.runtime.kube import KubeClient

NS, TOKEN = "team", "hf_secret_token"


class Recorder:
    """An HTTP server on loopback that records (method, path, Authorization) of every request."""

    def __init__(self, answer) -> None:
        self.answer = answer
        self.requests: list[tuple[str, str, str | None]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, request.path, request.headers.get("Authorization")))
        return await self.answer(request)


async def api_answer(request: web.Request) -> web.Response:
    if request.method == "GET" and request.path.endswith("/secrets/hf"):
        return web.json_response({"data": {"token": base64.b64encode(TOKEN.encode()).decode()}})
    if request.method == "PATCH":
        body = json.loads(await request.text())
        body.setdefault("metadata", {}).update(uid=f"uid-{request.path.rsplit('/', 1)[-1]}", resourceVersion="2")
        return web.json_response(body)
    if request.method == "POST":
        return web.json_response({}, status=201)
    return web.json_response({"reason": "NotFound", "message": "not here"}, status=404)


async def hub_answer(request: web.Request) -> web.Response:
    if request.path.endswith("/config.json"):
        return web.json_response({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 2,
                                  "num_key_value_heads": 1, "num_hidden_layers": 2, "intermediate_size": 128,
                                  "vocab_size": 256, "max_position_embeddings": 512, "torch_dtype": "float32"})
    return web.Response(status=404)


@asynccontextmanager
async def serving(*recorders: Recorder):
    runners = []
    try:
        for recorder in recorders:
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", recorder.handle)
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            recorder.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
            runners.append(runner)
        yield
    finally:
        for runner in runners:
            await runner.cleanup()


class Credentials:
    """What KubeClient needs of kopf's ConnectionInfo: plain HTTP on loopback."""

    def __init__(self, server: str) -> None:
        self.server, self.insecure = server, True

    def as_http_headers(self) -> dict[str, str]:
        return {}


def vllmd(endpoint: str) -> dict:
    return {"apiVersion": "scibox.io/v1alpha1", "kind": "VLLMDeployment",
            "metadata": {"name": "m", "namespace": NS, "uid": "vd-uid", "generation": 1, "resourceVersion": "1"},
            "spec": {"model": {"name": "org/model"}, "resources": {"gpus": 1},
                     "parallelism": {"tensorParallelSize": 1, "pipelineParallelSize": 1},
                     "cache": {"size": "1Gi", "endpoint": endpoint, "tokenSecretRef": {"name": "hf"}}}}


def reconcile_once(endpoint_of) -> tuple[Recorder, Recorder, Recorder, dict]:
    """One pass of a VLLMDeployment whose cache.endpoint is `endpoint_of(allowed_hub, other_hub)`;
    the operator's own hub (the only one allowed) is `allowed_hub`."""
    api, allowed, other = Recorder(api_answer), Recorder(hub_answer), Recorder(hub_answer)

    async def go():
        async with serving(api, allowed, other):
            controller = Controller(KubeClient(lambda: Credentials(api.url)),
                                    Settings(hub_endpoint=allowed.url, workers=1))
            try:
                controller.store.vllmds[(NS, "m")] = vllmd(endpoint_of(allowed.url, other.url))
                await controller.reconcile((NS, "m"))
                await asyncio.sleep(0.2)  # the phase Event is posted in the background
                return controller.store.vllmds[(NS, "m")]
            finally:
                await controller.hub.close()
                await controller.client.close()

    return api, allowed, other, asyncio.run(go())


def ready(body: dict) -> dict:
    return next(c for c in body["status"]["conditions"] if c["type"] == "Ready")


def test_an_endpoint_not_allowed_gets_no_request_and_its_token_is_never_read():
    api, allowed, other, body = reconcile_once(lambda allowed, other: other)
    condition = ready(body)
    assert (condition["status"], condition["reason"]) == ("False", "EndpointNotAllowed")
    assert body["status"]["phase"] == "Failed" and other.url in condition["message"]
    assert other.requests == [] and allowed.requests == [], "no hub was asked anything"
    assert not [r for r in api.requests if "/secrets/" in r[1]], "the token Secret was not read"
    assert {(m, p.rsplit("/", 1)[-1]) for m, p, _ in api.requests} <= {("PATCH", "status"), ("POST", "events")}, \
        "only the status (and its Event) was written: no child"


def test_a_lookalike_of_the_allowed_endpoint_is_refused_too():
    api, allowed, other, body = reconcile_once(lambda allowed, other: allowed.replace("127.0.0.1", "127.0.0.1.nip.io"))
    assert ready(body)["reason"] == "EndpointNotAllowed"
    assert allowed.requests == [] and not [r for r in api.requests if "/secrets/" in r[1]]


def test_the_allowed_endpoint_is_asked_with_the_token():
    api, allowed, other, body = reconcile_once(lambda allowed, other: allowed)
    assert ("GET", "/api/v1/namespaces/team/secrets/hf", None) in api.requests
    asked = [(p, auth) for m, p, auth in allowed.requests]
    assert ("/org/model/resolve/main/config.json", f"Bearer {TOKEN}") in asked
    assert other.requests == []
    assert ready(body)["reason"] != "EndpointNotAllowed"
    job = [p for m, p, _ in api.requests if m == "PATCH" and "/jobs/" in p]
    assert job, "the download Job is rendered for an allowed endpoint"
