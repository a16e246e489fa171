"""Choose tensor- and pipeline-parallel sizes: the fewest GPUs that serve the model well.

Memory model of one GPU (what vLLM's startup profiling does, vllm/v1/worker/gpu_worker.py):

    budget   = device total x gpu_memory_utilization
    kv_cache = budget - weights - peak activations - non-torch memory - CUDA graphs

and vLLM refuses to start when kv_cache cannot hold one request of max_model_len. We ask
for max_model_len x concurrency_target tokens. The reserve figures below are calibrated
on published vLLM startup logs (llm-d/llm-d-benchmark, config_explorer/
empirical-vllm-memory-results.md, vLLM on H100 79.18 GiB, max_num_seqs 1024,
max_num_batched_tokens 8192):

    model                   weights  peak activation  non-torch  CUDA graphs
    Qwen3-0.6B      TP1      1.12        5.56           0.13        0.10
    Llama-3.1-8B    TP1     14.99        4.76           0.13       -0.45
    Qwen3-32B       TP1     61.03        5.64           0.14       -0.88
    Llama-3.3-70B   TP2     33.88        4.84           0.55       -0.42  (FP8)
    gpt-oss-20b     TP1     13.47        7.38           0.13        0.39
    gpt-oss-120b    TP1     64.38        7.38           0.13        1.03   (GiB)

The peak activation follows the vocabulary, not the model size: the profile run
samples max_num_seqs logits rows in float32 with several temporaries (top-k/top-p
sort, softmax, log-probs). 38 bytes per (sequence x vocabulary entry) reproduces all
five within 0.2 GiB (Qwen3-0.6B: 1024 x 151936 x 38 = 5.5 GiB; gpt-oss: 201088 -> 7.3
GiB); the forward pass adds max_num_batched_tokens x (2 x hidden + 2 x FFN width per
rank) values, which brings the estimate to or above every measurement.

Deliberately conservative: sliding-window layers (Mistral v0.1, Gemma 2/3, Phi-3) are
counted as full-attention layers, although vLLM's hybrid KV-cache manager keeps only the
window for them; a multimodal encoder's profiling activations are not modelled (they are
small next to the sampler's for Gemma 3's 256 image tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .errors import PlanError
from .gpus import GIB, GpuType
from .facts import ModelFacts
from .numerics import (DTYPE_BYTES, QuantScheme, kv_cache_dtype_bytes, resolve_serving_dtype,
                       same_family, scheme_for_requested)
from .weights import Storage, kv_head_fraction, pipeline_stages, weight_bytes_per_stage

# vLLM allocates the KV cache in blocks of 16 tokens (CacheConfig.block_size default).
KV_BLOCK_TOKENS = 16


@dataclass(frozen=True)
class MemoryReserve:
    """Per-GPU memory vLLM keeps besides weights and KV cache (see the module docstring)."""

    # Sampler profile: float32 logits rows and their temporaries, last pipeline stage only.
    sampler_bytes_per_logit: float = 38.0
    # NCCL/custom all-reduce buffers and the CUDA context outside torch's allocator:
    # measured 0.13-0.14 GiB on one GPU and 0.55 GiB with TP=2 (table above).
    non_torch_single_gpu: int = int(0.25 * GIB)
    non_torch_multi_gpu: int = int(0.75 * GIB)
    # vLLM >= 0.21 profiles CUDA graph memory into the budget
    # (VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=1); measured up to 1.03 GiB (gpt-oss-120b).
    cuda_graphs: int = int(1.0 * GIB)


DEFAULT_RESERVE = MemoryReserve()


def vllm_default_batch(gpu: GpuType) -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) vLLM's OpenAI server picks for this GPU.

    From EngineArgs defaults: >= 160 GiB devices 16384/1024; >= 70 GiB devices other
    than A100 8192/1024; everything else 2048/256.
    """
    total = gpu.cuda_total_bytes
    if total >= 160 * GIB:
        return 16384, 1024
    if total >= 70 * GIB and "a100" not in gpu.name.lower():
        return 8192, 1024
    return 2048, 256


