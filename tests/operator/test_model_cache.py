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


@pytest.fixture(scope="module")
def rwx_storage_class(cluster):
    # Same provisioner as the default class; the annotation tells the operator it can share.
    cluster.kubectl("apply", "-f", "-", input="""
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: local-rwx
  annotations:
    scibox.io/access-modes: ReadWriteOnce,ReadWriteMany
provisioner: scibox.io/local-path
reclaimPolicy: Delete
volumeBindingMode: Immediate
""")
    yield "local-rwx"
    cluster.kubectl("delete", "storageclass", "local-rwx", "--ignore-not-found")


def test_deployment_is_created_only_after_the_download_completed(cluster, operator, namespace):
    apply(cluster, namespace, vllmd("first"))
    dep = wait_for(lambda: get(cluster, "deployment", "first", namespace), timeout=90, what="Deployment")
    job = get(cluster, "jobs", None, namespace)["items"][0]
    assert ts(dep["metadata"]["creationTimestamp"]) >= ts(job["status"]["completionTime"])
    vd = wait_for(lambda: (lambda o: o if condition(o, "ModelCached") and condition(o, "ModelCached")["status"] == "True"
                           else None)(get(cluster, "vllmd", "first", namespace)), timeout=60, what="ModelCached")
    claim = vd["status"]["cacheClaim"]
    mounted = dep["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]
    assert mounted == {"claimName": claim, "readOnly": True}
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

    # Deleting one user keeps the claim for the other; deleting the last one removes it.
    cluster.kubectl("delete", "vllmd", "a", "-n", namespace, "--wait=true")
    wait_for(lambda: get(cluster, "deployment", "a", namespace) is None, timeout=60, what="a's Deployment gone")
    assert get(cluster, "pvc", claims[0]["metadata"]["name"], namespace) is not None
    cluster.kubectl("delete", "vllmd", "b", "-n", namespace, "--wait=true")
    wait_for(lambda: not [c for c in get(cluster, "pvc", None, namespace)["items"]
                          if not c["metadata"].get("deletionTimestamp")],
             timeout=90, what="the shared claim collected with its last user")
