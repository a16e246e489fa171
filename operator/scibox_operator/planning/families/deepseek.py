"""DeepSeek-V2/V3: multi-head latent attention (MLA) and shared + routed experts.

MLA's down-projections are replicated linear layers, and its KV cache is one compressed
latent per token per layer that every tensor-parallel rank stores whole.
"""

from __future__ import annotations

from ..config_reader import ConfigReader
from ..facts import LayerParams, ModelFacts
from .common import common_text_facts, tensor_parallel_constraints


def deepseek_facts(cfg: ConfigReader, model_type: str, architecture: str) -> ModelFacts:
    """DeepSeek-V2/V3: multi-head latent attention (MLA) and shared + routed experts."""
    H = cfg.int("hidden_size")
    L = cfg.int("num_hidden_layers")
    nh = cfg.int("num_attention_heads")
    V = cfg.int("vocab_size")
    I = cfg.int("intermediate_size")
    q_lora = cfg.opt_int("q_lora_rank", default=1536)
    kv_lora = cfg.int("kv_lora_rank", default=512)
    nope = cfg.int("qk_nope_head_dim", default=128)
    rope = cfg.int("qk_rope_head_dim", default=64)
    v_dim = cfg.int("v_head_dim", default=128)
    moe_I = cfg.int("moe_intermediate_size", default=1407 if model_type == "deepseek_v2" else 2048)
    E = cfg.opt_int("n_routed_experts", default=64 if model_type == "deepseek_v2" else 256, minimum=0) or 0
    shared = cfg.opt_int("n_shared_experts", default=2 if model_type == "deepseek_v2" else 1, minimum=0) or 0
    top_k = cfg.int("num_experts_per_tok", default=6 if model_type == "deepseek_v2" else 8, minimum=0)
    first_dense = cfg.int("first_k_dense_replace", default=0 if model_type == "deepseek_v2" else 3, minimum=0)
    freq = cfg.int("moe_layer_freq", default=1)
    bias = cfg.bool("attention_bias", False)
    tied = cfg.bool("tie_word_embeddings", False)
    qk_dim = nope + rope

    if q_lora is None:
        q = LayerParams(sharded_linear=H * nh * qk_dim)
    else:
        q = LayerParams(replicated_linear=H * q_lora, replicated_other=q_lora + (q_lora if bias else 0),
                        sharded_linear=q_lora * nh * qk_dim)
    attention = q + LayerParams(
        replicated_linear=H * (kv_lora + rope),
        replicated_other=kv_lora + (kv_lora + rope if bias else 0) + (H if bias else 0) + 2 * H,
        sharded_linear=kv_lora * nh * (nope + v_dim) + nh * v_dim * H,
    )
    dense_mlp = LayerParams(sharded_linear=3 * H * I)
    routed = E * 3 * H * moe_I
    moe_mlp = LayerParams(
        sharded_linear=routed + 3 * H * moe_I * shared,
        # Router weight; V3's noaux_tc routing adds a per-expert score-correction bias.
        replicated_other=E * H + (E if model_type == "deepseek_v3" else 0),
        routed_expert_params=routed,
    )
    sparse = {i for i in range(L) if E and i >= first_dense and i % freq == 0}
    layers = tuple(attention + (moe_mlp if i in sparse else dense_mlp) for i in range(L))
    divisible, aligned = tensor_parallel_constraints(nh, nh * v_dim, intermediate=I if len(sparse) < L else None,
                                                     expert=moe_I if sparse else None)
    return ModelFacts(
        architecture=architecture, model_type=model_type, num_layers=L, hidden_size=H,
        num_attention_heads=nh, num_kv_heads=1, head_dim=qk_dim, vocab_size=V,
        kv_elements_per_token_per_layer=kv_lora + rope, kv_cache_is_latent=True,
        layers=layers, embedding_params=V * H, lm_head_params=0 if tied else V * H,
        tie_word_embeddings=tied, last_stage_replicated_params=H,
        num_experts=E if sparse else 0, experts_per_token=top_k if sparse else 0,
        ffn_activation_width=max(I if len(sparse) < L else 0,
                                 (top_k + shared) * moe_I if sparse else 0),
        tp_divisible=divisible, tp_group_aligned=aligned,
        **common_text_facts(cfg, model_type),
    )
