"""What the planner knows about a model: parameter counts filed by tensor-parallel placement.

Each parameter is filed by how vLLM places it across tensor-parallel ranks:

- sharded: column/row-parallel linear layers, vocab-parallel embeddings, fused MoE
  experts: each rank holds 1/tp;
- kv: key/value projections: split by KV head, but a rank always holds at least one
  head, so when tp exceeds the KV heads they are replicated (vLLM's QKVParallelLinear);
- replicated: norms, MoE routers, MLA's down-projections (ReplicatedLinear) and the
  bias of row-parallel layers: every rank holds them whole.

"linear" parameters are weight matrices a quantization scheme compresses; "other"
parameters (biases, norms, routers) stay in the serving dtype.

The facts are data only; `facts_from_config.model_facts_from_config` derives them from a
Hugging Face config.json (one module per model family under `families/`).
"""

from __future__ import annotations

from dataclasses import dataclass

from .numerics import QuantScheme

# vLLM pads embedding and LM-head rows to a multiple of 64 per model
# (DEFAULT_VOCAB_PADDING_SIZE in vllm/model_executor/layers/vocab_parallel_embedding.py).
VOCAB_PADDING = 64


@dataclass(frozen=True)
class LayerParams:
    """Parameter counts of one decoder layer, filed by tensor-parallel placement."""

    sharded_linear: int = 0
    kv_linear: int = 0
    replicated_linear: int = 0
    sharded_other: int = 0
    kv_other: int = 0
    replicated_other: int = 0
    routed_expert_params: int = 0  # part of sharded_linear; only top-k of them are active

    @property
    def total(self) -> int:
        return (self.sharded_linear + self.kv_linear + self.replicated_linear
                + self.sharded_other + self.kv_other + self.replicated_other)

    def __add__(self, other: LayerParams) -> LayerParams:
        return LayerParams(*(a + b for a, b in zip(_fields(self), _fields(other), strict=True)))


def _fields(p: LayerParams) -> tuple[int, ...]:
    return (p.sharded_linear, p.kv_linear, p.replicated_linear, p.sharded_other,
            p.kv_other, p.replicated_other, p.routed_expert_params)


@dataclass(frozen=True)
class ModelFacts:
    """What the planner needs to know about a model, all derived from its config."""

    architecture: str
    model_type: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    # KV cache: values stored per token per layer across all KV heads (2*kv*head_dim),
    # or MLA's compressed latent (kv_lora_rank + rope dim), which every TP rank stores whole.
    kv_elements_per_token_per_layer: int
    kv_cache_is_latent: bool
    layers: tuple[LayerParams, ...]
    embedding_params: int          # vocab-parallel input embedding (first PP stage)
    lm_head_params: int            # the LM head's own matrix, 0 when tied to the embedding
    tie_word_embeddings: bool
    first_stage_replicated_params: int = 0  # learned position embeddings, OPT's project_in
    last_stage_replicated_params: int = 0   # final norm, OPT's project_out
    encoder_params: int = 0        # multimodal encoder + projector (first PP stage, sharded)
    derived_max_model_len: int = 2048
    default_max_model_len: int = 2048   # what vLLM uses when --max-model-len is not given
    checkpoint_dtype: str = "bfloat16"
    quantization: QuantScheme | None = None
    num_experts: int = 0
    experts_per_token: int = 0
    # Widest per-token FFN activation (dense intermediate, or top-k x expert width).
    ffn_activation_width: int = 0
    # Sizes tensor parallelism must divide, and sizes whose per-rank shard must hold
    # whole quantization groups: (description, size).
    tp_divisible: tuple[tuple[str, int], ...] = ()
    tp_group_aligned: tuple[tuple[str, int], ...] = ()
    # From model.safetensors.index.json: bytes of the weights vLLM loads, when known.
    safetensors_weight_bytes: int | None = None
    name: str | None = None

    @property
    def total_params(self) -> int:
        return (sum(layer.total for layer in self.layers) + self.embedding_params
                + self.lm_head_params + self.first_stage_replicated_params
                + self.last_stage_replicated_params + self.encoder_params)

    @property
    def active_params(self) -> int:
        """Parameters one token passes through (MoE: only its top-k routed experts)."""
        if not self.num_experts:
            return self.total_params
        inactive = sum(layer.routed_expert_params for layer in self.layers)
        inactive = inactive * (self.num_experts - self.experts_per_token) // self.num_experts
        return self.total_params - inactive

    @property
    def padded_vocab_size(self) -> int:
        return -(-self.vocab_size // VOCAB_PADDING) * VOCAB_PADDING

    @property
    def display_name(self) -> str:
        return self.name or self.architecture

    def to_json(self) -> dict:
        return {
            "architecture": self.architecture,
            "modelType": self.model_type,
            "parameters": self.total_params,
            "activeParameters": self.active_params,
            "layers": self.num_layers,
            "attentionHeads": self.num_attention_heads,
            "kvHeads": self.num_kv_heads,
            "headDim": self.head_dim,
            "vocabSize": self.vocab_size,
            "kvCacheIsLatent": self.kv_cache_is_latent,
            "maxModelLen": self.default_max_model_len,
            "checkpointDtype": self.checkpoint_dtype,
            "quantization": self.quantization.to_json() if self.quantization else None,
            "safetensorsWeightBytes": self.safetensors_weight_bytes,
        }
