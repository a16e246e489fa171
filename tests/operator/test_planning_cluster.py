"""Auto parallelism in the operator: the model's config.json comes from the hub API (here the
local mirror the operator fixture points at), before any GPU Deployment exists (issue 4)."""

from __future__ import annotations

import time

import pytest

from .kubehelp import apply, condition, get, wait_for

pytestmark = pytest.mark.cluster


def auto(name: str, repo: str, revision: str = "main", **cache) -> dict:
    return {"apiVersion": "scibox.io/v1alpha1", "kind": "VLLMDeployment", "metadata": {"name": name},
            "spec": {"model": {"name": repo, "revision": revision, "maxModelLen": 256, "dtype": "bfloat16"},
                     "resources": {"gpuProduct": "NVIDIA-H100-80GB-HBM3"}, "cache": cache}}


def planned(cluster, ns, name):
    vd = get(cluster, "vllmd", name, ns) or {}
    cond = condition(vd, "ParallelismPlanned")
    return vd if cond else None


def test_auto_sizes_come_from_the_model_config_on_the_hub(cluster, operator, hub_mirror, namespace):
    # Pinned to the commit: the operator remembers what it read per revision, and other tests
    # of this session have had it read "main" already.
    commit = hub_mirror.repos["scibox/tiny-llama"].sha
    apply(cluster, namespace, auto("tiny", "scibox/tiny-llama", revision=commit))
    vd = wait_for(lambda: planned(cluster, namespace, "tiny"), timeout=60, what="a parallelism plan")
    cond = condition(vd, "ParallelismPlanned")
    assert cond["status"] == "True", cond
    status = vd["status"]
    # 2 attention heads, 1 KV head, ~0.7 MB of weights: one H100 is the smallest layout.
    assert (status["tensorParallelSize"], status["pipelineParallelSize"], status["gpusPerReplica"]) == (1, 1, 1)
    assert "H100" in status["parallelismReason"]
    dep = wait_for(lambda: get(cluster, "deployment", "tiny", namespace), timeout=90, what="the Deployment")
    assert dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    claim = get(cluster, "pvc", status["cacheClaim"], namespace)
    assert claim["spec"]["resources"]["requests"]["storage"] == "3Gi", "auto size: weights + 10% + 2 GiB"
    assert hub_mirror.requests("GET", f"/scibox/tiny-llama/resolve/{commit}/config.json"), "read from the hub API"


@pytest.mark.parametrize("repo,reason", [("scibox/no-such-model", "ModelNotFound"),
                                         ("scibox/gated-tiny", "Unauthorized")])
def test_hub_errors_stop_before_any_workload_with_a_reason(cluster, operator, hub_mirror, namespace, repo, reason):
    apply(cluster, namespace, auto("bad", repo))
    vd = wait_for(lambda: (lambda o: o if (condition(o, "Ready") or {}).get("reason") == reason else None)(
        get(cluster, "vllmd", "bad", namespace) or {}), timeout=60, what=f"Ready=False {reason}")
    assert vd["status"]["phase"] == "Failed" and repo in condition(vd, "Ready")["message"]
    assert get(cluster, "deployment", "bad", namespace) is None and not get(cluster, "jobs", None, namespace)["items"]


def test_a_hub_token_from_the_secret_opens_a_gated_model(cluster, operator, hub_mirror, namespace):
    cluster.kubectl("create", "secret", "generic", "hf", "-n", namespace, "--from-literal=token=hf_test_token")
    apply(cluster, namespace, auto("gated", "scibox/gated-tiny", tokenSecretRef={"name": "hf"}))
    vd = wait_for(lambda: planned(cluster, namespace, "gated"), timeout=60, what="a plan")
    assert condition(vd, "ParallelismPlanned")["status"] == "True", vd["status"]
    job = wait_for(lambda: get(cluster, "jobs", None, namespace)["items"], timeout=60, what="the download Job")[0]
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token"}


def test_a_bare_legacy_hub_id_is_planned_downloaded_and_served_from_its_folder(cluster, operator, hub_mirror,
                                                                               namespace):
    from tests.fixtures.hub import BARE_REPO
    apply(cluster, namespace, auto("bare", BARE_REPO))
    vd = wait_for(lambda: planned(cluster, namespace, "bare"), timeout=60, what="a parallelism plan")
    assert condition(vd, "ParallelismPlanned")["status"] == "True", vd["status"]
    assert hub_mirror.requests("GET", f"/{BARE_REPO}/resolve/main/config.json")
    job = wait_for(lambda: get(cluster, "jobs", None, namespace)["items"], timeout=60, what="the download Job")[0]
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MODEL_ID"] == BARE_REPO
    dep = wait_for(lambda: get(cluster, "deployment", "bare", namespace), timeout=90, what="the Deployment")
    args = " ".join(dep["spec"]["template"]["spec"]["containers"][0].get("args", []))
    server_env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert f"/models/{BARE_REPO}/main" in args + " " + " ".join(str(v) for v in server_env.values())


@pytest.mark.slow
def test_after_a_restart_with_the_hub_down_the_last_plan_keeps_the_model_serving(cluster, operator, hub_mirror,
                                                                                namespace, tmp_path):
    from pathlib import Path

    from tests.fixtures.operator import OperatorProcess, free_port

    commit = hub_mirror.repos["scibox/tiny-llama"].sha
    apply(cluster, namespace, auto("kept", "scibox/tiny-llama", revision=commit))
    dep = wait_for(lambda: get(cluster, "deployment", "kept", namespace), timeout=90, what="the Deployment")
    vd = get(cluster, "vllmd", "kept", namespace)
    claim = get(cluster, "pvc", vd["status"]["cacheClaim"], namespace)
    operator.stop()
    # The hub is unreachable for the restarted operator: nothing listens on this port.
    outage = OperatorProcess(Path(cluster.kubeconfig), tmp_path / "op", hub_endpoint=f"http://127.0.0.1:{free_port()}")
    try:
        outage.start()
        vd = wait_for(lambda: (lambda o: o if (condition(o, "ParallelismPlanned") or {}).get("reason") == "LastKnownPlan"
                               else None)(get(cluster, "vllmd", "kept", namespace)), timeout=60,
                      what="ParallelismPlanned=True LastKnownPlan")
        cond = condition(vd, "ParallelismPlanned")
        assert cond["status"] == "True" and "cannot be read" in cond["message"], cond
        assert vd["status"]["phase"] != "Failed", vd["status"]
        time.sleep(3)
        assert get(cluster, "deployment", "kept", namespace)["metadata"]["generation"] == dep["metadata"]["generation"]
        now = get(cluster, "pvc", claim["metadata"]["name"], namespace)
        assert now["spec"]["resources"]["requests"] == claim["spec"]["resources"]["requests"], "the claim was resized"
    finally:
        outage.stop()
        operator.start()
