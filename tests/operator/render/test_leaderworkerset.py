"""Multi-node plans render a LeaderWorkerSet (pure)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scibox_operator.api.spec import parse
from scibox_operator.planning.serving_plan import GpuNode, PlanFailure, decide_serving_plan
from scibox_operator.render.leaderworkerset import render_leader_worker_set
from scibox_operator.render.service import render_service

CONFIGS = Path(__file__).resolve().parents[1] / "planning" / "configs"
H100 = (("nvidia.com/gpu.memory", "81559"), ("nvidia.com/gpu.product", "NVIDIA-H100-80GB-HBM3"))
NODES = [GpuNode(f"gpu-{i}", H100, 8) for i in range(2)]


def vd(**spec):
    base = {"model": {"name": "meta-llama/Llama-3.1-405B-Instruct"}}
    base.update(spec)
    return parse({"metadata": {"name": "big", "namespace": "ns", "uid": "u", "generation": 1}, "spec": base})


def test_a_16_gpu_plan_on_8_gpu_nodes_is_one_group_of_two_pods():
    config = json.loads((CONFIGS / "meta-llama--Llama-3.1-405B-Instruct.json").read_text())
    v = vd()
    plan = decide_serving_plan(v, config=config, safetensors_index=None, nodes=NODES, cache_shared=False)
    assert (plan.gpus_per_replica, plan.nodes, plan.gpus_per_pod) == (16, 2, 8)
    lws = render_leader_worker_set(v, plan)
    tmpl = lws["spec"]["leaderWorkerTemplate"]
    assert tmpl["size"] == 2
    leader = tmpl["leaderTemplate"]["spec"]["containers"][0]
    worker = tmpl["workerTemplate"]["spec"]["containers"][0]
    assert leader["resources"]["limits"]["nvidia.com/gpu"] == "8" == worker["resources"]["limits"]["nvidia.com/gpu"]
    script = leader["args"][0]
    assert "ray start --head" in script and "--distributed-executor-backend=ray" in script
    assert f"--tensor-parallel-size={plan.tensor_parallel_size}" in script
    assert f"--pipeline-parallel-size={plan.pipeline_parallel_size}" in script
    assert "LWS_LEADER_ADDRESS" in worker["args"][0]
    assert leader["readinessProbe"]["httpGet"]["path"] == "/health" and "readinessProbe" not in worker
    svc = render_service(v, multi_node=True)
    assert svc["spec"]["selector"]["leaderworkerset.sigs.k8s.io/worker-index"] == "0"


def test_explicit_sizes_spanning_nodes_and_tensor_parallel_wider_than_a_node():
    v = vd(parallelism={"tensorParallelSize": 8, "pipelineParallelSize": 2})
    plan = decide_serving_plan(v, config=None, safetensors_index=None, nodes=NODES, cache_shared=False)
    assert (plan.nodes, plan.gpus_per_pod) == (2, 8)
    with pytest.raises(PlanFailure) as err:
        decide_serving_plan(vd(parallelism={"tensorParallelSize": 16, "pipelineParallelSize": 1}),
                            config=None, safetensors_index=None, nodes=NODES, cache_shared=False)
    assert err.value.reason == "TensorParallelExceedsNode"


def test_single_node_plans_stay_deployments():
    v = vd(parallelism={"tensorParallelSize": 4, "pipelineParallelSize": 2})
    plan = decide_serving_plan(v, config=None, safetensors_index=None, nodes=NODES, cache_shared=False)
    assert plan.nodes == 1 and not plan.multi_node
