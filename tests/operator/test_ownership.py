"""Nothing the user made is taken, and a shared cache is never deleted under a user who keeps it
(issue 16), on the real cluster with the real operator."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import yaml

from scibox_operator.api.spec import parse
from scibox_operator.planning.serving_plan import cache_claim_name
from tests.faults.convergence import wait_controllers_recovered
from tests.fixtures.operator import OperatorProcess
from tests.fixtures.tcp_proxy import TcpProxy

from .kubehelp import apply, condition, get, wait_for

pytestmark = pytest.mark.cluster


def vllmd(name: str, **spec) -> dict:
    base = {"model": {"name": "scibox/tiny-llama"}, "resources": {"gpus": 1}, "cache": {"size": "1Gi"}}
    base.update(spec)
    return {"apiVersion": "scibox.io/v1alpha1", "kind": "VLLMDeployment", "metadata": {"name": name}, "spec": base}


def user_objects(name: str, namespace: str, claim: str) -> list[dict]:
    """What a user might have made before: no labels, no owner references."""
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
         "spec": {"selector": {"app": "mine"}, "ports": [{"name": "web", "port": 80}]}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": name, "namespace": namespace},
         "spec": {"podSelector": {"matchLabels": {"app": "mine"}}, "policyTypes": ["Ingress"]}},
        {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
         "metadata": {"name": name, "namespace": namespace},
         "spec": {"selector": {"matchLabels": {"app": "mine"}}, "endpoints": [{"port": "web"}]}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim, "namespace": namespace},
         "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "5Mi"}}}},
    ]


def fingerprint(cluster, kind: str, name: str, namespace: str) -> tuple:
    obj = get(cluster, kind, name, namespace)
    assert obj is not None, f"{kind} {name} is gone"
    meta = obj["metadata"]
    return (meta["uid"], meta.get("labels"), meta.get("ownerReferences"), yaml.safe_dump(obj.get("spec"), sort_keys=True),
            meta.get("deletionTimestamp"))


KIND_NAMES = {"Service": "service", "NetworkPolicy": "networkpolicy",
              "ServiceMonitor": "servicemonitors.monitoring.coreos.com", "PersistentVolumeClaim": "pvc"}


def test_a_users_objects_with_colliding_names_are_untouched_reported_and_kept(cluster, operator, namespace):
    cluster.install_prometheus_crds()
    name = "mine"
    body = vllmd(name, networkPolicy={"enabled": True})
    claim = cache_claim_name(parse({**body, "metadata": {"name": name, "namespace": namespace}}), False)
    objects = user_objects(name, namespace, claim)
    for obj in objects:
        apply(cluster, namespace, obj)
    before = {o["kind"]: fingerprint(cluster, KIND_NAMES[o["kind"]], o["metadata"]["name"], namespace) for o in objects}

    apply(cluster, namespace, body)
    vd = wait_for(lambda: (lambda o: o if (condition(o, "Ready") or {}).get("reason") == "ChildConflict" else None)(
        get(cluster, "vllmd", name, namespace)), timeout=60, what="Ready=False ChildConflict")
    message = condition(vd, "Ready")["message"]
    assert f"PersistentVolumeClaim {claim}" in message, message
    time.sleep(3)  # a few more passes (the conflict is retried with back-off)
    # Nothing that mounts a foreign claim is created (the Job would write into the user's volume).
    assert not get(cluster, "jobs", None, namespace)["items"]
    assert get(cluster, "deployment", name, namespace) is None
    after = {o["kind"]: fingerprint(cluster, KIND_NAMES[o["kind"]], o["metadata"]["name"], namespace) for o in objects}
    assert after == before, "a user's object was modified"

    # The claim is freed: the operator goes on, and still leaves the other three alone.
    cluster.kubectl("delete", "pvc", claim, "-n", namespace, "--wait=true")
    vd = wait_for(lambda: (lambda o: o if {"Service", "NetworkPolicy", "ServiceMonitor"} <= set(
        re.findall(r"(Service|NetworkPolicy|ServiceMonitor) mine", condition(o, "Ready")["message"]))
        and "PersistentVolumeClaim" not in condition(o, "Ready")["message"] else None)(
        get(cluster, "vllmd", name, namespace)), timeout=90, what="the three other conflicts reported")
    wait_for(lambda: get(cluster, "deployment", name, namespace), timeout=90, what="the Deployment, once the claim is ours")
    del before["PersistentVolumeClaim"]
    after = {k: fingerprint(cluster, KIND_NAMES[k], name, namespace) for k in before}
    assert after == before

    cluster.kubectl("delete", "vllmd", name, "-n", namespace, "--wait=true")
    wait_for(lambda: get(cluster, "deployment", name, namespace) is None, timeout=60, what="our Deployment collected")
    time.sleep(3)  # the garbage collector had its chance
    assert {k: fingerprint(cluster, KIND_NAMES[k], name, namespace) for k in before} == before


def job_applies(operator) -> float:
    total = 0.0
    for line in operator.metrics().splitlines():
        if line.startswith('scibox_operator_applies_total{kind="Job"}'):
            total += float(line.split()[-1])
    return total


def test_a_delete_users_deletion_leaves_the_claim_a_retain_user_serves_from(cluster, operator, namespace,
                                                                         rwx_storage_class):
    applies_before = job_applies(operator)
    apply(cluster, namespace, vllmd("keeper", cache={"size": "1Gi", "storageClassName": rwx_storage_class}))
    apply(cluster, namespace, vllmd("dropper", cache={"size": "1Gi", "storageClassName": rwx_storage_class,
                                                      "deletionPolicy": "Delete"}))
    for name in ("keeper", "dropper"):
        wait_for(lambda: get(cluster, "deployment", name, namespace), timeout=120, what=f"{name}'s Deployment")
    claims = get(cluster, "pvc", None, namespace)["items"]
    assert len(claims) == 1 and claims[0]["metadata"]["name"].startswith("model-cache-"), "one shared claim"
    claim = claims[0]["metadata"]["name"]
    assert not claims[0]["metadata"].get("ownerReferences"), "a Retain user keeps the claim out of the GC's reach"
    settled = job_applies(operator)
    time.sleep(10)  # both users' passes keep coming (pods, probes): the Job must not be rewritten
    writes = job_applies(operator) - applies_before
    assert job_applies(operator) == settled and writes <= 4, f"the shared Job was written {writes} times"

    cluster.kubectl("delete", "vllmd", "dropper", "-n", namespace, "--wait=true")
    wait_for(lambda: get(cluster, "deployment", "dropper", namespace) is None, timeout=60, what="dropper collected")
    time.sleep(5)
    left = get(cluster, "pvc", claim, namespace)
    assert left is not None and not left["metadata"].get("deletionTimestamp"), "the claim keeper serves from was deleted"
    assert get(cluster, "deployment", "keeper", namespace) is not None


@pytest.mark.slow
def test_a_child_deleted_while_the_watches_are_cut_is_recreated_within_one_resync(cluster, operator, namespace,
                                                                                hub_endpoint, tmp_path):
    port = int(cluster.apiserver_url.rsplit(":", 1)[1])
    proxy = TcpProxy("127.0.0.1", port)
    resync = 10
    operator.stop()  # one operator acts at a time
    cut_off = OperatorProcess(proxy.kubeconfig(Path(cluster.kubeconfig), tmp_path / "kubeconfig"), tmp_path / "op",
                              hub_endpoint=hub_endpoint, extra_env={"SCIBOX_RESYNC_SECONDS": str(resync)})
    try:
        cut_off.start()
        apply(cluster, namespace, vllmd("gap"))
        svc = wait_for(lambda: get(cluster, "service", "gap", namespace), timeout=90, what="the Service")
        wait_for(lambda: get(cluster, "deployment", "gap", namespace), timeout=90, what="the Deployment")
        proxy.cut()
        cluster.kubectl("delete", "service", "gap", "-n", namespace, "--wait=true")
        # A restarted API server's watch cache starts anew: the operator's watch cannot resume
        # from its old resourceVersion (410), kopf re-lists, and a re-list has no DELETED event.
        cluster.restart_apiserver()
        proxy.restore()
        cut = time.monotonic()
        back = wait_for(lambda: (lambda s: s if s and s["metadata"]["uid"] != svc["metadata"]["uid"] else None)(
            get(cluster, "service", "gap", namespace)), timeout=resync * 3 + 30, what="the Service recreated")
        took = time.monotonic() - cut
        print(f"\nwatch gap: Service recreated {took:.1f}s after the connection came back (resync {resync}s)")
        assert back["metadata"]["ownerReferences"][0]["name"] == "gap"
    finally:
        cut_off.stop()
        proxy.close()
        operator.start()
        wait_controllers_recovered(cluster)  # the next test must not pay for the API server restart
