"""Model cache claims and download Jobs in the real local cluster (issue 5)."""

from __future__ import annotations

from datetime import datetime

import pytest

from .kubehelp import apply, condition, get, wait_for

pytestmark = pytest.mark.cluster


def vllmd(name: str, **cache) -> dict:
    return {"apiVersion": "scibox.io/v1alpha1", "kind": "VLLMDeployment", "metadata": {"name": name},
            "spec": {"model": {"name": "scibox/tiny-llama", "revision": "main"}, "resources": {"gpus": 1},
                     "cache": {"size": "1Gi", **cache}}}


def ts(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")


def test_deployment_is_created_only_after_the_download_completed(cluster, operator, namespace):
    apply(cluster, namespace, vllmd("first"))
    dep = wait_for(lambda: get(cluster, "deployment", "first", namespace), timeout=90, what="Deployment")
    job = get(cluster, "jobs", None, namespace)["items"][0]
    assert ts(dep["metadata"]["creationTimestamp"]) >= ts(job["status"]["completionTime"])
    vd = wait_for(lambda: (lambda o: o if condition(o, "ModelCached") and condition(o, "ModelCached")["status"] == "True"
                           else None)(get(cluster, "vllmd", "first", namespace)), timeout=60, what="ModelCached")
    claim = vd["status"]["cacheClaim"]
    mounted = dep["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]
    assert mounted == {"claimName": claim}
    # the weights are mounted read-only; only vLLM's compile-cache folder of the claim is writable
    mounts = [m for m in dep["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] if m["name"] == "model-cache"]
    assert [m.get("readOnly", False) for m in mounts] == [True, False]
    assert mounts[1]["subPath"].startswith(".scibox-compile/")
    assert get(cluster, "pvc", claim, namespace)["status"]["phase"] == "Bound"


def test_same_model_shares_one_claim_and_one_job_on_rwx_storage(cluster, operator, namespace, rwx_storage_class):
    apply(cluster, namespace, vllmd("a", storageClassName=rwx_storage_class, deletionPolicy="Delete"))
    wait_for(lambda: get(cluster, "deployment", "a", namespace), timeout=90, what="first Deployment")
    apply(cluster, namespace, vllmd("b", storageClassName=rwx_storage_class, deletionPolicy="Delete"))
    wait_for(lambda: get(cluster, "deployment", "b", namespace), timeout=90, what="second Deployment")

    claims = get(cluster, "pvc", None, namespace)["items"]
    jobs = get(cluster, "jobs", None, namespace)["items"]
    assert len(claims) == 1, [c["metadata"]["name"] for c in claims]
    assert len(jobs) == 1, "the second VLLMDeployment reuses the finished download"
    assert claims[0]["spec"]["accessModes"] == ["ReadWriteMany"]
    owners = wait_for(lambda: (lambda refs: refs if len(refs) == 2 else None)(
        get(cluster, "pvc", claims[0]["metadata"]["name"], namespace)["metadata"].get("ownerReferences") or []),
        timeout=30, what="both users own the shared claim")
    assert sorted(r["name"] for r in owners) == ["a", "b"]
    # The finished Job, the record that the claim is full, is b's too though b came after it.
    job_name, job_uid = jobs[0]["metadata"]["name"], jobs[0]["metadata"]["uid"]
    job_owners = wait_for(lambda: (lambda refs: refs if len(refs) == 2 else None)(
        get(cluster, "job", job_name, namespace)["metadata"].get("ownerReferences") or []),
        timeout=30, what="both users own the finished download Job")
    assert sorted(r["name"] for r in job_owners) == ["a", "b"]

    # Deleting one user keeps the claim and its Job for the other (no new download); deleting the
    # last one removes them.
    cluster.kubectl("delete", "vllmd", "a", "-n", namespace, "--wait=true")
    wait_for(lambda: get(cluster, "deployment", "a", namespace) is None, timeout=60, what="a's Deployment gone")
    assert get(cluster, "pvc", claims[0]["metadata"]["name"], namespace) is not None
    wait_for(lambda: [r["name"] for r in get(cluster, "job", job_name, namespace)["metadata"]["ownerReferences"]]
             == ["b"], timeout=60, what="a dropped from the Job's owners")
    assert [j["metadata"]["uid"] for j in get(cluster, "jobs", None, namespace)["items"]] == [job_uid]
    cluster.kubectl("delete", "vllmd", "b", "-n", namespace, "--wait=true")
    wait_for(lambda: not [c for c in get(cluster, "pvc", None, namespace)["items"]
                          if not c["metadata"].get("deletionTimestamp")],
             timeout=90, what="the shared claim collected with its last user")


def test_a_read_write_once_cache_for_two_replicas_is_refused_and_rwx_storage_is_accepted(
        cluster, operator, namespace, rwx_storage_class):
    """Issue 19: two server pods on one ReadWriteOnce volume would wait on Multi-Attach errors."""
    apply(cluster, namespace, {**vllmd("pair"), "spec": {**vllmd("pair")["spec"], "replicas": 2}})
    vd = wait_for(lambda: (lambda o: o if (condition(o, "Ready") or {}).get("reason") == "CacheAccessModeConflict"
                           else None)(get(cluster, "vllmd", "pair", namespace)), timeout=60,
                  what="Ready=False CacheAccessModeConflict")
    ready = condition(vd, "Ready")
    assert ready["status"] == "False" and vd["status"]["phase"] == "Failed"
    assert "ReadWriteOnce" in ready["message"] and "replicas 2" in ready["message"]
    assert "ReadWriteMany" in ready["message"] and "cache.accessMode" in ready["message"]
    assert get(cluster, "deployment", "pair", namespace) is None
    assert not get(cluster, "pvc", None, namespace)["items"], "nothing is created for a refused spec"

    # The same two replicas on storage that offers ReadWriteMany (cache.accessMode Auto picks it).
    spec = {**vllmd("pair", storageClassName=rwx_storage_class)["spec"], "replicas": 2}
    apply(cluster, namespace, {**vllmd("pair"), "spec": spec})
    dep = wait_for(lambda: get(cluster, "deployment", "pair", namespace), timeout=90, what="the Deployment")
    assert dep["spec"]["replicas"] == 2
    claim = dep["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert get(cluster, "pvc", claim, namespace)["spec"]["accessModes"] == ["ReadWriteMany"]
    wait_for(lambda: (lambda o: o if (condition(o, "Ready") or {}).get("reason") != "CacheAccessModeConflict"
                           else None)(get(cluster, "vllmd", "pair", namespace)), timeout=60, what="the refusal lifted")
