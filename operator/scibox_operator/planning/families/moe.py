"""The mixture-of-experts MLP of the Llama-shaped MoE families: Mixtral, Qwen2-MoE, Qwen3-MoE.

Routed experts are fused (sharded over tensor-parallel ranks); the router is replicated.
DeepSeek's experts are counted in `deepseek.py` beside its latent attention.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config_reader import ConfigReader
from ..errors import PlanError
from ..facts import LayerParams

MOE_KINDS = ("mixtral", "qwen2_moe", "qwen3_moe")


@dataclass(frozen=True)
class MoeBlock:
    """Which layers carry experts, and what such a layer's MLP holds."""

    num_experts: int = 0
    experts_per_token: int = 0
    expert_intermediate_size: int | None = None
    shared_expert_intermediate_size: int | None = None
    sparse_layers: frozenset[int] = frozenset()
    mlp: LayerParams | None = None   # the MLP of a sparse layer (routed + shared experts, router)


NO_EXPERTS = MoeBlock()


def moe_block(cfg: ConfigReader, kind: str | None, hidden_size: int, intermediate_size: int,
              num_layers: int) -> MoeBlock:
    """The expert layers of a `kind` ("mixtral", "qwen2_moe", "qwen3_moe" or None) model."""
    H, I, L = hidden_size, intermediate_size, num_layers
    if kind == "mixtral":
        num_experts = cfg.int("num_local_experts")
        top_k = cfg.int("num_experts_per_tok")
        block = MoeBlock(
            num_experts=num_experts, experts_per_token=top_k, expert_intermediate_size=I,
            sparse_layers=frozenset(range(L)),
            mlp=LayerParams(sharded_linear=num_experts * 3 * H * I, replicated_other=H * num_experts,
                            routed_expert_params=num_experts * 3 * H * I),
        )
    elif kind in ("qwen2_moe", "qwen3_moe"):
        num_experts = cfg.int("num_experts", default=0, minimum=0)
        top_k = cfg.int("num_experts_per_tok", default=0, minimum=0)
        step = cfg.int("decoder_sparse_step", default=1)
        mlp_only = set(cfg.int_list("mlp_only_layers"))
        block = MoeBlock(num_experts=num_experts, experts_per_token=top_k)
        if num_experts:
            moe_I = cfg.int("moe_intermediate_size")
            routed = num_experts * 3 * H * moe_I
            mlp = LayerParams(sharded_linear=routed, replicated_other=H * num_experts,
                              routed_expert_params=routed)
            shared_I = None
            if kind == "qwen2_moe":
                shared_I = cfg.int("shared_expert_intermediate_size")
                mlp = mlp + LayerParams(sharded_linear=3 * H * shared_I, replicated_other=H)
            block = MoeBlock(
                num_experts=num_experts, experts_per_token=top_k, expert_intermediate_size=moe_I,
                shared_expert_intermediate_size=shared_I,
                sparse_layers=frozenset(i for i in range(L) if i not in mlp_only and (i + 1) % step == 0),
                mlp=mlp,
            )
    else:
        return NO_EXPERTS
    if block.num_experts and block.experts_per_token > block.num_experts:
        raise PlanError("InvalidModelConfig",
                        f"num_experts_per_tok {block.experts_per_token} exceeds the {block.num_experts} experts")
    return block
