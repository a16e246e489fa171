"""Pure renderers: spec -> manifests, no cluster."""

from __future__ import annotations

import copy

import pytest
import yaml

from scibox_operator.api.spec import InvalidSpec, parse
from scibox_operator.planning.serving_plan import ServingPlan, cache_claim_name, decide_serving_plan, model_dir
from scibox_operator.render.cache import download_job_name, render_cache_pvc, render_download_job
from scibox_operator.render.deployment import render_deployment
from scibox_operator.render.monitoring import render_service_monitor
from scibox_operator.render.service import render_service


def body(name="m", uid="uid-1", **spec):
    base = {"model": {"name": "org/model"}}
    base.update(spec)
    return {"apiVersion": "scibox.io/v1alpha1", "kind": "VLLMDeployment",
            "metadata": {"name": name, "namespace": "ns", "uid": uid, "generation": 3}, "spec": base}


def plan_for(vd, tp=2, pp=1, shared=False):
    return ServingPlan(tp, pp, tp * pp, "test", cache_claim_name(vd, shared), shared, "10Gi", "img:1")


def test_same_spec_renders_byte_identical_manifests_whatever_the_key_order():
    spec = {"model": {"name": "org/model", "servedModelName": "x", "maxModelLen": 4096},
            "engine": {"maxNumSeqs": 8, "enablePrefixCaching": True, "env": [{"name": "A", "value": "1"}]},
            "nodeSelector": {"b": "2", "a": "1"}, "resources": {"gpuProduct": "NVIDIA-L4"}}
    reordered = {k: spec[k] for k in reversed(list(spec))}
    reordered["nodeSelector"] = {"a": "1", "b": "2"}
    outs = []
    for s in (spec, reordered):
        vd = parse(body(**copy.deepcopy(s)))
        p = plan_for(vd)
        outs.append(yaml.safe_dump([render_deployment(vd, p), render_service(vd), render_cache_pvc(vd, p, [vd]),
                                    render_download_job(vd, p, [vd]), render_service_monitor(vd)]))
    assert outs[0] == outs[1]


def test_deployment_requests_tp_times_pp_gpus_and_passes_the_sizes():
    vd = parse(body(resources={"gpuProduct": "NVIDIA-H100-80GB-HBM3", "cpu": "8", "memory": "64Gi"}))
    dep = render_deployment(vd, plan_for(vd, tp=4, pp=2))
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["resources"]["limits"] == {"nvidia.com/gpu": "8", "cpu": "8", "memory": "64Gi"}
    assert "--tensor-parallel-size=4" in c["args"] and "--pipeline-parallel-size=2" in c["args"]
    assert dep["spec"]["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert f"--model={model_dir(vd)}" in c["args"]


def test_min_gpu_memory_is_added_to_every_user_affinity_term():
    terms = [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
             {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}]
    vd = parse(body(resources={"minGpuMemoryMiB": 40000},
                    affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}))
    dep = render_deployment(vd, plan_for(vd))
    got = dep["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    for term in got["nodeSelectorTerms"]:
        assert {"key": "nvidia.com/gpu.memory", "operator": "Gt", "values": ["39999"]} in term["matchExpressions"]
    assert vd.spec.affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"] == terms, \
        "rendering must not mutate the spec"


def test_api_key_only_through_the_environment():
    vd = parse(body(auth={"apiKeySecretRef": {"name": "k"}}))
    c = render_deployment(vd, plan_for(vd))["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": "k", "key": "api-key"}}} in c["env"]
    assert not any("api-key" in a for a in c["args"])


