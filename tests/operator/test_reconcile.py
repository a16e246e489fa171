"""The core reconcile loop against the real local cluster (issue 3's acceptance)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from .kubehelp import apply, condition, get, mutating_delta, request_counts, wait_for

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
OUR_RESOURCES = {"deployments", "services", "jobs", "persistentvolumeclaims", "servicemonitors",
                 "vllmdeployments", "events", "secrets"}


def sample(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((ROOT / "manifests" / "samples" / name).read_text()) if d]


def small_vllmd(name: str, **spec_overrides) -> dict:
    spec = {
        "model": {"name": "scibox/tiny-llama", "servedModelName": "tiny"},
        "resources": {"gpus": 1},
        "cache": {"size": "1Gi"},
    }
    spec.update(spec_overrides)
    return {"apiVersion": "scibox.io/v1alpha1", "kind": "VLLMDeployment", "metadata": {"name": name}, "spec": spec}


def arg(args: list[str], flag: str) -> str | None:
    for i, a in enumerate(args):
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
        if a == flag and i + 1 < len(args):
            return args[i + 1]
    return None


def our_event_names(cluster) -> set[str]:
    events = json.loads(cluster.kubectl("get", "events", "-A", "-o", "json").stdout)["items"]
    return {e["metadata"]["name"] for e in events if (e.get("source") or {}).get("component") == "scibox-vllm-operator"}


def status_delta(old: dict, new: dict) -> dict:
    """The top-level status fields (and conditions by type) that differ, old -> new."""
    def flat(status: dict) -> dict:
        out = {k: v for k, v in status.items() if k != "conditions"}
        out.update({f"condition {c['type']}": c for c in status.get("conditions") or []})
        return out
    a, b = flat(old), flat(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def deployment_ready(cluster, ns, name):
    dep = get(cluster, "deployment", name, ns)
    return dep if dep and (dep.get("status") or {}).get("availableReplicas") == dep["spec"]["replicas"] else None


def test_sample_becomes_children_with_status(cluster, operator, namespace):
    for doc in sample("api-key-model.yaml"):
        apply(cluster, namespace, doc)
    name = "mistral-7b"

    dep = wait_for(lambda: get(cluster, "deployment", name, namespace), timeout=90, what="the Deployment")
    pvc = get(cluster, "pvc", None, namespace)["items"]
    jobs = get(cluster, "jobs", None, namespace)["items"]
    svc = get(cluster, "service", name, namespace)
    assert len(pvc) == 1 and pvc[0]["spec"]["resources"]["requests"]["storage"] == "40Gi"
    assert len(jobs) == 1 and jobs[0]["status"].get("succeeded") == 1, "the Deployment waits for the download"

    pod = dep["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert arg(container["args"], "--served-model-name") == "mistral-7b"
    assert not any("change-me" in a or "api-key" in a for a in container["args"]), "the key is never an argument"
    key_env = next(e for e in container["env"] if e["name"] == "VLLM_API_KEY")
    assert key_env["valueFrom"]["secretKeyRef"] == {"name": "mistral-api-key", "key": "api-key"}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/models"]["readOnly"] is True and "/dev/shm" in mounts
    assert {v["name"]: v for v in pod["volumes"]}["dshm"]["emptyDir"]["medium"] == "Memory"
    assert container["startupProbe"]["httpGet"]["path"] == "/health"
    assert container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] >= 1800
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert dep["spec"]["strategy"]["type"] == "Recreate"
    owner = dep["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "VLLMDeployment" and owner["name"] == name and owner["controller"] is True
    assert dep["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "scibox-vllm-operator"
    assert svc["spec"]["ports"][0]["port"] == 8000 and svc["spec"]["selector"]["app.kubernetes.io/instance"] == name

    wait_for(lambda: deployment_ready(cluster, namespace, name), timeout=60, what="Deployment available")
    vd = wait_for(lambda: (lambda o: o if (o.get("status") or {}).get("replicas") == 1 else None)(
        get(cluster, "vllmd", name, namespace)), timeout=60, what="status.replicas")
    status = vd["status"]
    assert status["tensorParallelSize"] == 1 and status["pipelineParallelSize"] == 1
    assert status["endpoint"] == f"http://{name}.{namespace}.svc:8000/v1"
    assert status["observedGeneration"] == vd["metadata"]["generation"]
    assert condition(vd, "ModelCached")["status"] == "True"
    # kwok pods do not run a server: the operator's own probe says so instead of trusting them.
    vd = wait_for(lambda: (lambda o: o if (condition(o, "Ready") or {}).get("reason") == "EngineDown" else None)(
        get(cluster, "vllmd", name, namespace)), timeout=30, what="Ready=False EngineDown from the probe")
    assert condition(vd, "Ready")["status"] == "False"

    table = cluster.kubectl("get", "vllmd", "-n", namespace).stdout
    header, row = table.splitlines()[:2]
    assert header.split()[:7] == ["NAME", "MODEL", "TP", "PP", "REPLICAS", "READY", "PHASE"]
    assert row.split()[:7] == [name, "mistralai/Mistral-7B-Instruct-v0.3", "1", "1", "1", "0", "Deploying"]


def test_spec_edit_rolls_and_children_are_restored(cluster, operator, namespace):
    name = "roll"
    apply(cluster, namespace, small_vllmd(name))
    dep = wait_for(lambda: deployment_ready(cluster, namespace, name), timeout=90, what="Deployment")
    first_template = dep["spec"]["template"]

    edited = small_vllmd(name, engine={"maxNumSeqs": 7})
    apply(cluster, namespace, edited)
    dep2 = wait_for(lambda: (lambda d: d if d and d["spec"]["template"] != first_template else None)(
        get(cluster, "deployment", name, namespace)), timeout=60, what="a new pod template")
    args = dep2["spec"]["template"]["spec"]["containers"][0]["args"]
    assert arg(args, "--max-num-seqs") == "7"
    # The Deployment controller records the roll as a new revision.
    wait_for(lambda: int(get(cluster, "deployment", name, namespace)["metadata"]["annotations"]
                         ["deployment.kubernetes.io/revision"]) >= 2, timeout=30, what="revision 2")
    wait_for(lambda: get(cluster, "vllmd", name, namespace)["status"]["observedGeneration"] == 2,
             timeout=60, what="observedGeneration 2")

    # A child deleted by hand comes back.
    svc_uid = get(cluster, "service", name, namespace)["metadata"]["uid"]
    cluster.kubectl("delete", "service", name, "-n", namespace)
    wait_for(lambda: (lambda s: s and s["metadata"]["uid"] != svc_uid)(get(cluster, "service", name, namespace)),
             timeout=60, what="the Service recreated")

    # A field edited by hand is taken back.
    cluster.kubectl("patch", "deployment", name, "-n", namespace, "--type=json",
                    "-p", '[{"op":"replace","path":"/spec/replicas","value":3}]')
    wait_for(lambda: get(cluster, "deployment", name, namespace)["spec"]["replicas"] == 1,
             timeout=60, what="replicas restored to 1")


def test_delete_removes_children_and_honours_cache_policy(cluster, operator, namespace):
    apply(cluster, namespace, small_vllmd("keep"))
    apply(cluster, namespace, small_vllmd("drop", cache={"size": "1Gi", "deletionPolicy": "Delete"}))
    for name in ("keep", "drop"):
        wait_for(lambda: get(cluster, "deployment", name, namespace), timeout=90, what=f"{name} Deployment")
    claims = {p["metadata"]["name"] for p in get(cluster, "pvc", None, namespace)["items"]}
    assert len(claims) == 2

    cluster.kubectl("delete", "vllmd", "keep", "drop", "-n", namespace, "--wait=true")
    wait_for(lambda: not get(cluster, "deployments", None, namespace)["items"], timeout=90, what="Deployments gone")
    wait_for(lambda: not get(cluster, "services", None, namespace)["items"], timeout=60, what="Services gone")
    wait_for(lambda: not get(cluster, "jobs", None, namespace)["items"], timeout=60, what="Jobs gone")
    left = wait_for(lambda: (lambda items: items if len(items) == 1 else None)(
        [p for p in get(cluster, "pvc", None, namespace)["items"] if not p["metadata"].get("deletionTimestamp")]),
        timeout=60, what="only the retained cache claim left")
    assert left[0]["metadata"]["name"].startswith("keep-cache-"), "Retain (the default) keeps the cache"


def test_service_monitor_follows_the_crd(cluster, operator, namespace):
    cluster.uninstall_prometheus_crds()
    apply(cluster, namespace, small_vllmd("mon"))
    wait_for(lambda: get(cluster, "service", "mon", namespace), timeout=60, what="Service")
    vd = get(cluster, "vllmd", "mon", namespace)
    assert (vd.get("status") or {}).get("phase") != "Failed", "no CRD is not an error"

    cluster.install_prometheus_crds()
    sm = wait_for(lambda: get(cluster, "servicemonitors.monitoring.coreos.com", "mon", namespace),
                  timeout=90, what="ServiceMonitor created once the CRD exists")
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    assert sm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] == "mon"

    apply(cluster, namespace, small_vllmd("mon", monitoring={"serviceMonitor": False}))
    wait_for(lambda: get(cluster, "servicemonitors.monitoring.coreos.com", "mon", namespace) is None,
             timeout=60, what="ServiceMonitor removed when monitoring is off")


def test_restart_and_resync_with_nothing_changed_write_nothing(cluster, operator, namespace):
    names = [f"quiet-{i}" for i in range(3)]
    for name in names:
        apply(cluster, namespace, small_vllmd(name))
    for name in names:
        wait_for(lambda: deployment_ready(cluster, namespace, name), timeout=90, what=f"{name} ready")

    def settled():
        # Converged: every status reflects an available Deployment and the probe's verdict.
        for name in names:
            vd = get(cluster, "vllmd", name, namespace)
            ready = condition(vd, "Ready")
            if not ready or ready["reason"] != "EngineDown" or vd["status"].get("replicas") != 1:
                return False
        return True

    wait_for(settled, timeout=90, what="statuses settled")
    # Namespaces of earlier tests being torn down would show up as DELETEs: wait them out.
    wait_for(lambda: all(ns["status"].get("phase") != "Terminating" for ns in get(cluster, "namespaces")["items"]),
             timeout=120, what="no namespace terminating")
    time.sleep(3)  # let the last watch events drain through the operator

    statuses = {name: get(cluster, "vllmd", name, namespace)["status"] for name in names}
    before = request_counts(cluster.metrics_text())
    events_before = our_event_names(cluster)
    # A full restart re-lists everything and reconciles every object: the strictest resync.
    operator.stop()
    operator.start()
    time.sleep(8)  # a few probe periods and the initial reconcile of every object
    after = request_counts(cluster.metrics_text())
    # Events are POSTed by every controller of the cluster; the operator's own are counted by name.
    writes = mutating_delta(before, after, OUR_RESOURCES - {"events"})
    changed = {name: status_delta(statuses[name], get(cluster, "vllmd", name, namespace)["status"])
               for name in names}
    assert writes == {}, f"mutating requests during a resync with nothing to change: {writes}; {changed}"
    assert our_event_names(cluster) == events_before
    assert 'scibox_operator_reconciles_total{result="ok"}' in operator.metrics()


def test_kubectl_explain_teaches_the_api(cluster, crd):
    out = cluster.kubectl("explain", "vllmd.spec.model").stdout
    assert "Hugging Face hub repository id" in out and "trustRemoteCode" in out
    bad = cluster.kubectl("apply", "-f", "-", check=False, input=yaml.safe_dump({
        "apiVersion": "scibox.io/v1alpha1", "kind": "VLLMDeployment", "metadata": {"name": "bad", "namespace": "default"},
        "spec": {"model": {"name": "a/b"}, "engine": {"extraArgs": ["--trust-remote-code"]}}}))
    assert bad.returncode != 0 and "extraArgs may not set a flag the spec owns" in bad.stderr
