"""The controller's own watches of children whose CRDs come and go, against the real API server
(KEDA's real CRDs): they follow the CRD in and out, see every change, and outlive a CRD deleted
under an open watch (kopf ended the whole operator there)."""

from __future__ import annotations

import asyncio
import ssl
import time
import uuid

import pytest

from scibox_operator.api.names import SCALED_OBJECT_CRD
from scibox_operator.config import Settings
from scibox_operator.reconcile.reconciler import Controller
from scibox_operator.render.common import MANAGED_BY, MANAGED_BY_LABEL
from scibox_operator.runtime.kube import KubeClient
from scibox_operator.runtime.optional_watch import path_namespace
from tools.localcluster import keda_crds

pytestmark = pytest.mark.cluster


class AdminCredentials:
    """What KubeClient needs of kopf's ConnectionInfo, from the local cluster's admin pair."""

    def __init__(self, cluster) -> None:
        rest = cluster.rest
        self.server, self.insecure = rest.server, False
        self._files = (str(rest.ca_file), str(rest.cert_file), str(rest.key_file))

    def as_ssl_context(self) -> ssl.SSLContext:
        ca, cert, key = self._files
        ctx = ssl.create_default_context(cafile=ca)
        ctx.load_cert_chain(cert, key)
        return ctx

    def as_http_headers(self) -> dict[str, str]:
        return {}


def test_a_namespaced_path_names_its_namespace():
    assert path_namespace("/apis/keda.sh/v1alpha1/namespaces/team-a/scaledobjects") == "team-a"
    assert path_namespace("/apis/keda.sh/v1alpha1/scaledobjects") is None


def scaled_object(name: str, namespace: str, **labels: str) -> dict:
    return {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
            "metadata": {"name": name, "namespace": namespace, "labels": {MANAGED_BY_LABEL: MANAGED_BY, **labels}},
            "spec": {"scaleTargetRef": {"name": "nothing"},
                     "triggers": [{"type": "cpu", "metadata": {"value": "50"}}]}}


async def until(what: str, probe, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)


def test_the_watch_follows_the_crd_in_and_out_and_outlives_a_crd_deleted_under_it(cluster, namespace):
    rest = cluster.rest
    keda_crds.uninstall(rest)
    base = f"/apis/keda.sh/v1alpha1/namespaces/{namespace}/scaledobjects"
    name = f"so-{uuid.uuid4().hex[:6]}"

    async def go() -> None:
        controller = Controller(KubeClient(lambda: AdminCredentials(cluster)), Settings(workers=1))
        store = controller.store
        try:
            controller.start()
            assert controller.optional_watches.watching() == set(), "no CRD, no watch"
            await asyncio.to_thread(keda_crds.install, rest)
            controller.crds_changed(SCALED_OBJECT_CRD, True)
            assert controller.optional_watches.watching() == {"ScaledObject"}

            await asyncio.to_thread(rest.apply, base, name, scaled_object(name, namespace))
            await until("the ScaledObject in the store", lambda: store.child("ScaledObject", namespace, name))
            await asyncio.to_thread(rest.apply, base, name, scaled_object(name, namespace, edited="yes"))
            await until("the edit in the store", lambda: ((store.child("ScaledObject", namespace, name) or {})
                                                         .get("metadata", {}).get("labels") or {}).get("edited"))
            await asyncio.to_thread(rest.delete, f"{base}/{name}")
            await until("the deletion in the store", lambda: store.child("ScaledObject", namespace, name) is None)

            # The CRD goes while the watch is open, before the operator hears of it: the watch
            # waits (404s), it does not end.
            await asyncio.to_thread(rest.apply, base, name, scaled_object(name, namespace))
            await until("the new ScaledObject in the store", lambda: store.child("ScaledObject", namespace, name))
            await asyncio.to_thread(keda_crds.uninstall, rest)
            await asyncio.sleep(3)
            tasks = list(controller.optional_watches._tasks.values())
            assert tasks and not any(t.done() for t in tasks), "the watch ended with its CRD"
            controller.crds_changed(SCALED_OBJECT_CRD, False)
            assert controller.optional_watches.watching() == set()
            await asyncio.sleep(0)
            assert all(t.cancelled() or t.done() for t in tasks)

            # Back again: the first LIST drops what went meanwhile, the watch resumes.
            await asyncio.to_thread(keda_crds.install, rest)
            controller.crds_changed(SCALED_OBJECT_CRD, True)
            await until("the vanished ScaledObject dropped by the re-list",
                        lambda: store.child("ScaledObject", namespace, name) is None)
            await asyncio.to_thread(rest.apply, base, name, scaled_object(name, namespace))
            await until("a ScaledObject after the CRD came back", lambda: store.child("ScaledObject", namespace, name))
        finally:
            await controller.stop()
            await controller.client.close()

    try:
        asyncio.run(go())
    finally:
        keda_crds.uninstall(rest)
