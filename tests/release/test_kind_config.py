"""The kind recipe (docs/kind.md): its cluster config loads with kind's own v1alpha4 types and
strict decoding (tools/kindcheck, built from the Go module proxy), broken copies do not, and
the page, the config, the CPU sample and the release all name the same things."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from scibox_operator import release
from scibox_operator.api.spec import parse
from scibox_operator.planning.serving_plan import decide_serving_plan, gpu_node_from_body, matching_gpu_nodes
from scibox_operator.render.deployment import GPU_MEMORY_LABEL, GPU_PRODUCT_LABEL, render_deployment

from .workflow import ROOT

CLUSTER_CONFIG = ROOT / "docs" / "kind" / "cluster.yaml"
KIND_MD = ROOT / "docs" / "kind.md"
SAMPLE = ROOT / "manifests" / "samples" / "kind-cpu.yaml"


def kindcheck(*paths: Path) -> subprocess.CompletedProcess:
    from tools.localcluster import build

    return subprocess.run([str(build.binary("kindcheck")), *map(str, paths)], capture_output=True, text=True,
                          timeout=60)


def test_the_cluster_config_loads_with_kinds_types():
    done = kindcheck(CLUSTER_CONFIG)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{CLUSTER_CONFIG}: ok"


@pytest.mark.parametrize("old, new, message", [
    ("    labels:", "    lables:", "field lables not found"),
    ("  - role: worker", "  - role: wroker", '"wroker" is not a node role'),
    ("nvidia.com/gpu.product: CPU-Only", "nvidia.com/gpu.product: CPU Only", "nvidia.com/gpu.product"),
    ("apiVersion: kind.x-k8s.io/v1alpha4", "apiVersion: kind.x-k8s.io/v1alpha3", "want apiVersion"),
    ("  - role: control-plane\n", "", "at least one control-plane node"),
    ("name: scibox\n", "name: scibox\nnetworking:\n  apiServerPort: 6443\n  ipFamilly: ipv4\n", "ipFamilly"),
])
def test_a_broken_copy_fails_naming_the_problem(tmp_path, old, new, message):
    text = CLUSTER_CONFIG.read_text()
    assert old in text
    broken = tmp_path / "cluster.yaml"
    broken.write_text(text.replace(old, new))
    done = kindcheck(broken)
    assert done.returncode == 1 and message in done.stderr, done.stdout + done.stderr


def test_kindcheck_builds_against_the_kind_version_the_page_names():
    go_mod = (ROOT / "tools" / "kindcheck" / "go.mod").read_text()
    kind_version = re.search(r"sigs\.k8s\.io/kind (v[\d.]+)", go_mod).group(1)
    assert f"kind {kind_version}" in KIND_MD.read_text()


def _config() -> dict:
    return yaml.safe_load(CLUSTER_CONFIG.read_text())


def _sample():
    body = yaml.safe_load(SAMPLE.read_text())
    body["metadata"].update(namespace="default", uid="u")
    return parse(body)


def test_the_sample_lands_on_the_labelled_worker_once_it_advertises_a_gpu():
    config = _config()
    worker = next(n for n in config["nodes"] if n["role"] == "worker")
    node_name = f"{config['name']}-worker"  # kind names nodes <cluster>-<role>
    node = {"metadata": {"name": node_name, "labels": worker["labels"]},
            "status": {"allocatable": {"nvidia.com/gpu": "1"}}}  # what the page's patch adds
    vd = _sample()
    assert [n.name for n in matching_gpu_nodes(vd, [gpu_node_from_body(node)])] == [node_name]
    without_gpu = dict(node, status={"allocatable": {}})
    assert matching_gpu_nodes(vd, [gpu_node_from_body(without_gpu)]) == [], "why the page patches the node"
    plan = decide_serving_plan(vd, config=None, safetensors_index=None, nodes=[gpu_node_from_body(node)],
                               cache_shared=False)
    pod = render_deployment(vd, plan)["spec"]["template"]["spec"]
    assert all(worker["labels"].get(k) == v for k, v in pod["nodeSelector"].items()), pod["nodeSelector"]
    assert GPU_PRODUCT_LABEL in pod["nodeSelector"] and GPU_MEMORY_LABEL in worker["labels"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_the_page_names_the_configs_nodes_files_and_the_releases_images():
    text = KIND_MD.read_text()
    config = _config()
    assert f"kind delete cluster --name {config['name']}" in text
    assert f"--name {config['name']} " in text and f"kubectl patch node {config['name']}-worker" in text
    for rel in re.findall(r"(?:docs|manifests|charts|images)/[\w./-]+\w", text):
        assert (ROOT / rel).exists(), rel
    images = set(re.findall(r"\b(?:ghcr\.io|public\.ecr\.aws)/[\w./-]+:[\w.-]+", text))
    assert images == {*release.produced_images(), *release.VLLM_CPU_IMAGES}
    vd = _sample()
    assert vd.spec.image in release.VLLM_CPU_IMAGES and vd.spec.cache.download_image == release.VLLM_IMAGE


@pytest.mark.cluster
def test_the_api_server_accepts_the_cpu_sample_under_the_crd(cluster, crd, namespace):
    done = cluster.kubectl("create", "--dry-run=server", "-n", namespace, "-o", "name", "-f", str(SAMPLE),
                           check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "vllmdeployment.scibox.io/qwen-cpu"
    # The same check refuses what the CRD forbids (a negative GPU count).
    broken = SAMPLE.read_text().replace("gpus: 1", "gpus: -1")
    refused = cluster.kubectl("create", "--dry-run=server", "-n", namespace, "-f", "-", input=broken, check=False)
    assert refused.returncode != 0 and "gpus" in refused.stderr
