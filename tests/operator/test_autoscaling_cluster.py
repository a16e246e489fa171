"""Autoscaling on the real cluster (issue 22): the CRD's scale subresource and schema, and the
kube-controller-manager's own HPA controller scaling a VLLMDeployment through it while the
operator follows spec.replicas; the KEDA ScaledObject replaces the HPA while KEDA's CRD (from
the real KEDA module) is installed, and the autoscaler child goes when the spec drops it."""

from __future__ import annotations

import time

import pytest
import yaml

from tools.localcluster import crds, keda_crds

from .kubehelp import apply, condition, get, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

HPA = "horizontalpodautoscalers.autoscaling"
SCALED_OBJECT = "scaledobjects.keda.sh"


def vllmd(name: str, rwx: str, **spec) -> dict:
    base = {"model": {"name": "scibox/tiny-llama", "servedModelName": "tiny"}, "resources": {"gpus": 1},
            # the autoscaler may run several replicas: they share the cache read-only
            "cache": {"size": "1Gi", "storageClassName": rwx, "accessMode": "ReadWriteMany"}}
    base.update(spec)
    return {"apiVersion": "scibox.io/v1alpha1", "kind": "VLLMDeployment", "metadata": {"name": name}, "spec": base}


def refused(cluster, namespace: str, autoscaling: dict) -> str:
    proc = cluster.kubectl("apply", "-n", namespace, "-f", "-", check=False, input=yaml.safe_dump(
        vllmd("bad", "x", autoscaling=autoscaling)))
    assert proc.returncode != 0, f"accepted: {autoscaling}"
    return proc.stderr


def test_the_crd_refuses_bad_autoscaling(cluster, crd, namespace):
    assert "minReplicas must not be above maxReplicas" in refused(cluster, namespace, {"minReplicas": 3, "maxReplicas": 2})
    assert "minReplicas" in refused(cluster, namespace, {"minReplicas": -1, "maxReplicas": 2})
    assert "maxReplicas" in refused(cluster, namespace, {"minReplicas": 1})
    assert "waitingRequestsPerReplica" in refused(cluster, namespace,
                                                  {"maxReplicas": 2, "target": {"waitingRequestsPerReplica": 0}})
    assert "go together" in refused(cluster, namespace, {"maxReplicas": 2, "target": {"query": "sum(up)"}})
    assert "idleSeconds" in refused(cluster, namespace, {"maxReplicas": 2, "scaleToZero": {"idleSeconds": 5}})
    out = cluster.kubectl("explain", "vllmd.spec.autoscaling.scaleToZero").stdout
    assert "ScaledToZero" in out and "idleSeconds" in out


def replicas(cluster, namespace: str, name: str) -> tuple[int | None, int | None]:
    vd, dep = get(cluster, "vllmd", name, namespace), get(cluster, "deployment", name, namespace)
    return (vd or {}).get("spec", {}).get("replicas"), (dep or {}).get("spec", {}).get("replicas")


