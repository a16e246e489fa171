"""What a plan is computed under: the options checked and resolved against model and GPU.

vLLM's batch defaults for a GPU, and the memory it reserves besides weights and KV cache
(`MemoryReserve`, calibrated as memory.py's docstring shows), fill what the spec leaves out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .errors import PlanError
from .facts import ModelFacts
from .gpus import GIB, GpuType
from .numerics import QuantScheme, kv_cache_dtype_bytes, resolve_serving_dtype, same_family, scheme_for_requested
from .weights import Storage


@dataclass(frozen=True)
class MemoryReserve:
    """Per-GPU memory vLLM keeps besides weights and KV cache (calibration: see memory.py)."""

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
class Settings:
    """Resolved serving options: dtype, weight storage, KV dtype, memory budget, batch sizes."""

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


def resolve_settings(model: ModelFacts, gpu: GpuType, *, dtype: str, quantization: str | None,
                     kv_cache_dtype: str, max_model_len: int | None, gpu_memory_utilization: float,
                     concurrency_target: int, max_num_seqs: int | None,
                     max_num_batched_tokens: int | None, reserve: MemoryReserve) -> Settings:
    """The options checked (PlanError with a CamelCase reason) and resolved for this GPU."""
    if isinstance(gpu_memory_utilization, bool) or not isinstance(gpu_memory_utilization, (int, float)) \
            or not 0 < gpu_memory_utilization <= 1:
        raise PlanError("InvalidGpuMemoryUtilization",
                        f"gpuMemoryUtilization must be in (0, 1], got {gpu_memory_utilization!r}")
    if not positive_int(concurrency_target):
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
    elif not positive_int(max_model_len):
        raise PlanError("InvalidMaxModelLen", f"maxModelLen must be a positive integer, got {max_model_len!r}")
    elif max_model_len > model.derived_max_model_len:
        raise PlanError(
            "MaxModelLenTooLarge",
            f"maxModelLen {max_model_len} exceeds the model's context length "
            f"{model.derived_max_model_len} from its config",
        )
    default_tokens, default_seqs = vllm_default_batch(gpu)
    for name, value in (("max_num_seqs", max_num_seqs), ("max_num_batched_tokens", max_num_batched_tokens)):
        if value is not None and not positive_int(value):
            raise PlanError("InvalidModelConfig", f"{name} must be a positive integer, got {value!r}")
    return Settings(
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


def positive_int(value) -> bool:
    """A true int above zero (bool is not an int here)."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
