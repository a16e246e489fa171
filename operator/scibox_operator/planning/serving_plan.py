"""What one VLLMDeployment needs, decided from its spec and what the operator observed.

`ServingPlan` is the single input (besides the spec) of every renderer, so rendering stays pure
and the same observations always give byte-identical manifests.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from scibox_operator import release
from scibox_operator.api.spec import VLLMDeployment, dns_name, short_hash
from scibox_operator.engine.cache_layout import model_cache_path

if TYPE_CHECKING:
    from scibox_operator.planning.gpus import GpuType

MODELS_MOUNT = "/models"
# Built from images/vllm/Dockerfile (vLLM's official image plus the download and health scripts)
# and pushed by .github/workflows/release.yml under the name release.py gives it.
DEFAULT_VLLM_IMAGE = os.environ.get("SCIBOX_VLLM_IMAGE", release.VLLM_IMAGE)
DEFAULT_CACHE_SIZE = "100Gi"
GIB = 1024**3


@dataclass(frozen=True)
class ServingPlan:
    tensor_parallel_size: int
    pipeline_parallel_size: int
    gpus_per_replica: int
    parallelism_reason: str
    cache_claim: str  # the claim the server mounts
    cache_shared: bool  # one claim for every VLLMDeployment of this model+revision in the namespace
    cache_size: str
    image: str
    nodes: int = 1  # pods per replica: more than one means a LeaderWorkerSet group
    # Bytes of the checkpoint each server pod loads (pipeline stages split it across the pods);
    # None when the model's config was not read (pvc:// models, hub unreachable). The server's
    # memory request is sized from it (render/deployment.py).
    weight_bytes_per_pod: int | None = None
    # The nvidia.com/gpu.product the memory plan was made for: the server pods are pinned to it,
    # so they never land on a smaller GPU of a mixed cluster. None: no product pin (explicit
    # sizes, nodes without GPU Feature Discovery's labels, plans kept from older operators).
    gpu_product: str | None = None

    @property
    def multi_node(self) -> bool:
        return self.nodes > 1

    @property
    def gpus_per_pod(self) -> int:
        return self.gpus_per_replica // self.nodes


def model_cache_key(vd: VLLMDeployment) -> str:
    """One cache per model revision and, when it comes from the hub too, tokenizer revision:
    the claim's single download Job fetches both, so users sharing a claim share both."""
    model = vd.spec.model
    if model.tokenizer_repo is None:
        return short_hash(model.name, model.revision)  # unchanged for every existing claim
    return short_hash(model.name, model.revision, model.tokenizer_repo, tokenizer_revision(vd))


def tokenizer_revision(vd: VLLMDeployment) -> str:
    return vd.spec.model.tokenizer_revision or "main"


def cache_claim_name(vd: VLLMDeployment, shared: bool) -> str:
    model = vd.spec.model
    if model.is_pvc:
        return model.pvc_claim_and_path[0]
    if vd.spec.cache.existing_claim:
        return vd.spec.cache.existing_claim
    key = model_cache_key(vd)
    if shared:
        return dns_name("model-cache", suffix=f"-{key}")
    return dns_name(vd.name, suffix=f"-cache-{key}")


def model_dir(vd: VLLMDeployment) -> str:
    """Where the weights are inside the server container: one folder per model and revision
    (the same function the download Job uses), so a claim can hold several revisions."""
    model = vd.spec.model
    if model.is_pvc:
        _, path = model.pvc_claim_and_path
        return f"{MODELS_MOUNT}/{path}".rstrip("/")
    return model_cache_path(MODELS_MOUNT, model.name, model.revision)


def tokenizer_dir(vd: VLLMDeployment) -> str | None:
    """What the server's --tokenizer names: a hub tokenizer's folder in the cache (the download
    Job's layout; servers run offline), a path as given, or None for the model's own."""
    model = vd.spec.model
    if model.tokenizer_repo is not None:
        return model_cache_path(MODELS_MOUNT, model.tokenizer_repo, tokenizer_revision(vd))
    return model.tokenizer


