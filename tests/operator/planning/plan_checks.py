"""Independent checks of a plan: it fits memory, obeys vLLM's rules, and is minimal.

Written against the rules as stated in the issue, not against the planner's search code:
TP divides the attention heads and fits the KV heads, PP stays within the layer count,
TP stays within a node; every node of a multi-node layout runs the same number of whole
pipeline stages (LeaderWorkerSet pods are uniform); and no layout the policy prefers with fewer
GPUs, placeable within the node limit, fits.
"""

from __future__ import annotations

from scibox_operator.planning import ModelFacts, Plan, evaluate_layout, kv_bytes_per_token, tensor_parallel_problem


def assert_rules(model: ModelFacts, plan: Plan, gpus_per_node: int) -> None:
    tp, pp = plan.tensor_parallel_size, plan.pipeline_parallel_size
    assert model.num_attention_heads % tp == 0
    if not model.kv_cache_is_latent:
        kv = model.num_kv_heads
        assert kv % tp == 0 or tp % kv == 0
    assert 1 <= pp <= model.num_layers
    assert tp <= gpus_per_node
    assert plan.gpus == tp * pp
    assert plan.nodes * plan.gpus_per_node == plan.gpus
    assert plan.gpus_per_node <= gpus_per_node
    assert plan.gpus_per_node % tp == 0          # whole TP groups per node
    assert plan.reason and plan.reason.endswith(".")


def assert_fits(model, gpu, plan: Plan, gpus_per_node: int, **options) -> None:
    fit = evaluate_layout(model, gpu, gpus_per_node, plan.tensor_parallel_size,
                          plan.pipeline_parallel_size, **options)
    assert fit.fits
    assert plan.kv_cache_tokens == fit.kv_cache_tokens >= plan.max_model_len * plan.concurrency_target
    assert plan.weight_bytes_per_gpu == fit.weight_bytes_per_gpu
    budget = int(gpu.cuda_total_bytes * options.get("gpu_memory_utilization", 0.9))
    for stage in fit.stages:
        # weights + runtime reserve + the KV cache the plan promises fit in the budget
        used = stage.weight_bytes + stage.reserve_bytes + stage.kv_tokens * stage.kv_bytes_per_token
        assert used <= budget
        assert stage.kv_bytes_per_token == kv_bytes_per_token(
            model, _kv_bytes(plan, options), plan.tensor_parallel_size, stage.layers)


def _kv_bytes(plan: Plan, options: dict) -> int:
    kv = options.get("kv_cache_dtype", "auto")
    if kv.startswith("fp8"):
        return 1
    return 4 if plan.dtype == "float32" else 2


def fewest_nodes(tp: int, pp: int, gpus_per_node: int) -> int | None:
    """Nodes a layout needs when every node holds the same number of whole stages."""
    counts = [n for n in range(1, pp + 1) if pp % n == 0 and tp * pp // n <= gpus_per_node]
    return min(counts) if tp <= gpus_per_node and counts else None


def preferred_smaller_layouts(model, plan: Plan, gpus_per_node: int, scheme=None, max_nodes=None):
    """Layouts the TP-first policy would take before this plan when they fit and place."""
    valid = [tp for tp in range(1, gpus_per_node + 1) if tensor_parallel_problem(model, tp, scheme) is None]
    widest = max(valid)
    layouts = [(tp, 1) for tp in valid]                                   # TP inside one node
    layouts += [(widest, pp) for pp in range(2, model.num_layers + 1)]     # then stages of it
    placeable = []
    for tp, pp in layouts:
        nodes = fewest_nodes(tp, pp, gpus_per_node)
        if tp * pp < plan.gpus and nodes is not None and (max_nodes is None or nodes <= max_nodes):
            placeable.append((tp, pp))
    return placeable


def assert_minimal(model, gpu, plan: Plan, gpus_per_node: int, max_nodes=None, **options) -> None:
    scheme = model.quantization
    for tp, pp in preferred_smaller_layouts(model, plan, gpus_per_node, scheme, max_nodes):
        fit = evaluate_layout(model, gpu, gpus_per_node, tp, pp, **options)
        assert not fit.fits, f"{tp}x{pp} ({tp * pp} GPUs) also fits, plan used {plan.gpus}"
