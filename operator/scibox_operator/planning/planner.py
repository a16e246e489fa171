"""Choose tensor- and pipeline-parallel sizes: the fewest GPUs that serve the model well.

The search tries the layouts `placement.candidate_layouts` allows, in its order (fewest
GPUs, then fewest nodes, then the widest TP), and takes the first whose GPUs hold the
weights and max_model_len x concurrency_target KV-cache tokens (`memory.evaluate_fit`,
whose docstring gives the memory model). Sizes the spec gives are checked and kept;
`explain` words the reason, or the PlanError when nothing fits.
"""

from __future__ import annotations

from .errors import PlanError
from .explain import no_fit_error, plan_reason
from .facts import ModelFacts
from .gpus import GpuType
from .memory import LayoutFit, evaluate_fit, kv_bytes_per_token
from .placement import candidate_layouts, place, tensor_parallel_problem
from .plan import Plan
from .settings import DEFAULT_RESERVE, MemoryReserve, Settings, positive_int, resolve_settings
from .weights import weight_bytes_per_stage


def evaluate_layout(model: ModelFacts, gpu: GpuType, gpus_per_node: int, tensor_parallel_size: int,
                    pipeline_parallel_size: int, *, dtype: str = "auto", quantization: str | None = None,
                    kv_cache_dtype: str = "auto", max_model_len: int | None = None,
                    gpu_memory_utilization: float = 0.9, concurrency_target: int = 1,
                    max_num_seqs: int | None = None, max_num_batched_tokens: int | None = None,
                    reserve: MemoryReserve = DEFAULT_RESERVE) -> LayoutFit:
    """Memory use of one given layout, without judging it (tests and diagnostics)."""
    s = resolve_settings(model, gpu, dtype=dtype, quantization=quantization, kv_cache_dtype=kv_cache_dtype,
                         max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
                         concurrency_target=concurrency_target, max_num_seqs=max_num_seqs,
                         max_num_batched_tokens=max_num_batched_tokens, reserve=reserve)
    placed = place(tensor_parallel_size, pipeline_parallel_size, gpus_per_node) or \
        (pipeline_parallel_size, tensor_parallel_size)
    return evaluate_fit(model, tensor_parallel_size, pipeline_parallel_size, *placed, s)


def plan_parallelism(model: ModelFacts, gpu: GpuType, gpus_per_node: int, *, dtype: str = "auto",
                     quantization: str | None = None, max_model_len: int | None = None,
                     gpu_memory_utilization: float = 0.9, tensor_parallel_size: int | None = None,
                     pipeline_parallel_size: int | None = None, max_nodes: int | None = None,
                     concurrency_target: int = 1, kv_cache_dtype: str = "auto",
                     max_num_seqs: int | None = None, max_num_batched_tokens: int | None = None,
                     reserve: MemoryReserve = DEFAULT_RESERVE) -> Plan:
    """The smallest layout whose GPUs hold the weights and max_model_len x
    concurrency_target KV-cache tokens. None means "choose"; given sizes are checked and
    kept, never changed. Raises PlanError with a CamelCase reason when nothing works."""
    if not positive_int(gpus_per_node):
        raise PlanError("InvalidParallelSize", f"GPUs per node must be a positive integer, got {gpus_per_node!r}")
    if max_nodes is not None and not positive_int(max_nodes):
        raise PlanError("InvalidParallelSize", f"maxNodes must be a positive integer, got {max_nodes!r}")
    s = resolve_settings(model, gpu, dtype=dtype, quantization=quantization, kv_cache_dtype=kv_cache_dtype,
                         max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
                         concurrency_target=concurrency_target, max_num_seqs=max_num_seqs,
                         max_num_batched_tokens=max_num_batched_tokens, reserve=reserve)
    tp_fixed, pp_fixed = tensor_parallel_size, pipeline_parallel_size
    _check_explicit(model, gpus_per_node, tp_fixed, pp_fixed, max_nodes, s)

    plan, tried = _first_fit(model, gpu, gpus_per_node, tp_fixed, pp_fixed, max_nodes, s)
    if plan is None:
        needed = None
        if tried and max_nodes is not None and tp_fixed is None and pp_fixed is None:
            needed = _plan_with_fewest_nodes_above(model, gpu, gpus_per_node, max_nodes, s)
        raise no_fit_error(model, gpu, gpus_per_node, tried, s, max_nodes, needed)
    return plan


