"""Weight bytes: of the checkpoint, and of each GPU in a tensor x pipeline layout."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import PlanError
from .facts import LayerParams, ModelFacts
from .numerics import DTYPE_BYTES, QuantScheme

# A safetensors index whose total is this far from the config's estimate describes some
# other checkpoint (or a config that lies): refuse it instead of planning with it.
INDEX_AGREEMENT = (0.67, 1.5)


@dataclass(frozen=True)
class Storage:
    """Bytes per parameter: quantized linear weights, and everything else."""

    linear: float
    other: float

    @classmethod
    def of(cls, dtype: str, scheme: QuantScheme | None) -> Storage:
        other = DTYPE_BYTES[dtype]
        return cls(scheme.bytes_per_weight if scheme else other, other)


def checkpoint_storage(facts: ModelFacts) -> Storage:
    return Storage.of(facts.checkpoint_dtype, facts.quantization)


def checkpoint_bytes_per_param(facts: ModelFacts, *, linear: bool) -> float:
    storage = checkpoint_storage(facts)
    return storage.linear if linear else storage.other


def checkpoint_bytes_of_layer(facts: ModelFacts, layer: LayerParams) -> float:
    return _layer_bytes(layer, checkpoint_storage(facts), tp=1, kv_fraction=1.0)


def estimated_checkpoint_bytes(facts: ModelFacts) -> float:
    """The checkpoint's size as the config describes it (embeddings and heads unquantized)."""
    storage = checkpoint_storage(facts)
    layers = sum(_layer_bytes(layer, storage, 1, 1.0) for layer in facts.layers)
    rest = (facts.embedding_params + facts.lm_head_params + facts.first_stage_replicated_params
            + facts.last_stage_replicated_params + facts.encoder_params)
    return layers + rest * storage.other


def index_correction(facts: ModelFacts) -> float:
    """Factor that maps the config's estimate onto the safetensors index's exact size."""
    if not facts.safetensors_weight_bytes:
        return 1.0
    factor = facts.safetensors_weight_bytes / estimated_checkpoint_bytes(facts)
    low, high = INDEX_AGREEMENT
    if not low <= factor <= high:
        raise PlanError(
            "InvalidModelConfig",
            f"the safetensors index says {facts.safetensors_weight_bytes} bytes but the config "
            f"describes about {int(estimated_checkpoint_bytes(facts))}: they are not the same model",
        )
    return factor


def pipeline_stages(num_layers: int, pp: int) -> list[tuple[int, int]]:
    """Layer ranges [start, end) per pipeline stage, as vLLM's get_pp_indices cuts them.

    Layers divide evenly; the remainder goes one each to the stages before the last,
    starting from the second-to-last, which keeps the LM head's stage light.
    """
    sizes = [num_layers // pp] * pp
    for i in range(2, num_layers % pp + 2):
        sizes[-i] += 1
    ranges, start = [], 0
    for size in sizes:
        ranges.append((start, start + size))
        start += size
    return ranges


def kv_head_fraction(facts: ModelFacts, tp: int) -> float:
    """Share of the KV heads (and their K/V projections) one tensor-parallel rank holds."""
    if facts.kv_cache_is_latent:
        return 1.0
    return max(1, facts.num_kv_heads // tp) / facts.num_kv_heads


def _layer_bytes(layer: LayerParams, storage: Storage, tp: int, kv_fraction: float) -> float:
    linear = -(-layer.sharded_linear // tp) + layer.kv_linear * kv_fraction + layer.replicated_linear
    other = -(-layer.sharded_other // tp) + layer.kv_other * kv_fraction + layer.replicated_other
    return linear * storage.linear + other * storage.other


def weight_bytes_per_stage(facts: ModelFacts, tp: int, pp: int, storage: Storage) -> list[int]:
    """Bytes of weights on one GPU of each pipeline stage (all TP ranks of a stage alike)."""
    kv_fraction = kv_head_fraction(facts, tp)
    correction = index_correction(facts)
    rows_per_rank = -(-facts.padded_vocab_size // tp)
    embed_width = facts.embedding_params // facts.vocab_size
    head_width = facts.lm_head_params // facts.vocab_size if facts.lm_head_params else embed_width
    result = []
    for stage, (start, end) in enumerate(pipeline_stages(facts.num_layers, pp)):
        total = sum(_layer_bytes(facts.layers[i], storage, tp, kv_fraction) for i in range(start, end))
        if stage == 0:
            total += rows_per_rank * embed_width * storage.other
            total += facts.first_stage_replicated_params * storage.other
            total += -(-facts.encoder_params // tp) * storage.other
        if stage == pp - 1:
            total += facts.last_stage_replicated_params * storage.other
            # A tied head shares the embedding only when both live on the same stage.
            if facts.lm_head_params or pp > 1:
                total += rows_per_rank * head_width * storage.other
        result.append(int(total * correction))
    return result


def total_weight_bytes(facts: ModelFacts, storage: Storage) -> int:
    """All weights once (as on a single GPU)."""
    return weight_bytes_per_stage(facts, 1, 1, storage)[0]
