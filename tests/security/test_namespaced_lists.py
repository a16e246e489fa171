"""A namespaced install (chart watchNamespaces) grants list rights only in its namespaces: the
operator's own LISTs (priming, re-listing) must stay inside them (issue 18). Against a
recording HTTP server on 127.0.0.1 standing in for the API server."""

from __future__ import annotations

import asyncio

from aiohttp import web

from scibox_operator.config import Settings
from scibox_operator.reconcile.reconciler import Controller
from scibox_operator.runtime.kube import KINDS, KubeClient, list_objects, list_paths, watched_namespaces

from .test_reconcile_policy import Credentials, Recorder, serving


async def list_answer(request: web.Request) -> web.Response:
    """Each namespaced list answers one object and its own resourceVersion."""
    parts = request.path.split("/")
    if "namespaces" in parts:
        ns = parts[parts.index("namespaces") + 1]
        version = {"team-a": "17", "team-b": "9"}.get(ns, "5")
        return web.json_response({"metadata": {"resourceVersion": version},
                                  "items": [{"metadata": {"name": f"in-{ns}", "namespace": ns,
                                                          "resourceVersion": version}}]})
    return web.json_response({"metadata": {"resourceVersion": "30"}, "items": []})


def test_paths_are_per_namespace_only_for_namespaced_kinds_of_a_namespaced_install():
    assert list_paths(KINDS["Deployment"], ()) == ["/apis/apps/v1/deployments"]
    assert list_paths(KINDS["Deployment"], ("a", "b")) == ["/apis/apps/v1/namespaces/a/deployments",
                                                           "/apis/apps/v1/namespaces/b/deployments"]
    assert list_paths(KINDS["Node"], ("a", "b")) == ["/api/v1/nodes"]
    assert watched_namespaces({"SCIBOX_WATCH_NAMESPACES": "b, a,,a"}) == ("a", "b")
    assert watched_namespaces({}) == ()


def test_one_answer_over_the_namespaces_with_the_oldest_version():
    api = Recorder(list_answer)

    async def go():
        async with serving(api):
            client = KubeClient(lambda: Credentials(api.url))
            try:
                return (await list_objects(client, "VLLMDeployment", ("team-a", "team-b")),
                        await list_objects(client, "VLLMDeployment", ()))
            finally:
                await client.close()

    namespaced, wide = asyncio.run(go())
    assert [i["metadata"]["name"] for i in namespaced["items"]] == ["in-team-a", "in-team-b"]
    assert namespaced["metadata"]["resourceVersion"] == "9", "the oldest list bounds what may be forgotten"
    assert wide["metadata"]["resourceVersion"] == "30"
    assert [p for _, p, _ in api.requests] == [
        "/apis/scibox.io/v1alpha1/namespaces/team-a/vllmdeployments",
        "/apis/scibox.io/v1alpha1/namespaces/team-b/vllmdeployments",
        "/apis/scibox.io/v1alpha1/vllmdeployments"]


def synced(api: Recorder, *, relist: bool) -> Controller:
    """A controller against `api` after its start-up priming (and, with `relist`, a resync)."""
    async def go() -> Controller:
        async with serving(api):
            controller = Controller(KubeClient(lambda: Credentials(api.url)), Settings(workers=1))
            try:
                await controller.sync.prime()
                if relist:
                    await controller.sync.relist_vllmdeployments()
                    await controller.sync.relist_children()
                return controller
            finally:
                await controller.hub.close()
                await controller.client.close()

    return asyncio.run(go())


def test_priming_and_relisting_of_a_namespaced_operator_never_list_cluster_wide(monkeypatch):
    monkeypatch.setenv("SCIBOX_WATCH_NAMESPACES", "team-a,team-b")
    api = Recorder(list_answer)
    controller = synced(api, relist=True)
    cluster_scoped = {"/api/v1/nodes", "/apis/storage.k8s.io/v1/storageclasses"}
    lists = [p for m, p, _ in api.requests if m == "GET" and "customresourcedefinitions" not in p]
    wide = [p for p in lists if "/namespaces/" not in p and p not in cluster_scoped]
    assert not wide, f"cluster-wide LISTs a namespaced install may not send: {wide}"
    assert {p.split("/namespaces/")[1].split("/")[0] for p in lists if "/namespaces/" in p} == {"team-a", "team-b"}
    assert set(controller.store.vllmds) == {("team-a", "in-team-a"), ("team-b", "in-team-b")}


def test_priming_knows_the_server_pods_and_their_owner_chain_before_the_first_probe(monkeypatch):
    # A restarted operator's first probe round must not judge a pod "not ours" only because its
    # ReplicaSet's watch event had not come yet (it wrote a transient status, then took it back).
    monkeypatch.setenv("SCIBOX_WATCH_NAMESPACES", "team-a")
    api = Recorder(list_answer)
    store = synced(api, relist=False).store
    assert ("team-a", "in-team-a") in store.pods
    assert store.child("ReplicaSet", "team-a", "in-team-a") == {"metadata": {
        "name": "in-team-a", "namespace": "team-a", "uid": None, "ownerReferences": []}}
    assert store.child("StatefulSet", "team-a", "in-team-a") is not None
    paths = {p for m, p, _ in api.requests if m == "GET"}
    assert {"/apis/apps/v1/namespaces/team-a/replicasets", "/apis/apps/v1/namespaces/team-a/statefulsets",
            "/api/v1/namespaces/team-a/pods"} <= paths