@dataclass(frozen=True)
class StageFit:
    """One GPU of one pipeline stage under a layout."""

    layers: int
    weight_bytes: int
    reserve_bytes: int
    kv_budget_bytes: int
    kv_bytes_per_token: int
    kv_tokens: int


@dataclass(frozen=True)
class LayoutFit:
    """How a (tensor, pipeline) layout uses memory; `fits` when it serves the target."""

    tensor_parallel_size: int
    pipeline_parallel_size: int
    nodes: int
    gpus_per_node: int
    stages: tuple[StageFit, ...]
    required_tokens: int

    @property
    def gpus(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @property
    def weight_bytes_per_gpu(self) -> int:
        return max(s.weight_bytes for s in self.stages)

    @property
    def kv_cache_tokens(self) -> int:
        return min(s.kv_tokens for s in self.stages)

    @property
    def weights_fit(self) -> bool:
        return all(s.kv_budget_bytes > 0 for s in self.stages)

    @property
    def fits(self) -> bool:
        return self.weights_fit and self.kv_cache_tokens >= self.required_tokens

    def describe(self) -> str:
        tp, pp = self.tensor_parallel_size, self.pipeline_parallel_size
        if pp == 1:
            return f"tensor parallel {tp} on one node"
        if self.nodes == 1:
            return f"tensor parallel {tp} x pipeline parallel {pp} on one node"
        if pp == self.nodes:
            return (f"tensor parallel {tp} within each of {self.nodes} nodes and pipeline "
                    f"parallel {pp} across them")
        return f"tensor parallel {tp} x pipeline parallel {pp} on {self.nodes} nodes"


@dataclass(frozen=True)
class Plan:
    """The chosen layout and why; `to_json()` is what the CLI prints and status carries."""

    tensor_parallel_size: int
    pipeline_parallel_size: int
    gpus: int
    nodes: int
    weight_bytes_per_gpu: int
    kv_cache_tokens: int
    reason: str
    gpus_per_node: int = 0
    kv_cache_bytes_per_token: int = 0
    max_model_len: int = 0
    concurrency_target: int = 1
    gpu_type: str = ""
    dtype: str = ""
    quantization: str | None = None
    total_weight_bytes: int = 0
    parameters: int = 0

    @property
    def max_concurrency(self) -> float:
        """Full-length requests the KV cache holds at once."""
        return self.kv_cache_tokens / self.max_model_len if self.max_model_len else 0.0

    def to_json(self) -> dict:
        return {
            "tensorParallelSize": self.tensor_parallel_size,
            "pipelineParallelSize": self.pipeline_parallel_size,
            "gpus": self.gpus,
            "nodes": self.nodes,
            "gpusPerNode": self.gpus_per_node,
            "weightBytesPerGpu": self.weight_bytes_per_gpu,
            "kvCacheTokens": self.kv_cache_tokens,
            "kvCacheBytesPerToken": self.kv_cache_bytes_per_token,
            "maxModelLen": self.max_model_len,
            "concurrencyTarget": self.concurrency_target,
            "maxConcurrency": round(self.max_concurrency, 2),
            "gpuType": self.gpu_type,
            "dtype": self.dtype,
            "quantization": self.quantization,
            "totalWeightBytes": self.total_weight_bytes,
            "parameters": self.parameters,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class _Settings:
    dtype: str
    scheme: QuantScheme | None
    storage: Storage
    kv_cache_dtype: str
    kv_dtype_bytes: int
    utilization: float
    budget_bytes: int
    max_model_len: int
    required_tokens: int
    max_num_batched_tokens: int
    max_num_seqs: int
    reserve: MemoryReserve = field(default=DEFAULT_RESERVE)


# ----------------------------------------------------------------------------- validation

def tensor_parallel_problem(model: ModelFacts, tp: int, scheme: QuantScheme | None = None) -> str | None:
    """Why vLLM cannot shard this model `tp` ways, or None when it can."""
    heads = model.num_attention_heads
    if heads % tp:
        return f"attention heads ({heads}) not divisible by tensor parallel size {tp}"
    if not model.kv_cache_is_latent:
        kv = model.num_kv_heads
        if kv % tp and tp % kv:
            return (f"{kv} KV heads can be neither split nor replicated evenly over "
                    f"tensor parallel size {tp}")
    for what, size in model.tp_divisible:
        if size % tp:
            return f"{what} ({size}) not divisible by tensor parallel size {tp}"
    if scheme and scheme.group_size and tp > 1:
        for what, size in model.tp_group_aligned:
            if size % tp == 0 and (size // tp) % scheme.group_size:
                return (f"{what} ({size}) split {tp} ways is {size // tp}, not a multiple of the "
                        f"{scheme.method} group size {scheme.group_size}")
    return None


def valid_tensor_parallel_sizes(model: ModelFacts, limit: int, scheme: QuantScheme | None = None) -> list[int]:
    return [tp for tp in range(1, limit + 1) if tensor_parallel_problem(model, tp, scheme) is None]


def place(tp: int, pp: int, gpus_per_node: int) -> tuple[int, int] | None:
    """(nodes, GPUs used per node) for a layout: TP inside a node, whole stages per node,
    the same count on every node; None when a TP group is wider than a node."""
    if tp > gpus_per_node:
        return None
    for nodes in range(1, pp + 1):
        if pp % nodes == 0 and tp * (pp // nodes) <= gpus_per_node:
            return nodes, tp * (pp // nodes)
    return None  # unreachable: nodes == pp always places


# ----------------------------------------------------------------------------- evaluation

def _resolve(model: ModelFacts, gpu: GpuType, *, dtype: str, quantization: str | None,
             kv_cache_dtype: str, max_model_len: int | None, gpu_memory_utilization: float,
             concurrency_target: int, max_num_seqs: int | None,
             max_num_batched_tokens: int | None, reserve: MemoryReserve) -> _Settings:
    if isinstance(gpu_memory_utilization, bool) or not isinstance(gpu_memory_utilization, (int, float)) \
            or not 0 < gpu_memory_utilization <= 1:
        raise PlanError("InvalidGpuMemoryUtilization",
                        f"gpuMemoryUtilization must be in (0, 1], got {gpu_memory_utilization!r}")
    if not _positive_int(concurrency_target):
        raise PlanError("InvalidConcurrencyTarget",
                        f"concurrency target must be a positive integer, got {concurrency_target!r}")
    serving_dtype = resolve_serving_dtype(dtype, model.checkpoint_dtype, bf16_supported=gpu.bf16)

    scheme = model.quantization
    if quantization:
        if scheme is not None:
            if not same_family(quantization, scheme.method):
                raise PlanError(
                    "QuantizationMismatch",
                    f"the checkpoint is quantized with {scheme.method}; quantization "
                    f"{quantization!r} cannot be applied to it",
                )
        else:
            scheme = scheme_for_requested(quantization)
    if scheme is not None and scheme.method in ("fp8", "nvfp4", "mxfp4") and not gpu.fp8:
        raise PlanError("UnsupportedQuantization",
                        f"{gpu.name} (compute capability %d.%d) cannot run {scheme.method} weights"
                        % gpu.compute_capability)

    if max_model_len is None:
        max_model_len = model.default_max_model_len
    elif not _positive_int(max_model_len):
        raise PlanError("InvalidMaxModelLen", f"maxModelLen must be a positive integer, got {max_model_len!r}")
    elif max_model_len > model.derived_max_model_len:
        raise PlanError(
            "MaxModelLenTooLarge",
            f"maxModelLen {max_model_len} exceeds the model's context length "
            f"{model.derived_max_model_len} from its config",
        )
    default_tokens, default_seqs = vllm_default_batch(gpu)
    for name, value in (("max_num_seqs", max_num_seqs), ("max_num_batched_tokens", max_num_batched_tokens)):
        if value is not None and not _positive_int(value):
            raise PlanError("InvalidModelConfig", f"{name} must be a positive integer, got {value!r}")
    return _Settings(
        dtype=serving_dtype,
        scheme=scheme,
        storage=Storage.of(serving_dtype, scheme),
        kv_cache_dtype=kv_cache_dtype,
        kv_dtype_bytes=kv_cache_dtype_bytes(kv_cache_dtype, serving_dtype),
        utilization=gpu_memory_utilization,
        budget_bytes=math.floor(gpu.cuda_total_bytes * gpu_memory_utilization),
        max_model_len=max_model_len,
        required_tokens=max_model_len * concurrency_target,
        # vLLM's profile run covers at least one full-length prefill chunk of the batch budget.
        max_num_batched_tokens=max_num_batched_tokens or default_tokens,
        max_num_seqs=max_num_seqs or default_seqs,
        reserve=reserve,
    )


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _activation_bytes(model: ModelFacts, tp: int, last_stage: bool, s: _Settings) -> int:
    act = DTYPE_BYTES[s.dtype]
    forward = s.max_num_batched_tokens * act * (2 * model.hidden_size + 2 * model.ffn_activation_width / tp)
    sampler = s.max_num_seqs * model.padded_vocab_size * s.reserve.sampler_bytes_per_logit if last_stage else 0
    return int(forward + sampler)


def kv_bytes_per_token(model: ModelFacts, kv_dtype_bytes: int, tp: int = 1, layers: int | None = None) -> int:
    """KV-cache bytes one token takes on one TP rank for `layers` layers (default all)."""
    layers = model.num_layers if layers is None else layers
    elements = model.kv_elements_per_token_per_layer * kv_head_fraction(model, tp)
    return int(round(layers * elements * kv_dtype_bytes))


def _evaluate(model: ModelFacts, tp: int, pp: int, nodes: int, per_node: int, s: _Settings) -> LayoutFit:
    weights = weight_bytes_per_stage(model, tp, pp, s.storage)
    non_torch = s.reserve.non_torch_single_gpu if tp * pp == 1 else s.reserve.non_torch_multi_gpu
    stages = []
    for index, (start, end) in enumerate(pipeline_stages(model.num_layers, pp)):
        reserve = _activation_bytes(model, tp, index == pp - 1, s) + non_torch + s.reserve.cuda_graphs
        budget = s.budget_bytes - weights[index] - reserve
        per_token = kv_bytes_per_token(model, s.kv_dtype_bytes, tp, end - start)
        tokens = 0
        if budget > 0 and per_token > 0:
            tokens = budget // per_token // KV_BLOCK_TOKENS * KV_BLOCK_TOKENS
        stages.append(StageFit(end - start, weights[index], reserve, budget, per_token, tokens))
    return LayoutFit(tp, pp, nodes, per_node, tuple(stages), s.required_tokens)


def evaluate_layout(model: ModelFacts, gpu: GpuType, gpus_per_node: int, tensor_parallel_size: int,
                    pipeline_parallel_size: int, *, dtype: str = "auto", quantization: str | None = None,
                    kv_cache_dtype: str = "auto", max_model_len: int | None = None,
                    gpu_memory_utilization: float = 0.9, concurrency_target: int = 1,
                    max_num_seqs: int | None = None, max_num_batched_tokens: int | None = None,
                    reserve: MemoryReserve = DEFAULT_RESERVE) -> LayoutFit:
    """Memory use of one given layout, without judging it (tests and diagnostics)."""
    s = _resolve(model, gpu, dtype=dtype, quantization=quantization, kv_cache_dtype=kv_cache_dtype,
                 max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
                 concurrency_target=concurrency_target, max_num_seqs=max_num_seqs,
                 max_num_batched_tokens=max_num_batched_tokens, reserve=reserve)
    placed = place(tensor_parallel_size, pipeline_parallel_size, gpus_per_node) or \
        (pipeline_parallel_size, tensor_parallel_size)
    return _evaluate(model, tensor_parallel_size, pipeline_parallel_size, *placed, s)


# ----------------------------------------------------------------------------- search

def _candidates(model: ModelFacts, gpus_per_node: int, tp_fixed: int | None, pp_fixed: int | None,
                max_nodes: int | None, scheme: QuantScheme | None) -> list[tuple[int, int, int, int]]:
    """Layouts (tp, pp, nodes, gpus per node) in the order they are tried.

    When both sizes are ours to choose we follow vLLM's guidance: tensor parallelism
    inside one node (each valid TP size, smallest first); when the widest TP size a node
    allows is not enough, that TP group is repeated as pipeline stages, across nodes
    (one stage per node when the TP group fills a node). Pipeline stages share a node
    only when no TP size the model allows fills it (e.g. 28 heads on 8-GPU nodes).
    A given size is kept and the other one searched. Order: fewest GPUs, then fewest
    nodes, then the widest TP.
    """
    valid = valid_tensor_parallel_sizes(model, gpus_per_node, scheme)
    pairs: list[tuple[int, int]] = []
    if tp_fixed is None and pp_fixed is None:
        pairs += [(tp, 1) for tp in valid]
        pairs += [(valid[-1], pp) for pp in range(2, model.num_layers + 1)]
    elif tp_fixed is None:
        pairs += [(tp, pp_fixed) for tp in valid]
    elif pp_fixed is None:
        pairs += [(tp_fixed, pp) for pp in range(1, model.num_layers + 1)]
    else:
        pairs.append((tp_fixed, pp_fixed))
    layouts = []
    for tp, pp in pairs:
        placed = place(tp, pp, gpus_per_node)
        if placed is None or (max_nodes is not None and placed[0] > max_nodes):
            continue
        layouts.append((tp, pp, *placed))
    layouts.sort(key=lambda layout: (layout[0] * layout[1], layout[2], -layout[0]))
    return layouts


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
    if not _positive_int(gpus_per_node):
        raise PlanError("InvalidParallelSize", f"GPUs per node must be a positive integer, got {gpus_per_node!r}")
    if max_nodes is not None and not _positive_int(max_nodes):
        raise PlanError("InvalidParallelSize", f"maxNodes must be a positive integer, got {max_nodes!r}")
    s = _resolve(model, gpu, dtype=dtype, quantization=quantization, kv_cache_dtype=kv_cache_dtype,
                 max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
                 concurrency_target=concurrency_target, max_num_seqs=max_num_seqs,
                 max_num_batched_tokens=max_num_batched_tokens, reserve=reserve)
    tp_fixed, pp_fixed = tensor_parallel_size, pipeline_parallel_size
    _check_explicit(model, gpus_per_node, tp_fixed, pp_fixed, max_nodes, s)

    plan, tried = _first_fit(model, gpu, gpus_per_node, tp_fixed, pp_fixed, max_nodes, s)
    if plan is None:
        raise _no_fit(model, gpu, gpus_per_node, tried, s, tp_fixed, pp_fixed, max_nodes)
    return plan


def _first_fit(model: ModelFacts, gpu: GpuType, gpus_per_node: int, tp_fixed: int | None,
               pp_fixed: int | None, max_nodes: int | None, s: _Settings) -> tuple[Plan | None, list[LayoutFit]]:
    tried: list[LayoutFit] = []
    for tp, pp, nodes, per_node in _candidates(model, gpus_per_node, tp_fixed, pp_fixed, max_nodes, s.scheme):
        fit = _evaluate(model, tp, pp, nodes, per_node, s)
        if fit.fits:
            return _plan(model, gpu, fit, s, tried[-1] if tried else None, tp_fixed, pp_fixed), tried
        tried.append(fit)
    return None, tried


def _check_explicit(model: ModelFacts, gpus_per_node: int, tp: int | None, pp: int | None,
                    max_nodes: int | None, s: _Settings) -> None:
    if tp is not None:
        if not _positive_int(tp):
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
        if not _positive_int(pp):
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


# ----------------------------------------------------------------------------- explanations

def _gpus(count: int, gpu: GpuType) -> str:
    return f"{count} {gpu.name} GPU{'' if count == 1 else 's'}"


def _gib(value: float) -> str:
    return f"{value / GIB:.1f} GiB"


def _count(params: int) -> str:
    if params >= 10**9:
        return f"{params / 10**9:.1f}B"
    return f"{params / 10**6:.0f}M"


def _model_summary(model: ModelFacts, s: _Settings, total_bytes: int) -> str:
    storage = s.scheme.method if s.scheme else s.dtype
    return f"{model.display_name} ({_count(model.total_params)} parameters, {_gib(total_bytes)} as {storage})"


def _target(s: _Settings) -> str:
    concurrency = s.required_tokens // s.max_model_len
    noun = "sequence" if concurrency == 1 else "sequences"
    return f"{s.max_model_len:,} tokens x {concurrency} {noun}"


def _shortfall(fit: LayoutFit) -> str:
    if not fit.weights_fit:
        return f"{fit.gpus} GPU{'s' if fit.gpus > 1 else ''} cannot hold the weights and runtime reserve"
    return (f"{fit.gpus} GPU{'s' if fit.gpus > 1 else ''} ({fit.describe()}) would leave only "
            f"{fit.kv_cache_tokens:,} KV-cache tokens")


def _plan(model: ModelFacts, gpu: GpuType, fit: LayoutFit, s: _Settings, previous: LayoutFit | None,
          tp_fixed: int | None, pp_fixed: int | None) -> Plan:
    total = sum(weight_bytes_per_stage(model, 1, 1, s.storage))
    given = []
    if tp_fixed:
        given.append("tensor parallel size")
    if pp_fixed:
        given.append("pipeline parallel size")
    how = fit.describe() + (f" (the requested {' and '.join(given)})" if given else "")
    where = "at most " if fit.pipeline_parallel_size > 1 else ""
    reason = (f"{_model_summary(model, s, total)} needs {_gpus(fit.gpus, gpu)}: {how} puts {where}{_gib(fit.weight_bytes_per_gpu)} of weights "
              f"on {'any' if fit.pipeline_parallel_size > 1 else 'each'} GPU and leaves {fit.kv_cache_tokens:,} KV-cache tokens at "
              f"{_utilization(s, gpu)} memory utilization, enough for {_target(s)}")
    if previous is not None and previous.gpus < fit.gpus:
        reason += f"; {_shortfall(previous)}"
    reason += "."
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


def _utilization(s: _Settings, gpu: GpuType) -> str:
    return f"{s.utilization:.0%}"


def _no_fit(model: ModelFacts, gpu: GpuType, gpus_per_node: int, tried: list[LayoutFit], s: _Settings,
            tp_fixed: int | None, pp_fixed: int | None, max_nodes: int | None) -> PlanError:
    total = sum(weight_bytes_per_stage(model, 1, 1, s.storage))
    summary = _model_summary(model, s, total)
    if not tried:
        return PlanError("ModelTooLarge", f"{summary}: no layout of {gpu.name} GPUs is allowed by the given sizes")
    # The layout with the most room per GPU tells what is missing.
    best = max(tried, key=lambda f: (f.weights_fit, f.kv_cache_tokens, -f.weight_bytes_per_gpu))
    if max_nodes is not None and tp_fixed is None and pp_fixed is None:
        needed = _plan_with_fewest_nodes_above(model, gpu, gpus_per_node, max_nodes, s)
        if needed is not None:
            return PlanError(
                "TooManyNodes",
                f"{summary} needs {needed.nodes} nodes of {_gpus(gpus_per_node, gpu)} "
                f"({needed.gpus} GPUs in all); maxNodes is {max_nodes}",
            )
    if not best.weights_fit:
        return PlanError(
            "ModelTooLarge",
            f"{summary} does not fit: even {best.describe()} ({_gpus(best.gpus, gpu)}) needs "
            f"{_gib(best.weight_bytes_per_gpu + max(st.reserve_bytes for st in best.stages))} of weights "
            f"and runtime reserve per GPU, more than the {_gib(s.budget_bytes)} "
            f"{_utilization(s, gpu)} memory utilization allows",
        )
    return PlanError(
        "InsufficientKvCache",
        f"{summary}: the roomiest allowed layout, {best.describe()} ({_gpus(best.gpus, gpu)}), "
        f"leaves {best.kv_cache_tokens:,} KV-cache tokens, fewer than the {s.required_tokens:,} needed "
        f"for {_target(s)}; lower maxModelLen or the concurrency target, or allow more GPUs",
    )


def _plan_with_fewest_nodes_above(model: ModelFacts, gpu: GpuType, gpus_per_node: int, max_nodes: int,
                                  s: _Settings) -> Plan | None:
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