def checkpoint_bytes(facts) -> int:
    """Bytes of the weights on disk: the safetensors index when the hub gave one, else the
    parameter count at the checkpoint's storage width (quantized checkpoints store less)."""
    if facts.safetensors_weight_bytes:
        return int(facts.safetensors_weight_bytes)
    quant = facts.quantization
    if quant is not None and not quant.online:
        per_param = quant.bytes_per_weight
    else:
        per_param = {"float32": 4, "float": 4}.get(facts.checkpoint_dtype, 2)
    return int(facts.total_params * per_param)


def auto_cache_size(weight_bytes: int | None) -> str:
    """Weights plus 10% and 2 GiB for tokenizer, configs and partial downloads, in whole GiB."""
    if not weight_bytes:
        return DEFAULT_CACHE_SIZE
    return f"{math.ceil((weight_bytes * 1.1 + 2 * GIB) / GIB)}Gi"


@dataclass(frozen=True)
class GpuNode:
    """What the planner needs of one node, read from GPU Feature Discovery's labels."""

    name: str
    labels: tuple[tuple[str, str], ...]
    gpus: int  # allocatable nvidia.com/gpu

    @property
    def product(self) -> str | None:
        return dict(self.labels).get("nvidia.com/gpu.product")

    @property
    def memory_mib(self) -> int | None:
        value = dict(self.labels).get("nvidia.com/gpu.memory")
        return int(value) if value and value.isdigit() else None


def gpu_node_from_body(body: dict) -> GpuNode:
    meta = body.get("metadata") or {}
    allocatable = (body.get("status") or {}).get("allocatable") or {}
    try:
        gpus = int(str(allocatable.get("nvidia.com/gpu", "0")))
    except ValueError:
        gpus = 0
    labels = tuple(sorted((k, v) for k, v in (meta.get("labels") or {}).items()
                          if k.startswith("nvidia.com/") or k == "kubernetes.io/hostname"))
    return GpuNode(meta.get("name", ""), labels, gpus)


class PlanFailure(Exception):
    def __init__(self, reason: str, message: str, *, retry: bool = False):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry = retry


def matching_gpu_nodes(vd: VLLMDeployment, nodes: list[GpuNode]) -> list[GpuNode]:
    res = vd.spec.resources
    out = []
    for node in nodes:
        if node.gpus <= 0:
            continue
        if res.gpu_product and node.product != res.gpu_product:
            continue
        if res.min_gpu_memory_mi_b and (node.memory_mib or 0) < res.min_gpu_memory_mi_b:
            continue
        labels = dict(node.labels)
        if any(labels.get(k) != v for k, v in vd.spec.node_selector.items()):
            continue
        out.append(node)
    return sorted(out, key=lambda n: n.name)


