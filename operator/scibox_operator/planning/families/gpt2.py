"""GPT-2: fused-QKV attention with biases and learned position embeddings, tied LM head."""

from __future__ import annotations

from ..config_reader import ConfigReader
from ..errors import PlanError
from ..facts import LayerParams, ModelFacts
from .common import common_text_facts


def gpt2_facts(cfg: ConfigReader, architecture: str) -> ModelFacts:
    D = cfg.int("n_embd", "hidden_size")
    L = cfg.int("n_layer", "num_hidden_layers")
    nh = cfg.int("n_head", "num_attention_heads")
    V = cfg.int("vocab_size")
    P = cfg.int("n_positions", "max_position_embeddings")
    inner = cfg.int("n_inner", default=4 * D)
    if D % nh:
        raise PlanError("InvalidModelConfig", f"n_embd {D} is not a multiple of n_head {nh}")
    layer = LayerParams(
        sharded_linear=D * D + D * D + D * inner + inner * D,   # q, o, c_fc, mlp c_proj
        kv_linear=2 * D * D,
        sharded_other=D + inner,                                 # q bias, c_fc bias
        kv_other=2 * D,
        replicated_other=4 * D + D + D,                          # ln_1, ln_2, row-parallel biases
    )
    facts = common_text_facts(cfg, "gpt2")
    return ModelFacts(
        architecture=architecture, model_type="gpt2", num_layers=L, hidden_size=D,
        num_attention_heads=nh, num_kv_heads=nh, head_dim=D // nh, vocab_size=V,
        kv_elements_per_token_per_layer=2 * D, kv_cache_is_latent=False,
        layers=(layer,) * L, embedding_params=V * D, lm_head_params=0, tie_word_embeddings=True,
        first_stage_replicated_params=P * D, last_stage_replicated_params=2 * D,
        ffn_activation_width=inner,
        tp_divisible=(("attention heads", nh), ("MLP width", inner)),
        tp_group_aligned=(("attention width", D), ("MLP width", inner)),
        **facts,
    )