def test_workload_pods_are_locked_down():
    vd = parse(body())
    pod = render_deployment(vd, plan_for(vd))["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert "--trust-remote-code" not in c["args"]


@pytest.mark.parametrize("strategy,expected", [("Recreate", {"type": "Recreate"}),
                                               ("RollingUpdate", {"type": "RollingUpdate",
                                                                  "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}})])
def test_rollout_strategy(strategy, expected):
    vd = parse(body(rollout={"strategy": strategy}))
    assert render_deployment(vd, plan_for(vd))["spec"]["strategy"] == expected


def test_shared_cache_claim_is_owned_by_every_user_and_named_by_model():
    a = parse(body("a", "uid-b", cache={"deletionPolicy": "Delete", "accessMode": "ReadWriteMany"}))
    b = parse(body("b", "uid-a", cache={"deletionPolicy": "Delete", "accessMode": "ReadWriteMany"}))
    pa, pb = plan_for(a, shared=True), plan_for(b, shared=True)
    assert pa.cache_claim == pb.cache_claim and pa.cache_claim.startswith("model-cache-")
    pvc = render_cache_pvc(a, pa, [a, b])
    assert pvc == render_cache_pvc(b, pb, [b, a])
    assert [r["uid"] for r in pvc["metadata"]["ownerReferences"]] == ["uid-a", "uid-b"]
    assert all(r["controller"] is False for r in pvc["metadata"]["ownerReferences"])
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_retained_cache_has_no_owner_and_user_claims_are_never_rendered():
    vd = parse(body())
    pvc = render_cache_pvc(vd, plan_for(vd), [vd])
    assert "ownerReferences" not in pvc["metadata"], "Retain is the default"
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    existing = parse(body(cache={"existingClaim": "mine"}))
    assert render_cache_pvc(existing, plan_for(existing), [existing]) is None
    assert plan_for(existing).cache_claim == "mine"
    on_pvc = parse(body(model={"name": "pvc://models/llama/8b"}))
    assert render_cache_pvc(on_pvc, plan_for(on_pvc), [on_pvc]) is None
    assert render_download_job(on_pvc, plan_for(on_pvc), [on_pvc]) is None
    assert model_dir(on_pvc) == "/models/llama/8b" and plan_for(on_pvc).cache_claim == "models"
    assert model_dir(vd) == "/models/org--model/main"


def test_download_job_uses_mirror_and_token_secret_and_fails_fast_on_permanent_errors():
    vd = parse(body(model={"name": "org/model", "revision": "abc123"},
                    cache={"endpoint": "https://mirror.example", "tokenSecretRef": {"name": "hf"}}))
    p = plan_for(vd)
    job = render_download_job(vd, p, [vd])
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["HF_ENDPOINT"]["value"] == "https://mirror.example"
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token"}
    assert env["MODEL_REVISION"]["value"] == "abc123" and env["CACHE_DIR"]["value"] == "/models"
    assert job["metadata"]["name"] == download_job_name(p) and len(job["metadata"]["name"]) <= 63
    rule = job["spec"]["podFailurePolicy"]["rules"][0]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["operator"] == "In"
    assert job["spec"]["backoffLimit"] >= 1


def test_long_names_stay_valid_dns_labels():
    vd = parse(body(name="x" * 60))
    p = plan_for(vd)
    assert len(p.cache_claim) <= 63 and len(download_job_name(p)) <= 63


@pytest.mark.parametrize("spec,needle", [
    ({"engine": {"extraArgs": ["--trust-remote-code"]}}, "trust-remote-code"),
    ({"engine": {"extraArgs": ["--tensor-parallel-size=4"]}}, "tensor-parallel-size"),
    ({"engine": {"env": [{"name": "VLLM_API_KEY", "value": "x"}]}}, "VLLM_API_KEY"),
    ({"replicas": -1}, "replicas"),
    ({"parallelism": {"tensorParallelSize": 0}}, "spec.parallelism.tensorParallelSize"),
    ({"unknownField": 1}, "unknownField"),
])
def test_invalid_specs_give_a_message_naming_the_field(spec, needle):
    with pytest.raises(InvalidSpec) as err:
        parse(body(**spec))
    assert needle in err.value.message


def test_explicit_sizes_need_no_model_config():
    vd = parse(body(parallelism={"tensorParallelSize": 2, "pipelineParallelSize": 2}))
    plan = decide_serving_plan(vd, config=None, safetensors_index=None, nodes=[], cache_shared=False)
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size, plan.gpus_per_replica) == (2, 2, 4)


def test_network_policy_only_when_enabled_and_lets_the_operator_in():
    from scibox_operator.render.network_policy import render_network_policy

    assert render_network_policy(parse(body()), operator_namespace="ops") is None
    vd = parse(body(networkPolicy={"enabled": True, "allowedNamespaces": ["web", "monitoring"],
                                   "allowedPodLabels": {"role": "gateway"}}))
    np = render_network_policy(vd, operator_namespace="ops")
    rule = np["spec"]["ingress"][0]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8000}]
    first, operator_peer = rule["from"]
    assert first["namespaceSelector"]["matchExpressions"][0]["values"] == ["monitoring", "web"]
    assert first["podSelector"] == {"matchLabels": {"role": "gateway"}}
    assert operator_peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "ops"}}
    assert np["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "m"
    own = render_network_policy(parse(body(networkPolicy={"enabled": True})), operator_namespace="")
    assert own["spec"]["ingress"][0]["from"] == [{"namespaceSelector": {"matchExpressions": [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["ns"]}]}}]


PLACEMENT_KEYS = ("nodeSelector", "affinity", "tolerations", "priorityClassName")


def placement(pod_spec: dict) -> dict:
    return {k: pod_spec[k] for k in PLACEMENT_KEYS if k in pod_spec}


