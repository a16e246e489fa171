"""How a tensor x pipeline layout uses each GPU's memory, and the KV cache it leaves.

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

from dataclasses import dataclass

from .facts import ModelFacts
from .numerics import DTYPE_BYTES
from .settings import Settings
from .weights import kv_head_fraction, pipeline_stages, weight_bytes_per_stage

# vLLM allocates the KV cache in blocks of 16 tokens (CacheConfig.block_size default).
KV_BLOCK_TOKENS = 16


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


def kv_bytes_per_token(model: ModelFacts, kv_dtype_bytes: int, tp: int = 1, layers: int | None = None) -> int:
    """KV-cache bytes one token takes on one TP rank for `layers` layers (default all)."""
    layers = model.num_layers if layers is None else layers
    elements = model.kv_elements_per_token_per_layer * kv_head_fraction(model, tp)
    return int(round(layers * elements * kv_dtype_bytes))


def activation_bytes(model: ModelFacts, tp: int, last_stage: bool, s: Settings) -> int:
    act = DTYPE_BYTES[s.dtype]
    forward = s.max_num_batched_tokens * act * (2 * model.hidden_size + 2 * model.ffn_activation_width / tp)
    sampler = s.max_num_seqs * model.padded_vocab_size * s.reserve.sampler_bytes_per_logit if last_stage else 0
    return int(forward + sampler)


def evaluate_fit(model: ModelFacts, tp: int, pp: int, nodes: int, per_node: int, s: Settings) -> LayoutFit:
    """Weights, reserve and KV-cache tokens of one GPU per pipeline stage under a layout."""
    weights = weight_bytes_per_stage(model, tp, pp, s.storage)
    non_torch = s.reserve.non_torch_single_gpu if tp * pp == 1 else s.reserve.non_torch_multi_gpu
    stages = []
    for index, (start, end) in enumerate(pipeline_stages(model.num_layers, pp)):
        reserve = activation_bytes(model, tp, index == pp - 1, s) + non_torch + s.reserve.cuda_graphs
        budget = s.budget_bytes - weights[index] - reserve
        per_token = kv_bytes_per_token(model, s.kv_dtype_bytes, tp, end - start)
        tokens = 0
        if budget > 0 and per_token > 0:
            tokens = budget // per_token // KV_BLOCK_TOKENS * KV_BLOCK_TOKENS
        stages.append(StageFit(end - start, weights[index], reserve, budget, per_token, tokens))
    return LayoutFit(tp, pp, nodes, per_node, tuple(stages), s.required_tokens)
