"""Safe rollouts on kwok GPU nodes (issue 20): what `rollout.strategy: Auto` does with spare GPUs,
without them, with one replica, and how an operator upgrade rolls. Capacity is sampled from the
API server at least every second (pods Ready, old/new template) and printed as a timeline."""

from __future__ import annotations

import json
import re
import time

import pytest

from .kubehelp import apply, wait_for
from .rollout_timeline import API, Timeline, server_pods

pytestmark = pytest.mark.cluster


def stand_in(name: str, *, replicas: int, tp: int, env: str, node: str | None = None) -> dict:
    # Explicit sizes: deploys without the model's config. ReadWriteMany cache: a surge pod mounts
    # it beside the old ones.
    spec: dict = {"model": {"name": "scibox/stand-in-rollout"}, "replicas": replicas,
                  "cache": {"size": "1Gi", "storageClassName": "local-rwx"},
                  "parallelism": {"tensorParallelSize": tp, "pipelineParallelSize": 1},
                  "engine": {"env": [{"name": "ROLL", "value": env}]}}
    if node:
        spec["nodeSelector"] = {"kubernetes.io/hostname": node}
    return {"apiVersion": "scibox.io/v1alpha1", "kind": "VLLMDeployment", "metadata": {"name": name}, "spec": spec}


def env_is(value: str):
    def check(pod: dict) -> bool:
        env = pod["spec"]["containers"][0].get("env") or []
        return any(e.get("name") == "ROLL" and e.get("value") == value for e in env)
    return check