def decide_serving_plan(vd: VLLMDeployment, *, config: dict | None, safetensors_index: dict | None,
                        nodes: list[GpuNode], cache_shared: bool, image: str = DEFAULT_VLLM_IMAGE) -> ServingPlan:
    """Parallelism and cache sizing for one VLLMDeployment, or PlanFailure with a reason."""
    from scibox_operator import planning  # imported lazily: planning is pure but large

    spec = vd.spec
    tp_in, pp_in = spec.parallelism.tensor_parallel_size, spec.parallelism.pipeline_parallel_size
    gpus_in = spec.resources.gpus
    tp = tp_in if isinstance(tp_in, int) else None
    pp = pp_in if isinstance(pp_in, int) else None
    if isinstance(gpus_in, int) and tp is None and pp is None:
        tp, pp = gpus_in, 1  # a GPU count alone means one tensor-parallel group

    facts = None
    if config is not None:
        try:
            facts = planning.model_facts_from_config(config, safetensors_index)
        except planning.PlanError as exc:
            if tp is None or pp is None:
                raise PlanFailure(exc.reason, exc.message) from None

    weight_bytes = checkpoint_bytes(facts) if facts is not None else None
    cache_size = spec.cache.size if spec.cache.size != "auto" else auto_cache_size(weight_bytes)
    claim = cache_claim_name(vd, cache_shared)
    image = spec.image or image

    candidates = matching_gpu_nodes(vd, nodes)
    gpu, product = _gpu_type(vd, candidates) if (facts is not None or tp is None or pp is None) else (None, None)
    explicit = tp is not None and pp is not None
    # Explicit sizes pin no product (no memory plan was made for one): any matching node counts.
    gpus_per_node = _gpus_per_node(candidates, None if explicit else product, gpu)
    if tp is not None and pp is not None:
        # Explicit sizes are the user's call: only what vLLM would refuse at start-up stops them
        # (the memory estimate is deliberately conservative and only chooses sizes for `auto`).
        if facts is not None:
            problem = planning.tensor_parallel_problem(facts, tp, facts.quantization)
            if problem:
                raise PlanFailure("TensorParallelNotDivisor", f"tensorParallelSize {tp}: {problem}")
            if pp > facts.num_layers:
                raise PlanFailure("PipelineParallelTooLarge",
                                  f"pipelineParallelSize {pp} exceeds the model's {facts.num_layers} layers")
        reason = f"set in the spec: tensor {tp} x pipeline {pp}"
        if facts is None and (tp_in == "auto" or pp_in == "auto"):
            reason = f"resources.gpus={gpus_in}: tensor {tp} x pipeline {pp}"
        nodes = _nodes_for(tp, pp, gpus_per_node)
        if nodes > 1:
            reason += f", {nodes} nodes of {tp * pp // nodes} GPUs"
        return ServingPlan(tp, pp, tp * pp, reason, claim, cache_shared, cache_size, image, nodes,
                           weight_bytes_per_pod=_per_pod(weight_bytes, nodes))
    if facts is None:
        raise PlanFailure("ModelConfigUnavailable",
                          "parallelism is auto but the model's config.json could not be read; "
                          "set parallelism.tensorParallelSize and pipelineParallelSize", retry=True)
    if gpu is None:
        raise PlanFailure("NoGpuNodes",
                          "parallelism is auto but no node with nvidia.com/gpu matches the GPU selector; "
                          "set resources.gpuProduct to a known GPU or set the parallel sizes")
    try:
        plan = planning.plan_parallelism(
            facts, gpu, max(gpus_per_node, 1),
            dtype=spec.model.dtype, quantization=spec.model.quantization,
            max_model_len=spec.model.max_model_len,
            gpu_memory_utilization=spec.engine.gpu_memory_utilization,
            tensor_parallel_size=tp, pipeline_parallel_size=pp,
            **planning_load(vd),
        )
    except planning.PlanError as exc:
        raise PlanFailure(exc.reason, exc.message) from None
    if isinstance(gpus_in, int) and gpus_in != plan.gpus:
        raise PlanFailure("GpuCountMismatch",
                          f"resources.gpus={gpus_in} but the plan needs {plan.gpus} "
                          f"(tensor {plan.tensor_parallel_size} x pipeline {plan.pipeline_parallel_size})")
    pods = max(1, plan.nodes)
    return ServingPlan(plan.tensor_parallel_size, plan.pipeline_parallel_size, plan.gpus, plan.reason,
                       claim, cache_shared, cache_size, image, pods, weight_bytes_per_pod=_per_pod(weight_bytes, pods),
                       gpu_product=product)


def planning_load(vd: VLLMDeployment) -> dict[str, Any]:
    """The engine settings that change what memory the plan must leave (memory.py): the batch
    sizes vLLM profiles its activations with, the KV dtype, and how many full-length sequences
    the KV cache must hold. Unset ones keep the planner's defaults (vLLM's own)."""
    engine = vd.spec.engine
    return {"max_num_seqs": engine.max_num_seqs, "max_num_batched_tokens": engine.max_num_batched_tokens,
            "kv_cache_dtype": engine.kv_cache_dtype or "auto",
            "concurrency_target": engine.target_concurrent_sequences or 1}


