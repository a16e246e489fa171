"""Sticky, pinned plans against the real control plane and operator (issue 19): an auto plan pins
the server pods to the GPU product it was made for; relabelling nodes (an inventory change) leaves
the Deployment alone while the kept plan still fits; a spec change re-plans against the nodes there
are now. The pure parts are in tests/operator/planning/test_sticky_plan.py."""

from __future__ import annotations

import json
import time

import pytest

from scibox_operator.api.spec import parse
from scibox_operator.planning.serving_plan import decide_serving_plan, gpu_node_from_body

from .kubehelp import apply, condition, get, wait_for

pytestmark = pytest.mark.cluster

H100 = "NVIDIA-H100-80GB-HBM3"
# Sorts before H100: with as many A100 as H100 nodes, a fresh plan would choose the A100s.
A100 = {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB", "nvidia.com/gpu.memory": "81920"}
SETTLE_SECONDS = 8  # node events enqueue every VLLMDeployment; a pass takes well under a second


def manifest(commit: str, engine: dict | None = None) -> dict:
    # No gpuProduct: the plan picks the product from the nodes, which is what gets pinned.
    return {"apiVersion": "scibox.io/v1alpha1", "kind": "VLLMDeployment", "metadata": {"name": "sticky"},
            "spec": {"model": {"name": "scibox/tiny-llama", "revision": commit, "maxModelLen": 256,
                               "dtype": "bfloat16"}, "engine": engine or {}}}


def gpu_nodes(cluster) -> list:
    return [gpu_node_from_body(n) for n in get(cluster, "nodes")["items"]]


def relabel(cluster, node: str, labels: dict[str, str]) -> None:
    cluster.kubectl("label", "node", node, "--overwrite", *(f"{k}={v}" for k, v in labels.items()))


def pod_spec(dep: dict) -> dict:
    return dep["spec"]["template"]["spec"]


def test_a_node_relabel_keeps_the_deployment_and_a_spec_change_re_plans(cluster, operator, hub_mirror, namespace):
    commit = hub_mirror.repos["scibox/tiny-llama"].sha
    h100_nodes = sorted(n.name for n in gpu_nodes(cluster) if n.product == H100 and n.gpus > 0)
    assert len(h100_nodes) >= 2, h100_nodes
    apply(cluster, namespace, manifest(commit))
    dep = wait_for(lambda: get(cluster, "deployment", "sticky", namespace), timeout=120, what="the Deployment")
    assert pod_spec(dep)["nodeSelector"] == {"nvidia.com/gpu.product": H100}, "pinned to the planned product"
    generation = dep["metadata"]["generation"]

    # Relabel all but one H100 node: the kept plan (one GPU) still fits on the one left.
    moved = h100_nodes[1:]
    try:
        for node in moved:
            relabel(cluster, node, A100)
        # Without stickiness the operator would move the pods: a fresh plan picks the A100s now.
        vd = get(cluster, "vllmd", "sticky", namespace)
        assert _fresh_product(cluster, vd, hub_mirror, commit) == A100["nvidia.com/gpu.product"]
        time.sleep(SETTLE_SECONDS)
        dep = get(cluster, "deployment", "sticky", namespace)
        assert dep["metadata"]["generation"] == generation, "a node relabel must not restart the pods"
        assert pod_spec(dep)["nodeSelector"] == {"nvidia.com/gpu.product": H100}
        vd = get(cluster, "vllmd", "sticky", namespace)
        assert condition(vd, "ParallelismPlanned")["reason"] == "Planned", vd["status"]
        assert vd["status"]["plan"]["gpuProduct"] == H100

        # A spec change re-plans against today's nodes: the pin follows, the new flag is rendered.
        apply(cluster, namespace, manifest(commit, {"kvCacheDtype": "fp8"}))
        dep = wait_for(lambda: (lambda d: d if d and d["metadata"]["generation"] > generation else None)(
            get(cluster, "deployment", "sticky", namespace)), timeout=60, what="the re-planned Deployment")
        assert pod_spec(dep)["nodeSelector"] == {"nvidia.com/gpu.product": A100["nvidia.com/gpu.product"]}
        assert "--kv-cache-dtype=fp8" in pod_spec(dep)["containers"][0]["args"]
    finally:
        for node in moved:
            relabel(cluster, node, {"nvidia.com/gpu.product": H100, "nvidia.com/gpu.memory": "81559"})


def _fresh_product(cluster, vd: dict, hub_mirror, commit: str) -> str | None:
    """The product a plan made from scratch on the current nodes would pin (the real planner,
    the model's config from the mirror)."""
    import urllib.request

    url = f"{hub_mirror.endpoint}/scibox/tiny-llama/resolve/{commit}/config.json"
    with urllib.request.urlopen(url, timeout=10) as response:  # the local mirror, 127.0.0.1
        config = json.load(response)
    plan = decide_serving_plan(parse(vd), config=config, safetensors_index=None, nodes=gpu_nodes(cluster),
                               cache_shared=False)
    return plan.gpu_product
