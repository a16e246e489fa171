"""The prober probes, and sends the API key to, only pods the operator's own workload created
(issue 18): the pure chain check, and the real Prober against fake vLLM servers on loopback."""

from __future__ import annotations

import asyncio
import copy
import random
import time

import aiohttp
import pytest
from aiohttp import web

from scibox_operator.config import Settings
from scibox_operator.readiness.ownership import CHAINS, on_pod_network, owned_by, pod_is_ours
from scibox_operator.readiness.prober import Prober
from scibox_operator.reconcile.reconciler import Controller
from scibox_operator.render.deployment import CONTAINER_PORT
from scibox_operator.render.service import LEADER_INDEX_LABEL
from scibox_operator.runtime.kube import KubeClient
from scibox_operator.runtime.store import owner_summary, pod_summary

NS, VD_UID, API_KEY = "team", "vd-uid", "sk-the-real-key"


def ref(kind, name, uid, api_version="apps/v1", controller=True):
    return {"apiVersion": api_version, "kind": kind, "name": name, "uid": uid, "controller": controller}


def obj(name, uid, *owners):
    return {"metadata": {"name": name, "namespace": NS, "uid": uid, "ownerReferences": list(owners)}}


VD_REF = ref("VLLMDeployment", "m", VD_UID, "scibox.io/v1alpha1")
WORKLOADS = {
    ("Deployment", "m"): obj("m", "dep-uid", VD_REF),
    ("ReplicaSet", "m-abc"): obj("m-abc", "rs-uid", ref("Deployment", "m", "dep-uid")),
    ("LeaderWorkerSet", "m-group"): obj("m-group", "lws-uid", VD_REF),
    ("StatefulSet", "m-group"): obj("m-group", "sts-uid",
                                     ref("LeaderWorkerSet", "m-group", "lws-uid", "leaderworkerset.x-k8s.io/v1")),
    # Someone else's Deployment in the same namespace, and its ReplicaSet.
    ("Deployment", "other"): obj("other", "other-dep-uid", ref("VLLMDeployment", "x", "other-vd", "scibox.io/v1alpha1")),
    ("ReplicaSet", "other-1"): obj("other-1", "other-rs-uid", ref("Deployment", "other", "other-dep-uid")),
}


def lookup(kind, namespace, name):
    return WORKLOADS.get((kind, name)) if namespace == NS else None


def pod(*owners, ip="10.1.0.5", host_ip="192.168.0.10", host_network=False, name="p", uid="pod-uid", labels=None):
    return {"metadata": {"name": name, "namespace": NS, "uid": uid, "labels": labels or {},
                         "ownerReferences": list(owners)},
            "spec": {"hostNetwork": host_network},
            "status": {"phase": "Running", "podIP": ip, "hostIP": host_ip}}


RS_POD = pod(ref("ReplicaSet", "m-abc", "rs-uid"))
LEADER_POD = pod(ref("StatefulSet", "m-group", "sts-uid"))


# --- the pure check ---------------------------------------------------------------------------


def test_pods_of_our_replica_set_or_leader_stateful_set_are_ours():
    assert pod_is_ours(RS_POD, VD_UID, lookup)
    assert pod_is_ours(LEADER_POD, VD_UID, lookup)
    assert set(CHAINS) == {"ReplicaSet", "StatefulSet"}


@pytest.mark.parametrize("impostor", [
    pod(),  # labels only
    pod(ref("ReplicaSet", "m-abc", "rs-uid", controller=False)),  # an owner, not the controller
    pod(ref("ReplicaSet", "m-abc", "forged-uid")),  # the name of ours, another uid
    pod(ref("ReplicaSet", "nope", "rs-uid")),  # a name the store does not hold
    pod(ref("ReplicaSet", "other-1", "other-rs-uid")),  # another VLLMDeployment's workload
    pod(ref("ReplicaSet", "m-abc", "rs-uid", api_version="apps/v1beta2")),
    pod(ref("Deployment", "m", "dep-uid")),  # skipping a link
    pod(ref("VLLMDeployment", "m", VD_UID, "scibox.io/v1alpha1")),  # straight to the owner
    pod(ref("Job", "m", "job-uid", "batch/v1")),
    pod(ref("StatefulSet", "m-group", "lws-uid")),  # the uid of the wrong link
], ids=["labels-only", "not-controller", "forged-uid", "unknown-name", "other-workload", "other-api-version",
        "skips-replica-set", "owner-directly", "a-job", "wrong-uid"])
def test_a_pod_that_does_not_chain_up_to_the_uid_is_not_ours(impostor):
    assert not owned_by(impostor, VD_UID, lookup)


