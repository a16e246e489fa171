"""A bad new template rolls back, for real (issue 20): the real runner node runs the pods as
processes, the server is the real vLLM CPU build, and the new template passes an argument vLLM's
own parser refuses at start (the spec's validation lets unknown flags through: vLLM's parser is
the authority). With spare GPUs on the node the new pod surges beside the serving one, so the
model keeps serving throughout; after startupTimeoutSeconds the operator returns the workload to
the last template that served, reports why in status, and does not try the failed one again."""

from __future__ import annotations

import copy
import json
import time

import pytest

from tests.e2e.conftest import vllmd_body

from .kubehelp import apply, wait_for
from .rollout_timeline import API, Timeline, server_pods

pytestmark = [pytest.mark.cluster, pytest.mark.vllm, pytest.mark.slow]

REAL_NODE = "rollback-node"
BAD_FLAG = "--scibox-no-such-flag"


@pytest.fixture
def real_node(cluster, namespace):
    """A runner node of this test's own (2 GPUs: room for one surge pod of a 1-GPU replica).
    Its pods are gone before the runner stops, so no pod is left bound to a node that can no
    longer confirm its deletion (holding GPUs that later tests count)."""
    cluster.start_runner(REAL_NODE, gpus=2)
    yield REAL_NODE
    cluster.kubectl("delete", "vllmd", "--all", "-n", namespace, "--wait=false")
    try:
        wait_for(lambda: not [p for p in cluster.rest.get(f"/api/v1/namespaces/{namespace}/pods")["items"]
                              if p["spec"].get("nodeName") == REAL_NODE], timeout=120, interval=1,
                 what=f"this test's pods gone from {REAL_NODE}")
    finally:
        cluster.stop_runner(REAL_NODE)


def has_bad_flag(pod: dict) -> bool:
    return BAD_FLAG in (pod["spec"]["containers"][0].get("args") or [])


def test_a_template_vllm_refuses_rolls_back_to_the_last_good_one_and_is_not_retried(
        cluster, operator, hub_mirror, namespace, real_node, rwx_storage_class):
    rest = cluster.rest
    name = "rb"
    good = vllmd_body(name, "scibox/tiny-llama", hub_mirror.endpoint)
    # Its own node, and a cache volume a surge pod may mount beside the serving one (a
    # ReadWriteOnce claim gets no surge: a pod on another node could not attach it).
    good["spec"]["nodeSelector"] = {"kubernetes.io/hostname": real_node}
    good["spec"]["cache"]["storageClassName"] = rwx_storage_class
    good["spec"]["rollout"] = {"startupTimeoutSeconds": 600}
    apply(cluster, namespace, good)
    vd_path = f"{API}/namespaces/{namespace}/vllmdeployments/{name}"

    def serving():
        vd = rest.get(vd_path)
        ready = next((c for c in (vd.get("status") or {}).get("conditions") or [] if c["type"] == "Ready"), {})
        return vd if ready.get("reason") == "Serving" and ready.get("status") == "True" else None
    wait_for(serving, timeout=600, interval=1, what="the good template serving")
    good_pod = server_pods(rest, namespace, name)[0]["metadata"]["name"]

    bad = copy.deepcopy(good)
    bad["spec"]["engine"]["extraArgs"] = [BAD_FLAG]
    bad["spec"]["rollout"]["startupTimeoutSeconds"] = 60  # how long the new pods get before the rollback
    apply(cluster, namespace, bad)
    t = Timeline(rest, namespace, name, has_bad_flag)

    def rolled_back(s: dict) -> bool:
        return s["progressing"] == "RolledBack" and s["pods"] == 1 and s["ready_old"] == 1 and s["prober_ready"] == 1
    t.run_until(rolled_back, timeout=400, every=1.0)
    t.print()
    started = next(i for i, s in enumerate(t.samples) if s["progressing"] == "RollingOut")
    assert any(s["pods"] == 2 for s in t.samples), "the bad template's pod never started beside the good one"
    assert min(s["prober_ready"] for s in t.samples[started:]) >= 1, "the model stopped serving during the rollout"

    vd = rest.get(vd_path)
    failed = vd["status"]["rollout"]["failedTemplate"]
    print("\nfailed template: " + json.dumps(failed))
    assert failed["generation"] == vd["metadata"]["generation"]
    assert "exit code" in failed["reason"] and BAD_FLAG in failed["reason"], failed["reason"]
    progressing = next(c for c in vd["status"]["conditions"] if c["type"] == "Progressing")
    assert progressing["reason"] == "RolledBack" and "not retried" in progressing["message"]
    # The failed template's pod goes (it may still be terminating at the first RolledBack sample).
    wait_for(lambda: [p["metadata"]["name"] for p in server_pods(rest, namespace, name)] == [good_pod],
             timeout=120, interval=1, what="only the good pod left")
    events = [e for e in rest.get(f"/api/v1/namespaces/{namespace}/events")["items"] if e.get("reason") == "RolledBack"]
    assert events and events[0]["type"] == "Warning"

    # No retry loop: the workload stays on the good template while the spec is unchanged.
    deployment = rest.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}")
    generation = deployment["metadata"]["generation"]
    assert BAD_FLAG not in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # a window in which a retry would show (not a timing assertion)
        pods = server_pods(rest, namespace, name)
        assert [p["metadata"]["name"] for p in pods] == [good_pod], "the failed template was tried again"
        time.sleep(1)
    assert rest.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}")["metadata"]["generation"] == generation
    assert serving() is not None