def test_the_download_pod_is_placed_where_the_server_pods_can_follow():
    """Issue 19: the download pod binds a zonal or node-local cache where it runs, so it gets the
    servers' node selector, affinity (the minGpuMemoryMiB rule included) and tolerations."""
    zone = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["z1"]}]}]}}}
    vd = parse(body(nodeSelector={"pool": "gpu"}, affinity=zone, priorityClassName="serving",
                    tolerations=[{"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"}],
                    resources={"gpuProduct": "NVIDIA-H100-80GB-HBM3", "minGpuMemoryMiB": 80000}))
    p = plan_for(vd)
    job_pod = render_download_job(vd, p, [vd])["spec"]["template"]["spec"]
    server_pod = render_deployment(vd, p)["spec"]["template"]["spec"]
    assert placement(job_pod) == placement(server_pod)
    assert job_pod["nodeSelector"] == {"pool": "gpu", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    exprs = job_pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"][0]["matchExpressions"]
    assert [e["key"] for e in exprs] == ["topology.kubernetes.io/zone", "nvidia.com/gpu.memory"]
    assert {"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"} in job_pod["tolerations"]

    # Dropping them from the spec drops them from the download pod too.
    bare = parse(body())
    bare_pod = render_download_job(bare, plan_for(bare), [bare])["spec"]["template"]["spec"]
    assert placement(bare_pod) == {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                                    "effect": "NoSchedule"}]}
    assert placement(bare_pod) == placement(render_deployment(bare, plan_for(bare))["spec"]["template"]["spec"])


def job_env(vd) -> dict:
    job = render_download_job(vd, plan_for(vd), [vd])
    return {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}


def server_flags(vd) -> list[str]:
    return render_deployment(vd, plan_for(vd))["spec"]["template"]["spec"]["containers"][0]["args"]


def test_a_hub_tokenizer_is_downloaded_with_the_model_and_served_from_the_cache():
    """Issue 19: servers run with HF_HUB_OFFLINE=1, so a tokenizer repo must be in the cache."""
    vd = parse(body(model={"name": "org/model", "tokenizer": "org/tok", "tokenizerRevision": "v2"}))
    env = job_env(vd)
    assert env["TOKENIZER_ID"] == "org/tok" and env["TOKENIZER_REVISION"] == "v2"
    assert "--tokenizer=/models/org--tok/v2" in server_flags(vd)
    assert "--tokenizer=/models/org--tok/main" in server_flags(parse(body(model={"name": "org/model",
                                                                                 "tokenizer": "org/tok"})))
    # The claim is keyed by the tokenizer too (one Job fetches both); without one the key is unchanged.
    plain = parse(body())
    assert cache_claim_name(vd, True) != cache_claim_name(plain, True)
    assert cache_claim_name(plain, True) == cache_claim_name(parse(body(model={"name": "org/model",
                                                                                "tokenizer": "/models/t"})), True)

    # Dropping the tokenizer removes the flag and the Job's variables.
    assert not any(f.startswith("--tokenizer") for f in server_flags(plain))
    assert "TOKENIZER_ID" not in job_env(plain) and "TOKENIZER_REVISION" not in job_env(plain)
    # A path is passed as given and downloads nothing.
    path = parse(body(model={"name": "org/model", "tokenizer": "/models/custom-tok"}))
    assert "--tokenizer=/models/custom-tok" in server_flags(path) and "TOKENIZER_ID" not in job_env(path)


@pytest.mark.parametrize("model,needle", [
    ({"name": "org/model", "tokenizer": "relative/dir/x"}, "absolute path or a hub repo id"),
    ({"name": "org/model", "tokenizer": "org/a--b"}, "tokenizer"),
    ({"name": "pvc://weights/llama", "tokenizer": "org/tok"}, "no download Job"),
    ({"name": "org/model", "tokenizerRevision": "v2"}, "tokenizerRevision"),
    ({"name": "org/model", "tokenizer": "/models/t", "tokenizerRevision": "v2"}, "tokenizerRevision"),
    ({"name": "org/model", "task": "chat"}, "spec.model.task"),
])
def test_bad_tokenizer_and_task_values_are_refused(model, needle):
    with pytest.raises(InvalidSpec, match=needle):
        parse(body(model=model))


def test_an_embedding_model_runs_the_pooling_runner_and_generate_passes_nothing():
    embed = parse(body(model={"name": "org/model", "task": "embed"}))
    assert "--runner=pooling" in server_flags(embed)
    generate = parse(body(model={"name": "org/model", "task": "generate"}))
    assert not any(f.startswith("--runner") for f in server_flags(generate))
    assert server_flags(generate) == server_flags(parse(body())), "the default renders as before (no restart)"
