"""Server pod resources: CPU and memory requests and the /dev/shm size come from the plan, so a
GPU pod is never BestEffort; the spec's resources.cpu / resources.memory replace them.

The pure tests read the renderer's output; `test_the_api_server_never_classes_a_server_pod_best_effort`
asks the real kube-apiserver (server-side dry run) which QoS class it gives the rendered pods.
"""

from __future__ import annotations

import json

import pytest

from scibox_operator.api.spec import parse
from scibox_operator.planning.serving_plan import ServingPlan, cache_claim_name, decide_serving_plan
from scibox_operator.render.deployment import GIB, render_deployment
from scibox_operator.render.leaderworkerset import render_leader_worker_set

from .test_renderers import body

# A Llama-style config whose checkpoint is ~15 GB in bf16 (8B parameters).
LLAMA_8B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
            "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 131072,
            "torch_dtype": "bfloat16", "tie_word_embeddings": False}


def pod_of(vd, plan):
    return render_deployment(vd, plan)["spec"]["template"]["spec"]


def resources_of(vd, plan):
    return pod_of(vd, plan)["containers"][0]["resources"]


def shm_of(vd, plan):
    return {v["name"]: v for v in pod_of(vd, plan)["volumes"]}["dshm"]["emptyDir"]


def plan(vd, *, tp=1, pp=1, nodes=1, weights=None):
    return ServingPlan(tp, pp, tp * pp, "test", cache_claim_name(vd, False), False, "10Gi", "img:1", nodes,
                       weight_bytes_per_pod=weights)


def gib(quantity: str) -> int:
    assert quantity.endswith("Gi"), quantity
    return int(quantity[:-2])


def test_memory_request_is_the_pods_weights_plus_runtime_and_shm():
    vd = parse(body())
    small = resources_of(vd, plan(vd, weights=1 * GIB))
    big = resources_of(vd, plan(vd, weights=40 * GIB))
    assert gib(big["requests"]["memory"]) - gib(small["requests"]["memory"]) == 39, "weights count in full"
    assert gib(small["requests"]["memory"]) > 1, "a margin above the weights for the processes and /dev/shm"
    assert "memory" not in small["limits"] and "cpu" not in small["limits"], \
        "no planned limits: an estimate must not OOM-kill or throttle a server"


def test_more_gpus_in_a_pod_need_more_cpu_memory_and_shm():
    vd = parse(body())
    one, four = plan(vd, tp=1, weights=8 * GIB), plan(vd, tp=4, weights=8 * GIB)
    r1, r4 = resources_of(vd, one), resources_of(vd, four)
    assert (r1["requests"]["cpu"], r4["requests"]["cpu"]) == ("1", "4")
    assert gib(r4["requests"]["memory"]) > gib(r1["requests"]["memory"])
    assert (shm_of(vd, one)["sizeLimit"], shm_of(vd, four)["sizeLimit"]) == ("1Gi", "4Gi")
    assert shm_of(vd, four)["medium"] == "Memory"
    assert r4["limits"] == {"nvidia.com/gpu": "4"}


def test_the_shm_size_is_part_of_the_memory_request():
    vd = parse(body())
    p = plan(vd, tp=8, weights=0)
    assert gib(resources_of(vd, p)["requests"]["memory"]) >= gib(shm_of(vd, p)["sizeLimit"]) + 1


def test_unknown_weights_get_a_default_request_and_known_ones_replace_it():
    vd = parse(body())
    unknown = resources_of(vd, plan(vd, weights=None))["requests"]["memory"]
    tiny = resources_of(vd, plan(vd, weights=10 * 1024**2))["requests"]["memory"]
    assert gib(unknown) > gib(tiny) >= 1


def test_decide_serving_plan_gives_each_pod_its_share_of_the_checkpoint():
    vd = parse(body(parallelism={"tensorParallelSize": 1, "pipelineParallelSize": 1}))
    one = decide_serving_plan(vd, config=LLAMA_8B, safetensors_index=None, nodes=[], cache_shared=False)
    assert 14 * GIB < one.weight_bytes_per_pod < 16 * GIB
    index = {"metadata": {"total_size": 3 * GIB}}
    indexed = decide_serving_plan(vd, config=LLAMA_8B, safetensors_index=index, nodes=[], cache_shared=False)
    assert indexed.weight_bytes_per_pod == 3 * GIB, "the safetensors index is the size on disk"
    no_config = decide_serving_plan(vd, config=None, safetensors_index=None, nodes=[], cache_shared=False)
    assert no_config.weight_bytes_per_pod is None