def filler(name: str, node: str, gpus: int) -> dict:
    """Someone else's pod holding GPUs (not the operator's: it only counts them)."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeName": node, "tolerations": [{"operator": "Exists"}],
                     "containers": [{"name": "c", "image": "busybox",
                                     "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]}}


def settled(cluster, ns: str, name: str, replicas: int, value: str) -> None:
    t = Timeline(cluster.rest, ns, name, env_is(value))
    t.run_until(lambda s: s["ready_new"] == replicas and s["pods"] == replicas and s["progressing"] == "RolledOut",
                timeout=180)


def strategies(t: Timeline) -> set[str]:
    """The strategies status named from the new rollout on. The first samples may still show
    the previous, finished one; on kwok a rollout can also finish between two samples, so the
    new one begins at the first sample that is not the old template fully rolled out."""
    first = next(i for i, s in enumerate(t.samples)
                 if s["progressing"] != "RolledOut" or s["ready_new"] or s["pods"] != s["ready_old"])
    return {s["strategy"] for s in t.samples[first:]}


def events(cluster, ns: str, reason: str) -> list[dict]:
    return [e for e in cluster.rest.get(f"/api/v1/namespaces/{ns}/events")["items"] if e.get("reason") == reason]


def test_auto_surges_with_spare_gpus_replaces_one_at_a_time_without_and_announces_a_recreate(
        cluster, operator, namespace, rwx_storage_class):
    rest = cluster.rest
    # 1. Spare GPUs: 2 replicas x 2 GPUs on gpu-node-0 (8 GPUs): 4 free, room for one more.
    apply(cluster, namespace, stand_in("surge", replicas=2, tp=2, env="v1", node="gpu-node-0"))
    settled(cluster, namespace, "surge", 2, "v1")
    apply(cluster, namespace, stand_in("surge", replicas=2, tp=2, env="v2", node="gpu-node-0"))
    t = Timeline(rest, namespace, "surge", env_is("v2"))
    t.run_until(lambda s: s["ready_new"] == 2 and s["pods"] == 2 and s["progressing"] == "RolledOut", timeout=180)
    t.print()
    assert min(s["ready"] for s in t.samples) >= 2, "a replica was lost although a surge fitted"
    assert strategies(t) == {"Surge"}
    assert max(s["pods"] for s in t.samples) <= 3, "more than one replica surged"

    # 2. No spare GPUs: someone else takes the 4 free ones; 2 replicas -> one at a time.
    apply(cluster, namespace, filler("filler", "gpu-node-0", 4))
    wait_for(lambda: (rest.get(f"/api/v1/namespaces/{namespace}/pods/filler").get("status") or {}).get("phase")
             == "Running", timeout=60, what="filler pod running")
    apply(cluster, namespace, stand_in("surge", replicas=2, tp=2, env="v3", node="gpu-node-0"))
    t = Timeline(rest, namespace, "surge", env_is("v3"))
    t.run_until(lambda s: s["ready_new"] == 2 and s["pods"] == 2 and s["progressing"] == "RolledOut", timeout=180)
    t.print()
    assert min(s["ready"] for s in t.samples) >= 1, "every replica was down at once"
    assert max(s["pods"] for s in t.samples) <= 2, "a surge pod was started without spare GPUs"
    assert strategies(t) == {"OneAtATime"}
    vd = rest.get(f"{API}/namespaces/{namespace}/vllmdeployments/surge")
    assert vd["status"]["rollout"]["newReplicas"] == 2 and vd["status"]["rollout"]["oldReplicas"] == 0

    # 3. No spare GPUs, one replica (8 GPUs of gpu-node-1): recreate, announced before the pod goes.
    apply(cluster, namespace, stand_in("single", replicas=1, tp=8, env="v1", node="gpu-node-1"))
    settled(cluster, namespace, "single", 1, "v1")
    old_pod = server_pods(rest, namespace, "single")[0]["metadata"]["name"]
    apply(cluster, namespace, stand_in("single", replicas=1, tp=8, env="v2", node="gpu-node-1"))
    t = Timeline(rest, namespace, "single", env_is("v2"))
    t.run_until(lambda s: s["ready_new"] == 1 and s["pods"] == 1 and s["progressing"] == "RolledOut",
                timeout=180, every=0.2)
    t.print()
    announced = [s for s in t.samples if s["progressing"] == "RecreateWithoutSpareGPUs" and old_pod in s["old_pods"]]
    assert announced, f"the recreate was not announced while the old pod {old_pod} still ran"
    first_gone = next(i for i, s in enumerate(t.samples) if old_pod not in s["old_pods"])
    assert t.samples.index(announced[0]) < first_gone
    warned = [e for e in events(cluster, namespace, "RecreateWithoutSpareGPUs") if e["type"] == "Warning"
              and "gpu-node-1 0 free" in e["message"] and "8 free nvidia.com/gpu" in e["message"]]
    assert warned, f"no Warning Event naming the missing GPUs: {events(cluster, namespace, 'RecreateWithoutSpareGPUs')}"
    print(f"\nannounced: {warned[0]['message']}")

    for name in ("surge", "single"):
        cluster.kubectl("delete", "vllmd", name, "-n", namespace, "--wait=false")
    cluster.kubectl("delete", "pod", "filler", "-n", namespace, "--grace-period=0", "--force")
    wait_for(lambda: not rest.get(f"/api/v1/namespaces/{namespace}/pods")["items"], timeout=120,
             what="every pod gone (the GPUs free for the next test)")


def _rolling(rest, ns: str, image: str) -> list[str]:
    """Deployments whose template is the new image and whose rollout is not finished."""
    out = []
    for d in rest.get(f"/apis/apps/v1/namespaces/{ns}/deployments")["items"]:
        st = d.get("status") or {}
        if d["spec"]["template"]["spec"]["containers"][0]["image"] != image:
            continue
        want = d["spec"]["replicas"]
        if st.get("observedGeneration", 0) < d["metadata"]["generation"] or st.get("updatedReplicas", 0) < want \
                or st.get("replicas", 0) > st.get("updatedReplicas", 0) or st.get("readyReplicas", 0) < want:
            out.append(d["metadata"]["name"])
    return out


def _images(rest, ns: str) -> dict[str, str]:
    return {d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0]["image"]
            for d in rest.get(f"/apis/apps/v1/namespaces/{ns}/deployments")["items"]}


def max_concurrent(log: str, namespace: str) -> int:
    rolling: set[str] = set()
    most = 0
    for line in log.splitlines():
        m = re.search(rf"{namespace}/(\S+): operator-caused rollout (started|finished)", line)
        if m:
            (rolling.add if m.group(2) == "started" else rolling.discard)(m.group(1))
            most = max(most, len(rolling))
    return most


def _restart(operator, extra: dict[str, str]) -> None:
    operator.stop()
    operator.extra_env.pop("SCIBOX_VLLM_IMAGE", None)
    operator.extra_env.update(extra)
    operator.start()


def test_an_operator_upgrade_rolls_one_vllmdeployment_at_a_time_and_restarts_nothing_it_need_not(
        cluster, operator, namespace, rwx_storage_class):
    rest = cluster.rest
    names = ("up-a", "up-b", "up-c")
    for name in names:
        apply(cluster, namespace, stand_in(name, replicas=1, tp=1, env="v1"))
    for name in names:
        settled(cluster, namespace, name, 1, "v1")
    pods_before = {p["metadata"]["uid"] for p in rest.get(f"/api/v1/namespaces/{namespace}/pods")["items"]}
    gens_before = {d["metadata"]["name"]: d["metadata"]["generation"]
                   for d in rest.get(f"/apis/apps/v1/namespaces/{namespace}/deployments")["items"]}
    old_image = next(iter(_images(rest, namespace).values()))
    new_image = old_image + "-upgraded"
    try:
        # The same operator again (nothing in the rendering needs a restart): no pod restarts,
        # no Deployment gets a new generation.
        _restart(operator, {})
        wait_for(lambda: "scibox_operator_reconciles_total" in operator.metrics()
                 and sum(float(line.split()[-1]) for line in operator.metrics().splitlines()
                         if line.startswith("scibox_operator_reconciles_total")) >= len(names),
                 timeout=60, what="the restarted operator reconciled every object")
        time.sleep(3)  # a window for any write it would make (not a timing assertion)
        assert {p["metadata"]["uid"] for p in rest.get(f"/api/v1/namespaces/{namespace}/pods")["items"]} \
            == pods_before
        assert {d["metadata"]["name"]: d["metadata"]["generation"]
                for d in rest.get(f"/apis/apps/v1/namespaces/{namespace}/deployments")["items"]} == gens_before

        # A new default image (the operator changed, not the specs): one VLLMDeployment at a time.
        _restart(operator, {"SCIBOX_VLLM_IMAGE": new_image})
        samples = []
        started = time.monotonic()
        while True:
            rolling = _rolling(rest, namespace, new_image)
            images = _images(rest, namespace)
            queued = [vd["metadata"]["name"] for vd in rest.get(f"{API}/namespaces/{namespace}/vllmdeployments")["items"]
                      if any(c.get("type") == "Progressing" and c.get("reason") == "QueuedForOperatorUpgrade"
                             for c in (vd.get("status") or {}).get("conditions") or [])]
            samples.append({"t": round(time.monotonic() - started, 1), "rolling": rolling, "queued": queued,
                            "upgraded": sorted(n for n, i in images.items() if i == new_image)})
            if len(samples[-1]["upgraded"]) == len(names) and not rolling:
                break
            assert time.monotonic() - started < 240, f"upgrade not finished: {samples[-5:]}\n{operator.log_tail()}"
            time.sleep(0.3)
        print("\nTIMELINE operator upgrade: " + json.dumps(samples))
        assert max(len(s["rolling"]) for s in samples) <= 1, "more than one VLLMDeployment rolled at a time"
        # kwok rolls a pod in well under a second: the operator's own record of its slots is the
        # exact sequence (started/finished lines), checked besides the samples.
        assert max_concurrent(operator.log_path.read_text(), namespace) == 1
        assert any(s["queued"] for s in samples), "no VLLMDeployment ever reported waiting in the queue"
        vd = rest.get(f"{API}/namespaces/{namespace}/vllmdeployments/up-a")
        assert vd["status"]["rollout"]["cause"] == "operator"
    finally:
        _restart(operator, {})
