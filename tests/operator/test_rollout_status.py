"""Status tells the truth about the current generation: UpToDate stays False until every replica
runs the new template and is ready (issue 16), sampled from the real cluster during a rollout."""

from __future__ import annotations

import time

import pytest

from .kubehelp import apply, condition, get, wait_for

pytestmark = pytest.mark.cluster


def stand_in(name: str, tp: int, replicas: int = 2) -> dict:
    # Not on the hub mirror: explicit sizes deploy without the model's config. Two replicas mount
    # the cache at once: ReadWriteMany storage (the rwx_storage_class fixture).
    return {"apiVersion": "scibox.io/v1alpha1", "kind": "VLLMDeployment", "metadata": {"name": name},
            "spec": {"model": {"name": "scibox/stand-in-rollout"}, "replicas": replicas,
                     "cache": {"size": "1Gi", "storageClassName": "local-rwx"},
                     "parallelism": {"tensorParallelSize": tp, "pipelineParallelSize": 1}}}


def server_pods(cluster, namespace: str, name: str) -> list[dict]:
    return [p for p in get(cluster, "pods", None, namespace)["items"]
            if p["metadata"].get("labels", {}).get("app.kubernetes.io/instance") == name
            and p["metadata"]["labels"].get("app.kubernetes.io/component") == "server"]


def pod_ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions") or [])


def test_up_to_date_stays_false_until_the_new_pods_serve(cluster, operator, namespace, rwx_storage_class):
    name = "roll-tp"
    apply(cluster, namespace, stand_in(name, tp=1))
    vd = wait_for(lambda: (lambda o: o if (condition(o, "UpToDate") or {}).get("status") == "True" else None)(
        get(cluster, "vllmd", name, namespace)), timeout=120, what="UpToDate=True for the first template")
    first_gen = vd["metadata"]["generation"]

    apply(cluster, namespace, stand_in(name, tp=2))
    samples: list[tuple[float, str, int, bool]] = []
    started = time.monotonic()
    while time.monotonic() - started < 120:
        vd = get(cluster, "vllmd", name, namespace)
        up = condition(vd, "UpToDate") or {}
        gen = vd["metadata"]["generation"]
        pods = [p for p in server_pods(cluster, namespace, name) if not p["metadata"].get("deletionTimestamp")]
        new = [p for p in pods if "--tensor-parallel-size=2" in p["spec"]["containers"][0]["args"] and pod_ready(p)]
        samples.append((round(time.monotonic() - started, 1), up.get("status", "?"), up.get("observedGeneration", 0),
                        len(new) == 2 and len(pods) == 2))
        if up.get("status") == "True" and up.get("observedGeneration") == gen:
            # Claimed for the new generation: every pod left runs the new template and is ready.
            assert len(pods) == 2 and len(new) == 2, f"UpToDate=True with pods {[(p['metadata']['name'], pod_ready(p)) for p in pods]}"
            break
        time.sleep(0.3)
    else:
        raise AssertionError(f"UpToDate never True for generation {gen}: {samples[-5:]}")
    print(f"\nUpToDate samples (t, status, observedGeneration, all new pods ready): {samples}")
    assert gen == first_gen + 1
    assert any(s[1] == "False" and s[2] == gen for s in samples), "UpToDate was never False for the new generation"
    assert vd["status"]["observedGeneration"] == gen and vd["status"]["tensorParallelSize"] == 2
