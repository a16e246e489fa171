"""OPT: learned positions (offset by 2), optional input/output projections, tied LM head."""

from __future__ import annotations

from ..config_reader import ConfigReader
from ..errors import PlanError
from ..facts import LayerParams, ModelFacts
from .common import common_text_facts


def opt_facts(cfg: ConfigReader, architecture: str) -> ModelFacts:
    D = cfg.int("hidden_size")
    L = cfg.int("num_hidden_layers")
    nh = cfg.int("num_attention_heads")
    V = cfg.int("vocab_size")
    F = cfg.int("ffn_dim")
    P = cfg.int("max_position_embeddings")
    E = cfg.int("word_embed_proj_dim", default=D)
    bias = cfg.bool("enable_bias", True)
    affine = cfg.bool("layer_norm_elementwise_affine", True)
    final_norm = cfg.bool("do_layer_norm_before", True) and not cfg.bool("_remove_final_layer_norm", False)
    if D % nh:
        raise PlanError("InvalidModelConfig", f"hidden_size {D} is not a multiple of num_attention_heads {nh}")
    norm = 2 * D if affine else 0
    layer = LayerParams(
        sharded_linear=2 * D * D + 2 * D * F,
        kv_linear=2 * D * D,
        sharded_other=(D + F) if bias else 0,
        kv_other=2 * D if bias else 0,
        replicated_other=2 * norm + (2 * D if bias else 0),
    )
    project = 2 * E * D if E != D else 0
    return ModelFacts(
        architecture=architecture, model_type="opt", num_layers=L, hidden_size=D,
        num_attention_heads=nh, num_kv_heads=nh, head_dim=D // nh, vocab_size=V,
        kv_elements_per_token_per_layer=2 * D, kv_cache_is_latent=False,
        layers=(layer,) * L, embedding_params=V * E, lm_head_params=0, tie_word_embeddings=True,
        # OPT's learned positions carry an offset of 2 rows.
        first_stage_replicated_params=(P + 2) * D + project // 2,
        last_stage_replicated_params=(norm if final_norm else 0) + project // 2,
        ffn_activation_width=F,
        tp_divisible=(("attention heads", nh), ("FFN width", F)),
        tp_group_aligned=(("attention width", D), ("FFN width", F)),
        **common_text_facts(cfg, "opt"),
    )