def _first_fit(model: ModelFacts, gpu: GpuType, gpus_per_node: int, tp_fixed: int | None,
               pp_fixed: int | None, max_nodes: int | None, s: Settings) -> tuple[Plan | None, list[LayoutFit]]:
    tried: list[LayoutFit] = []
    for tp, pp, nodes, per_node in candidate_layouts(model, gpus_per_node, tp_fixed, pp_fixed, max_nodes, s.scheme):
        fit = evaluate_fit(model, tp, pp, nodes, per_node, s)
        if fit.fits:
            return _plan(model, gpu, fit, s, tried[-1] if tried else None, tp_fixed, pp_fixed), tried
        tried.append(fit)
    return None, tried


def _check_explicit(model: ModelFacts, gpus_per_node: int, tp: int | None, pp: int | None,
                    max_nodes: int | None, s: Settings) -> None:
    if tp is not None:
        if not positive_int(tp):
            raise PlanError("InvalidParallelSize", f"tensorParallelSize must be a positive integer, got {tp!r}")
        problem = tensor_parallel_problem(model, tp, s.scheme)
        if problem:
            raise PlanError("TensorParallelNotDivisor", f"tensorParallelSize {tp} is invalid: {problem}")
        if tp > gpus_per_node:
            raise PlanError(
                "TensorParallelExceedsNode",
                f"tensorParallelSize {tp} is larger than the {gpus_per_node} GPUs of a node; "
                f"tensor parallelism must stay within a node (use pipeline parallelism across nodes)",
            )
    if pp is not None:
        if not positive_int(pp):
            raise PlanError("InvalidParallelSize", f"pipelineParallelSize must be a positive integer, got {pp!r}")
        if pp > model.num_layers:
            raise PlanError("PipelineParallelTooLarge",
                            f"pipelineParallelSize {pp} exceeds the model's {model.num_layers} layers")
    if tp is not None and pp is not None and max_nodes is not None:
        nodes = place(tp, pp, gpus_per_node)[0]
        if nodes > max_nodes:
            raise PlanError("TooManyNodes",
                            f"tensor parallel {tp} x pipeline parallel {pp} needs {nodes} nodes of "
                            f"{gpus_per_node} GPUs; maxNodes is {max_nodes}")


def _plan(model: ModelFacts, gpu: GpuType, fit: LayoutFit, s: Settings, previous: LayoutFit | None,
          tp_fixed: int | None, pp_fixed: int | None) -> Plan:
    total = sum(weight_bytes_per_stage(model, 1, 1, s.storage))
    reason = plan_reason(model, gpu, fit, s, previous, tp_fixed, pp_fixed, total)
    per_token = kv_bytes_per_token(model, s.kv_dtype_bytes)
    return Plan(
        tensor_parallel_size=fit.tensor_parallel_size,
        pipeline_parallel_size=fit.pipeline_parallel_size,
        gpus=fit.gpus, nodes=fit.nodes, gpus_per_node=fit.gpus_per_node,
        weight_bytes_per_gpu=fit.weight_bytes_per_gpu, kv_cache_tokens=fit.kv_cache_tokens,
        kv_cache_bytes_per_token=per_token, max_model_len=s.max_model_len,
        concurrency_target=s.required_tokens // s.max_model_len, gpu_type=gpu.name, dtype=s.dtype,
        quantization=s.scheme.method if s.scheme else None, total_weight_bytes=total,
        parameters=model.total_params, reason=reason,
    )


def _plan_with_fewest_nodes_above(model: ModelFacts, gpu: GpuType, gpus_per_node: int, max_nodes: int,
                                  s: Settings) -> Plan | None:
    """The plan under the smallest node limit above max_nodes that works. The unlimited plan
    may spread a prime number of stages over that many nodes while fewer, fuller nodes
    would do; a plan that works under a limit works under any higher one, so bisect."""
    unlimited, _ = _first_fit(model, gpu, gpus_per_node, None, None, None, s)
    if unlimited is None:
        return None
    low, high, best = max_nodes + 1, unlimited.nodes - 1, unlimited
    while low <= high:
        middle = (low + high) // 2
        plan, _ = _first_fit(model, gpu, gpus_per_node, None, None, middle, s)
        if plan is None:
            low = middle + 1
        else:
            best, high = plan, middle - 1
    return best
