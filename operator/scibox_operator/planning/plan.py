"""The planner's answer: the layout chosen, its memory figures and why."""

from __future__ import annotations

from dataclasses import dataclass


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