def test_the_chain_must_end_at_this_vllmdeployment_and_in_its_namespace():
    assert not owned_by(RS_POD, "another-vd-uid", lookup)
    assert not owned_by(RS_POD, "", lookup)
    elsewhere = copy.deepcopy(RS_POD)
    elsewhere["metadata"]["namespace"] = "other-team"
    assert not owned_by(elsewhere, VD_UID, lookup)


def test_node_network_pods_are_never_ours_whoever_owns_them():
    assert on_pod_network(RS_POD)
    host_network = pod(ref("ReplicaSet", "m-abc", "rs-uid"), host_network=True)
    node_ip = pod(ref("ReplicaSet", "m-abc", "rs-uid"), ip="192.168.0.10")
    no_ip = pod(ref("ReplicaSet", "m-abc", "rs-uid"), ip=None)
    for p in (host_network, node_ip, no_ip):
        assert owned_by(p, VD_UID, lookup) and not pod_is_ours(p, VD_UID, lookup)


def test_the_summaries_keep_what_the_check_reads():
    full_rs = {"apiVersion": "apps/v1", "kind": "ReplicaSet",
               "metadata": {**WORKLOADS[("ReplicaSet", "m-abc")]["metadata"], "labels": {"a": "b"},
                            "managedFields": [{"big": "x" * 1000}]},
               "spec": {"template": {"spec": {"containers": [{"name": "vllm"}]}}}}
    summary = owner_summary(full_rs)
    assert summary == {"metadata": WORKLOADS[("ReplicaSet", "m-abc")]["metadata"]}
    full_pod = {"metadata": {**RS_POD["metadata"], "managedFields": []},
                "spec": {"hostNetwork": True, "containers": [{"name": "vllm", "env": [{"name": "K"}]}]},
                "status": {**RS_POD["status"], "conditions": [], "containerStatuses": []}}
    summarized = pod_summary(full_pod)
    assert summarized["metadata"]["ownerReferences"] == RS_POD["metadata"]["ownerReferences"]
    assert summarized["spec"] == {"hostNetwork": True} and summarized["status"]["hostIP"] == "192.168.0.10"
    assert not pod_is_ours(summarized, VD_UID, lookup), "the summary still says hostNetwork"


# --- the real prober --------------------------------------------------------------------------


class FakeServers:
    """A minimal vLLM OpenAI server on several loopback addresses, port CONTAINER_PORT (the
    port the prober always uses), recording who was asked what with which Authorization."""

    def __init__(self, served: str) -> None:
        self.served = served
        self.requests: list[tuple[str, str, str | None]] = []  # (address, path, Authorization)
        self._runners: list[web.AppRunner] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((request.host.split(":")[0], request.path, request.headers.get("Authorization")))
        if request.path == "/health":
            return web.Response(text="")
        if request.headers.get("Authorization") != f"Bearer {API_KEY}":
            return web.Response(status=401)
        if request.path == "/v1/models":
            return web.json_response({"data": [{"id": self.served}]})
        return web.json_response({"choices": [{"text": "x"}]})

    async def start(self, addresses: list[str]) -> None:
        for address in addresses:
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self.handle)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, address, CONTAINER_PORT).start()
            self._runners.append(runner)

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()

    def asked(self, address: str) -> list[tuple[str, str | None]]:
        return [(path, auth) for a, path, auth in self.requests if a == address]


def vllmd_body():
    return {"apiVersion": "scibox.io/v1alpha1", "kind": "VLLMDeployment",
            "metadata": {"name": "m", "namespace": NS, "uid": VD_UID, "generation": 1, "resourceVersion": "1"},
            "spec": {"model": {"name": "org/model", "servedModelName": "tiny"}, "resources": {"gpus": 1},
                     "auth": {"apiKeySecretRef": {"name": "key"}}}}


