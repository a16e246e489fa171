"""Multi-node replicas in the real local cluster (issue 12)."""

from __future__ import annotations

import pytest

from .kubehelp import apply, condition, get, wait_for

pytestmark = pytest.mark.cluster


def big(name: str, replicas: int = 1) -> dict:
    return {"apiVersion": "scibox.io/v1alpha1", "kind": "VLLMDeployment", "metadata": {"name": name},
            "spec": {"model": {"name": "scibox/tiny-llama"}, "replicas": replicas, "cache": {"size": "1Gi"},
                     "parallelism": {"tensorParallelSize": 8, "pipelineParallelSize": 2}}}


def test_without_the_leaderworkerset_crd_the_status_says_how_to_install_it(cluster, operator, namespace):
    if get(cluster, "crd", "leaderworkersets.leaderworkerset.x-k8s.io") is not None:
        pytest.skip("the LeaderWorkerSet CRD is installed in this cluster")  # covered by the LWS test then
    apply(cluster, namespace, big("huge"))
    vd = wait_for(lambda: (lambda o: o if (condition(o, "Ready") or {}).get("reason") == "LeaderWorkerSetMissing"
                           else None)(get(cluster, "vllmd", "huge", namespace)), timeout=60,
                  what="Ready=False LeaderWorkerSetMissing")
    ready = condition(vd, "Ready")
    assert ready["status"] == "False" and "kubectl apply" in ready["message"] and "lws" in ready["message"]
    assert vd["status"]["phase"] == "Failed" and vd["status"]["gpusPerReplica"] == 16
    assert get(cluster, "deployment", "huge", namespace) is None, "no single-node Deployment for a 2-node plan"