def test_kubectl_scale_and_the_real_hpa_move_spec_replicas_and_the_operator_follows(
        cluster, operator, namespace, rwx_storage_class):
    keda_crds.uninstall(cluster.rest)
    name = "auto"
    apply(cluster, namespace, vllmd(name, rwx_storage_class))
    wait_for(lambda: replicas(cluster, namespace, name) == (1, 1), timeout=120, what="the Deployment with 1 replica")

    # kubectl scale goes through the scale subresource; status carries the pod selector.
    cluster.kubectl("scale", "vllmd", name, "-n", namespace, "--replicas=2")
    wait_for(lambda: replicas(cluster, namespace, name) == (2, 2), timeout=60, what="scaled to 2 by kubectl")
    scale = cluster.rest.get(f"/apis/scibox.io/v1alpha1/namespaces/{namespace}/vllmdeployments/{name}/scale")
    assert scale["spec"]["replicas"] == 2
    vd = wait_for(lambda: (lambda o: o if (o.get("status") or {}).get("selector") else None)(
        get(cluster, "vllmd", name, namespace)), timeout=60, what="status.selector")
    assert vd["status"]["selector"] == f"app.kubernetes.io/component=server,app.kubernetes.io/instance={name}"
    table = cluster.kubectl("get", "vllmd", name, "-n", namespace).stdout.splitlines()
    assert table[0].split()[4:6] == ["REPLICAS", "READY"] and table[1].split()[4] == "2", table

    # Autoscaling on, no metrics API here: the real HPA controller still holds the bounds, so
    # replicas below minReplicas come up to it and above maxReplicas come down, through
    # spec.replicas; the operator renders the Deployment from it and never writes it back.
    body = vllmd(name, rwx_storage_class, autoscaling={"minReplicas": 3, "maxReplicas": 4})
    body["spec"]["replicas"] = 2
    apply(cluster, namespace, body)
    hpa = wait_for(lambda: get(cluster, HPA, name, namespace), timeout=60, what="the HPA")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "scibox.io/v1alpha1", "kind": "VLLMDeployment", "name": name}
    assert hpa["metadata"]["ownerReferences"][0]["name"] == name
    started = time.monotonic()
    wait_for(lambda: replicas(cluster, namespace, name) == (3, 3), timeout=120,
             what="the HPA raising spec.replicas to minReplicas 3, the Deployment following")
    print(f"\nHPA: 2 -> minReplicas 3 (spec and Deployment) in {time.monotonic() - started:.1f}s")
    cluster.kubectl("scale", "vllmd", name, "-n", namespace, "--replicas=9")
    wait_for(lambda: replicas(cluster, namespace, name) == (4, 4), timeout=120,
             what="the HPA bringing 9 back down to maxReplicas 4")
    vd = wait_for(lambda: (lambda o: o if condition(o, "AutoscalingCapacity") else None)(
        get(cluster, "vllmd", name, namespace)), timeout=60, what="AutoscalingCapacity")
    assert "maxReplicas 4 x 1 GPUs per replica" in condition(vd, "AutoscalingCapacity")["message"]

    # KEDA's CRDs appear: a ScaledObject instead of the HPA (which is removed).
    keda_crds.install(cluster.rest)
    so = wait_for(lambda: get(cluster, SCALED_OBJECT, name, namespace), timeout=90, what="the ScaledObject")
    assert so["spec"]["scaleTargetRef"]["kind"] == "VLLMDeployment" and so["spec"]["maxReplicaCount"] == 4
    wait_for(lambda: get(cluster, HPA, name, namespace) is None, timeout=60, what="the HPA removed")

    # The spec drops autoscaling: the ScaledObject goes, spec.replicas is the user's again.
    keda_crds_present = True
    try:
        plain = vllmd(name, rwx_storage_class)
        plain["spec"]["replicas"] = 1
        apply(cluster, namespace, plain)
        wait_for(lambda: get(cluster, SCALED_OBJECT, name, namespace) is None, timeout=60,
                 what="the ScaledObject removed")
        wait_for(lambda: replicas(cluster, namespace, name) == (1, 1), timeout=60, what="back to 1")
        assert get(cluster, HPA, name, namespace) is None
        assert condition(get(cluster, "vllmd", name, namespace), "AutoscalingCapacity") is None
    finally:
        if keda_crds_present:
            keda_crds.uninstall(cluster.rest)


def set_crd_finalizers(cluster, name: str, change) -> None:
    path = f"{crds.CRD_PATH}/{name}"
    finalizers = change(list(cluster.rest.get(path)["metadata"].get("finalizers") or []))
    cluster.rest.request("PATCH", path, body={"metadata": {"finalizers": finalizers}},
                         content_type="application/merge-patch+json")


def test_a_keda_crd_being_deleted_hands_autoscaling_to_the_hpa_at_once(cluster, operator, namespace,
                                                                         rwx_storage_class):
    # A terminating CRD stays Established=True while the API server removes its objects (minutes
    # when its cleanup backs off) and refuses new ones: the HPA takes over when deletion starts.
    hold = "test.scibox.io/hold"
    keda_crds.install(cluster.rest)
    try:
        name = "going"
        apply(cluster, namespace, vllmd(name, rwx_storage_class, autoscaling={"minReplicas": 1, "maxReplicas": 2}))
        wait_for(lambda: get(cluster, SCALED_OBJECT, name, namespace), timeout=90, what="the ScaledObject")
        assert get(cluster, HPA, name, namespace) is None
        set_crd_finalizers(cluster, SCALED_OBJECT, lambda f: [*f, hold])  # the CRD stays terminating
        cluster.rest.delete(f"{crds.CRD_PATH}/{SCALED_OBJECT}")
        hpa = wait_for(lambda: get(cluster, HPA, name, namespace), timeout=60,
                       what="the HPA while the ScaledObject CRD is being deleted")
        assert hpa["spec"]["maxReplicas"] == 2
        assert cluster.rest.get(f"{crds.CRD_PATH}/{SCALED_OBJECT}")["metadata"].get("deletionTimestamp")
    finally:
        if cluster.rest.get_or_none(f"{crds.CRD_PATH}/{SCALED_OBJECT}") is not None:
            set_crd_finalizers(cluster, SCALED_OBJECT, lambda f: [x for x in f if x != hold])
        keda_crds.uninstall(cluster.rest)