def _gpus_per_node(candidates: list[GpuNode], product: str | None, gpu: GpuType | None) -> int:
    """GPUs of the largest matching node of the planned product; with no such node yet (an
    autoscaled pool at zero) the planned GPU's usual count, not 1: a 70B model must not be
    spread over three one-GPU nodes because its pool is empty."""
    same = [n.gpus for n in candidates if product is None or n.product == product]
    if same:
        return max(same)
    return gpu.usual_gpus_per_node if gpu is not None else 0


def plan_no_longer_fits(vd: VLLMDeployment, plan: ServingPlan, nodes: list[GpuNode]) -> str | None:
    """Why a kept plan cannot be scheduled on the GPU nodes there are now, or None while it can.

    While no node matches the spec at all, the kept plan stands: an autoscaler may bring the
    pool back, and nothing better can be planned without nodes. Otherwise it needs
    `plan.nodes` nodes of its product, each with the GPUs of one pod."""
    candidates = matching_gpu_nodes(vd, nodes)
    if not candidates:
        return None
    product = plan.gpu_product
    fitting = [n for n in candidates if (product is None or n.product == product) and n.gpus >= plan.gpus_per_pod]
    if len(fitting) >= plan.nodes:
        return None
    need = f"{plan.nodes} node(s)" + (f" of {product}" if product else "") + f" with {plan.gpus_per_pod} GPUs"
    return (f"the kept plan (tensor {plan.tensor_parallel_size} x pipeline {plan.pipeline_parallel_size}) "
            f"needs {need}; {len(fitting)} such node(s) now, matching GPU nodes: {_inventory(candidates)}")


def _inventory(nodes: list[GpuNode]) -> str:
    """`3 x NVIDIA-L4 (8 GPUs), 1 x NVIDIA-H100-80GB-HBM3 (4 GPUs)`: counts per product and size."""
    counts: dict[tuple[str, int], int] = {}
    for node in nodes:
        key = (node.product or "unlabelled", node.gpus)
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{n} x {p} ({g} GPUs)" for (p, g), n in sorted(counts.items()))


def _per_pod(weight_bytes: int | None, pods: int) -> int | None:
    """Pipeline stages hold disjoint layers, so each pod of a group loads its share (rounded up)."""
    if weight_bytes is None:
        return None
    return -(-weight_bytes // pods)


def _nodes_for(tp: int, pp: int, gpus_per_node: int) -> int:
    """Nodes one replica spans: tensor parallelism stays inside a node (it needs NVLink-class
    bandwidth), pipeline stages spread across nodes, as vLLM's multi-node guide says."""
    gpus = tp * pp
    if gpus_per_node <= 0 or gpus <= gpus_per_node:
        return 1
    if tp > gpus_per_node:
        raise PlanFailure("TensorParallelExceedsNode",
                          f"tensorParallelSize {tp} needs more GPUs than one node has ({gpus_per_node}); "
                          "keep tensor parallelism within a node and use pipelineParallelSize across nodes")
    nodes = -(-gpus // gpus_per_node)
    while gpus % nodes or (gpus // nodes) % tp and tp % (gpus // nodes):
        nodes += 1
    return nodes


def _gpu_type(vd: VLLMDeployment, candidates: list[GpuNode]):
    """(GPU the plan assumes, the product label it pins to): the one the spec asks for, else the
    most common GPU among matching nodes (ties broken by product name, so the choice is
    deterministic). The product is None when the nodes carry no product label."""
    from scibox_operator import planning

    wanted = vd.spec.resources.gpu_product
    if wanted:
        try:
            return planning.lookup_gpu(wanted), wanted
        except planning.PlanError:
            pass
    if not candidates:
        return None, wanted
    by_product: dict[str, int] = {}
    for node in candidates:
        by_product[node.product or ""] = by_product.get(node.product or "", 0) + 1
    product = sorted(by_product.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
    labels = dict(next(n for n in candidates if (n.product or "") == product).labels)
    return planning.gpu_from_node_labels(labels), product or None