def server_pod(name, ip, *owners, host_ip="127.0.0.1", host_network=False, leader_index=None):
    labels = {"scibox.io/vllmdeployment": "m", "app.kubernetes.io/component": "server",
              "app.kubernetes.io/managed-by": "scibox-vllm-operator"}
    if leader_index is not None:
        labels[LEADER_INDEX_LABEL] = leader_index
    body = pod(*owners, ip=ip, host_ip=host_ip, host_network=host_network, name=name, uid=f"uid-{name}",
               labels=labels)
    body["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    return pod_summary(body)


def controller_with_model() -> Controller:
    """A controller whose store holds the model "m" and its workload chain (no API server)."""
    controller = Controller(KubeClient(lambda: None), Settings())
    controller.store.vllmds[(NS, "m")] = vllmd_body()
    for (kind, _), body in WORKLOADS.items():
        controller.store.put_child(kind, body)
    return controller


async def probe_once(controller):
    """One probe round of the model "m", the API key as the Secret cache holds it (no API server
    here); returns the readiness summary the prober stored."""
    controller.secrets._cache[(NS, "key", "api-key")] = (time.monotonic(), API_KEY)
    prober = Prober(controller)
    prober._session = aiohttp.ClientSession()
    try:
        await prober._probe_one((NS, "m"), asyncio.Semaphore(4))
    finally:
        await prober._session.close()
    return controller.store.readiness.get((NS, "m"))


def test_the_prober_sends_the_key_only_to_the_pod_of_our_replica_set(monkeypatch):
    monkeypatch.delenv("SCIBOX_PROBE_ALLOWED_CIDRS", raising=False)
    base = f"127.{random.randint(64, 250)}.{random.randint(1, 250)}"
    ours, labelled, host_net, forged, node = (f"{base}.{i}" for i in (10, 11, 12, 13, 14))

    async def run():
        servers = FakeServers("tiny")
        await servers.start([ours, labelled, host_net, forged, node])
        controller = controller_with_model()
        try:
            store = controller.store
            rs = ref("ReplicaSet", "m-abc", "rs-uid")
            for p in (server_pod("ours", ours, rs),
                      server_pod("labelled", labelled),
                      server_pod("host-net", host_net, rs, host_ip=host_net, host_network=True),
                      server_pod("forged", forged, ref("ReplicaSet", "m-abc", "forged-uid")),
                      server_pod("on-node-ip", node, rs, host_ip=node)):
                store.put_pod(p)
            return servers, await probe_once(controller)
        finally:
            await servers.stop()
            await controller.hub.close()

    servers, summary = asyncio.run(run())
    assert [p for p, _ in servers.asked(ours)] == ["/health", "/v1/models", "/v1/completions"]
    assert all(auth == f"Bearer {API_KEY}" for p, auth in servers.asked(ours) if p != "/health")
    for impostor in (labelled, host_net, forged, node):
        assert servers.asked(impostor) == [], f"{impostor} was probed"
    assert not any(auth for a, _, auth in servers.requests if a != ours), "the key went elsewhere"
    assert (summary.ready_replicas, summary.reason) == (1, "Serving")


def test_a_multi_node_leader_is_probed_through_its_stateful_set_and_workers_never(monkeypatch):
    monkeypatch.delenv("SCIBOX_PROBE_ALLOWED_CIDRS", raising=False)
    base = f"127.{random.randint(64, 250)}.{random.randint(1, 250)}"
    leader, worker, fake_leader = (f"{base}.{i}" for i in (20, 21, 22))

    async def run():
        servers = FakeServers("tiny")
        await servers.start([leader, worker, fake_leader])
        controller = controller_with_model()
        try:
            store = controller.store
            sts = ref("StatefulSet", "m-group", "sts-uid")
            store.put_pod(server_pod("m-group-0", leader, sts, leader_index="0"))
            store.put_pod(server_pod("m-group-0-1", worker, ref("StatefulSet", "m-group-0", "w-uid"),
                                     leader_index="1"))
            store.put_pod(server_pod("fake-0", fake_leader, leader_index="0"))
            return servers, await probe_once(controller)
        finally:
            await servers.stop()
            await controller.hub.close()

    servers, summary = asyncio.run(run())
    assert servers.asked(leader) and not servers.asked(worker) and not servers.asked(fake_leader)
    assert summary.ready_replicas == 1


def test_a_huge_model_list_is_not_read_whole_and_not_echoed(monkeypatch):
    """probe.py reads at most 1 MiB of an answer and puts none of it in the message."""
    from scibox_operator.readiness.probe import probe_endpoint

    address = f"127.{random.randint(64, 250)}.{random.randint(1, 250)}.30"

    async def run():
        sent = {"bytes": 0}

        async def handle(request):
            if request.path == "/health":
                return web.Response(text="")
            resp = web.StreamResponse()
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            try:
                await resp.write(b'{"data": [{"id": "SECRET-')
                while sent["bytes"] < 50 * 1024 * 1024:
                    await resp.write(b"A" * 65536)
                    sent["bytes"] += 65536
            except (ConnectionError, asyncio.CancelledError):
                pass
            return resp

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, address, CONTAINER_PORT).start()
        try:
            async with aiohttp.ClientSession() as session:
                result = await probe_endpoint(session, f"http://{address}:{CONTAINER_PORT}", "tiny", timeout=10)
        finally:
            await runner.cleanup()
        return result, sent["bytes"]

    result, sent = asyncio.run(run())
    assert result.reason.value == "EngineDown" and "not a model list" in result.message
    assert "SECRET" not in result.message
    assert sent < 20 * 1024 * 1024, "the probe stopped reading after its cap"
