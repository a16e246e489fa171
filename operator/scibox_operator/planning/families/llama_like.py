"""Llama-shaped decoders: Llama, Mistral, Mixtral, Qwen 2/3 (and their MoE), Phi-3, Gemma 1/2/3.

One counting rule with switches per family (`LlamaLike`): norms per layer, QK norm,
which biases exist, tied embeddings by default, Gemma's default head width, and the
kind of mixture-of-experts MLP (`moe.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config_reader import ConfigReader
from ..errors import PlanError
from ..facts import LayerParams, ModelFacts
from .common import common_text_facts, tensor_parallel_constraints
from .moe import moe_block


@dataclass(frozen=True)
class LlamaLike:
    """Switches that distinguish the Llama-shaped decoder families."""

    norms_per_layer: int = 2
    qk_norm: bool = False
    qkv_bias: str | bool | tuple[str, bool] = False   # a config key, (key, default), or a fixed answer
    o_bias: str | bool = False
    mlp_bias: str | bool = False
    tie_default: bool = False
    moe: str | None = None            # "mixtral", "qwen2_moe", "qwen3_moe"
    head_dim_default: int | None = None


LLAMA_LIKE: dict[str, LlamaLike] = {
    "llama": LlamaLike(qkv_bias="attention_bias", o_bias="attention_bias", mlp_bias="mlp_bias"),
    "mistral": LlamaLike(),
    "mixtral": LlamaLike(moe="mixtral"),
    "qwen2": LlamaLike(qkv_bias=True),
    "qwen2_moe": LlamaLike(qkv_bias=("qkv_bias", True), moe="qwen2_moe"),
    "qwen3": LlamaLike(qk_norm=True, qkv_bias="attention_bias", o_bias="attention_bias"),
    "qwen3_moe": LlamaLike(qk_norm=True, qkv_bias="attention_bias", o_bias="attention_bias",
                           moe="qwen3_moe"),
    "phi3": LlamaLike(),
    "gemma": LlamaLike(qkv_bias="attention_bias", o_bias="attention_bias", tie_default=True,
                       head_dim_default=256),
    "gemma2": LlamaLike(norms_per_layer=4, qkv_bias="attention_bias", o_bias="attention_bias",
                        tie_default=True, head_dim_default=256),
    "gemma3_text": LlamaLike(norms_per_layer=4, qk_norm=True, qkv_bias="attention_bias",
                             o_bias="attention_bias", tie_default=True, head_dim_default=256),
}


def _flag(cfg: ConfigReader, spec: str | bool | tuple[str, bool]) -> bool:
    if isinstance(spec, bool):
        return spec
    key, default = spec if isinstance(spec, tuple) else (spec, False)
    return cfg.bool(key, default)


def llama_like_facts(cfg: ConfigReader, model_type: str, architecture: str) -> ModelFacts:
    fam = LLAMA_LIKE[model_type]
    H = cfg.int("hidden_size")
    L = cfg.int("num_hidden_layers")
    nh = cfg.int("num_attention_heads")
    nkv = cfg.int("num_key_value_heads", default=nh)
    V = cfg.int("vocab_size")
    I = cfg.int("intermediate_size")
    if cfg.raw("head_dim") is not None:
        hd = cfg.int("head_dim")
    elif fam.head_dim_default:
        hd = fam.head_dim_default
    else:
        if H % nh:
            raise PlanError("InvalidModelConfig", f"hidden_size {H} is not a multiple of num_attention_heads {nh}")
        hd = H // nh
    if nh % nkv:
        raise PlanError("InvalidModelConfig",
                        f"num_attention_heads {nh} is not a multiple of num_key_value_heads {nkv}")
    tied = cfg.bool("tie_word_embeddings", fam.tie_default)
    qkv_bias, o_bias, mlp_bias = _flag(cfg, fam.qkv_bias), _flag(cfg, fam.o_bias), _flag(cfg, fam.mlp_bias)

    attention = LayerParams(
        sharded_linear=H * nh * hd + nh * hd * H,
        kv_linear=2 * H * nkv * hd,
        sharded_other=nh * hd if qkv_bias else 0,
        kv_other=2 * nkv * hd if qkv_bias else 0,
        replicated_other=(H if o_bias else 0) + (2 * hd if fam.qk_norm else 0) + fam.norms_per_layer * H,
    )
    dense_mlp = LayerParams(sharded_linear=3 * H * I,
                            sharded_other=2 * I if mlp_bias else 0,
                            replicated_other=H if mlp_bias else 0)

    moe = moe_block(cfg, fam.moe, H, I, L)
    sparse_layers, moe_I, shared_I = moe.sparse_layers, moe.expert_intermediate_size, moe.shared_expert_intermediate_size
    layers = tuple(attention + (moe.mlp if i in sparse_layers else dense_mlp) for i in range(L))

    divisible, aligned = tensor_parallel_constraints(
        nh, nh * hd, intermediate=I if len(sparse_layers) < L else None, expert=moe_I or None,
        shared_expert=shared_I or None)
    ffn_width = max(I if len(sparse_layers) < L else 0,
                    (moe.experts_per_token * moe_I if moe_I else 0) + (shared_I or 0))

    return ModelFacts(
        architecture=architecture, model_type=model_type, num_layers=L, hidden_size=H,
        num_attention_heads=nh, num_kv_heads=nkv, head_dim=hd, vocab_size=V,
        kv_elements_per_token_per_layer=2 * nkv * hd, kv_cache_is_latent=False,
        layers=layers, embedding_params=V * H, lm_head_params=0 if tied else V * H,
        tie_word_embeddings=tied, last_stage_replicated_params=H,
        num_experts=moe.num_experts, experts_per_token=moe.experts_per_token, ffn_activation_width=ffn_width,
        tp_divisible=divisible, tp_group_aligned=aligned,
        **common_text_facts(cfg, model_type),
    )