def test_pipeline_stages_on_two_nodes_split_the_weights_between_the_pods():
    from scibox_operator.planning.serving_plan import GpuNode

    nodes = [GpuNode(f"n{i}", (("nvidia.com/gpu.product", "NVIDIA-H100-80GB-HBM3"),), 8) for i in range(2)]
    vd = parse(body(parallelism={"tensorParallelSize": 8, "pipelineParallelSize": 2}))
    whole = decide_serving_plan(vd, config=LLAMA_8B, safetensors_index={"metadata": {"total_size": 100 * GIB}},
                                nodes=[], cache_shared=False)
    split = decide_serving_plan(vd, config=LLAMA_8B, safetensors_index={"metadata": {"total_size": 100 * GIB}},
                                nodes=nodes, cache_shared=False)
    assert (whole.nodes, split.nodes) == (1, 2)
    assert split.weight_bytes_per_pod == 50 * GIB == whole.weight_bytes_per_pod // 2
    lws = render_leader_worker_set(vd, split)["spec"]["leaderWorkerTemplate"]
    for role in ("leaderTemplate", "workerTemplate"):
        requests = lws[role]["spec"]["containers"][0]["resources"]["requests"]
        assert gib(requests["memory"]) >= 50 and requests["cpu"] == "8", role


def test_spec_resources_override_the_plan_and_removing_them_restores_it():
    spec = {"resources": {"gpus": 1, "cpu": "6", "memory": "48Gi"}}
    vd = parse(body(**spec))
    p = plan(vd, weights=8 * GIB)
    set_by_user = resources_of(vd, p)
    assert set_by_user["requests"] == {"cpu": "6", "memory": "48Gi"}
    assert set_by_user["limits"] == {"nvidia.com/gpu": "1", "cpu": "6", "memory": "48Gi"}

    without_memory = parse(body(resources={"gpus": 1, "cpu": "6"}))
    planned = resources_of(without_memory, p)
    assert planned["requests"]["memory"] == resources_of(parse(body(resources={"gpus": 1})), p)["requests"]["memory"]
    assert planned["requests"]["memory"] != "48Gi" and "memory" not in planned["limits"]
    assert planned["requests"]["cpu"] == "6" == planned["limits"]["cpu"], "the other field stays the user's"

    without_both = resources_of(parse(body(resources={"gpus": 1})), p)
    assert without_both["requests"]["cpu"] == "1" and without_both["limits"] == {"nvidia.com/gpu": "1"}


def test_the_llama_70b_sample_is_guaranteed_its_cpu_and_memory():
    from pathlib import Path

    import yaml

    sample = yaml.safe_load((Path(__file__).resolve().parents[3] / "manifests" / "samples" / "llama-70b-8gpu.yaml")
                            .read_text())
    sample["metadata"].update(namespace="ns", uid="u")
    vd = parse(sample)
    res = resources_of(vd, decide_serving_plan(vd, config=None, safetensors_index=None, nodes=[], cache_shared=False))
    assert res["requests"] == {"cpu": "32", "memory": "256Gi"}
    assert res["limits"] == {"nvidia.com/gpu": "8", "cpu": "32", "memory": "256Gi"}


# --- the API server's verdict ---------------------------------------------------------------------


def _dry_run_qos(cluster, namespace: str, pod_spec: dict) -> str:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "qos-", "namespace": namespace},
           "spec": pod_spec}
    out = cluster.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(pod))
    return json.loads(out.stdout)["status"]["qosClass"]


@pytest.mark.cluster
def test_the_api_server_never_classes_a_server_pod_best_effort(cluster, namespace):
    vd = parse(body())
    planned = _dry_run_qos(cluster, namespace, pod_of(vd, plan(vd, tp=2, weights=4 * GIB)))
    assert planned == "Burstable"
    both = parse(body(resources={"cpu": "4", "memory": "32Gi"}))
    assert _dry_run_qos(cluster, namespace, pod_of(both, plan(both, tp=2))) == "Guaranteed"
    # The check itself can fail: the same pod without CPU and memory is what the renderer used
    # to produce, and the API server calls it BestEffort.
    bare = pod_of(vd, plan(vd, tp=2))
    bare["containers"][0]["resources"].pop("requests")
    assert _dry_run_qos(cluster, namespace, bare) == "BestEffort"
