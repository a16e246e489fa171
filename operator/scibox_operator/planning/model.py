"""Model facts from a Hugging Face `config.json`: parameters, how vLLM shards them, KV size.

Parameters are counted the way transformers builds the model (validated in the tests
against its model classes instantiated on the meta device), and each one is filed by
how vLLM places it across tensor-parallel ranks:

- sharded: column/row-parallel linear layers, vocab-parallel embeddings, fused MoE
  experts: each rank holds 1/tp;
- kv: key/value projections: split by KV head, but a rank always holds at least one
  head, so when tp exceeds the KV heads they are replicated (vLLM's QKVParallelLinear);
- replicated: norms, MoE routers, MLA's down-projections (ReplicatedLinear) and the
  bias of row-parallel layers: every rank holds them whole.

"linear" parameters are weight matrices a quantization scheme compresses; "other"
parameters (biases, norms, routers) stay in the serving dtype.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from .errors import PlanError
from .numerics import QuantScheme, normalize_dtype, scheme_from_quantization_config

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

    def __add__(self, other: "LayerParams") -> "LayerParams":
        return LayerParams(*(a + b for a, b in zip(_fields(self), _fields(other))))


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


# ----------------------------------------------------------------------------- config access

_MISSING = object()


class _Config:
    """Typed, validated reads from a config dict; every failure is a PlanError."""

    def __init__(self, data: dict, where: str = "config") -> None:
        self.data = data
        self.where = where

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def int(self, *keys: str, default: Any = _MISSING, minimum: int = 1) -> int:
        for key in keys:
            if key in self.data and self.data[key] is not None:
                return self._check_int(key, self.data[key], minimum)
        if default is _MISSING:
            raise PlanError("InvalidModelConfig",
                            f"{self.where} lacks {' or '.join(keys)}")
        return default

    def opt_int(self, key: str, default: Any = None, minimum: int = 1) -> int | None:
        """An integer that may be explicitly null (null means 'off', e.g. q_lora_rank)."""
        if key not in self.data:
            return default
        value = self.data[key]
        return None if value is None else self._check_int(key, value, minimum)

    def bool(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise PlanError("InvalidModelConfig", f"{self.where}.{key} must be true or false, got {value!r}")
        return value

    def int_list(self, key: str) -> list[int]:
        value = self.data.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise PlanError("InvalidModelConfig", f"{self.where}.{key} must be a list of integers")
        return value

    def _check_int(self, key: str, value: Any, minimum: int) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise PlanError("InvalidModelConfig", f"{self.where}.{key} must be an integer, got {value!r}")
        if value < minimum:
            raise PlanError("InvalidModelConfig", f"{self.where}.{key} must be >= {minimum}, got {value}")
        return value


# ----------------------------------------------------------------------------- families

@dataclass(frozen=True)
class _LlamaLike:
    """Switches that distinguish the Llama-shaped decoder families."""

    norms_per_layer: int = 2
    qk_norm: bool = False
    qkv_bias: str | bool | tuple[str, bool] = False   # a config key, (key, default), or a fixed answer
    o_bias: str | bool = False
    mlp_bias: str | bool = False
    tie_default: bool = False
    moe: str | None = None            # "mixtral", "qwen2_moe", "qwen3_moe"
    head_dim_default: int | None = None


_LLAMA_LIKE: dict[str, _LlamaLike] = {
    "llama": _LlamaLike(qkv_bias="attention_bias", o_bias="attention_bias", mlp_bias="mlp_bias"),
    "mistral": _LlamaLike(),
    "mixtral": _LlamaLike(moe="mixtral"),
    "qwen2": _LlamaLike(qkv_bias=True),
    "qwen2_moe": _LlamaLike(qkv_bias=("qkv_bias", True), moe="qwen2_moe"),
    "qwen3": _LlamaLike(qk_norm=True, qkv_bias="attention_bias", o_bias="attention_bias"),
    "qwen3_moe": _LlamaLike(qk_norm=True, qkv_bias="attention_bias", o_bias="attention_bias",
                            moe="qwen3_moe"),
    "phi3": _LlamaLike(),
    "gemma": _LlamaLike(qkv_bias="attention_bias", o_bias="attention_bias", tie_default=True,
                        head_dim_default=256),
    "gemma2": _LlamaLike(norms_per_layer=4, qkv_bias="attention_bias", o_bias="attention_bias",
                         tie_default=True, head_dim_default=256),
    "gemma3_text": _LlamaLike(norms_per_layer=4, qk_norm=True, qkv_bias="attention_bias",
                              o_bias="attention_bias", tie_default=True, head_dim_default=256),
}

# transformers' Gemma3TextConfig / SiglipVisionConfig defaults: Gemma 3's config.json
# leaves many of these out of text_config and vision_config.
_GEMMA3_TEXT_DEFAULTS = {
    "vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216,
    "num_hidden_layers": 26, "num_attention_heads": 8, "num_key_value_heads": 4,
    "head_dim": 256, "max_position_embeddings": 131072,
}
_SIGLIP_DEFAULTS = {
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "image_size": 224, "patch_size": 16, "num_channels": 3,
}

_ARCH_TO_TYPE = {
    "LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral",
    "MixtralForCausalLM": "mixtral", "Qwen2ForCausalLM": "qwen2",
    "Qwen2MoeForCausalLM": "qwen2_moe", "Qwen3ForCausalLM": "qwen3",
    "Qwen3MoeForCausalLM": "qwen3_moe", "Phi3ForCausalLM": "phi3",
    "GemmaForCausalLM": "gemma", "Gemma2ForCausalLM": "gemma2",
    "Gemma3ForCausalLM": "gemma3_text", "Gemma3ForConditionalGeneration": "gemma3",
    "DeepseekV2ForCausalLM": "deepseek_v2", "DeepseekV3ForCausalLM": "deepseek_v3",
    "GPT2LMHeadModel": "gpt2", "OPTForCausalLM": "opt",
}
_TYPE_TO_ARCH = {v: k for k, v in _ARCH_TO_TYPE.items()}

SUPPORTED_MODEL_TYPES = tuple(sorted(set(_ARCH_TO_TYPE.values())))


def model_facts_from_config(config: dict, safetensors_index: dict | None = None, *,
                            name: str | None = None) -> ModelFacts:
    """Facts of a Hugging Face model from its config.json (and safetensors index).

    `name` (e.g. the Hugging Face repo id) is what plan reasons call the model; without
    it the config's `_name_or_path`, else its architecture, is used.

    Raises PlanError(UnsupportedArchitecture) for a family the planner cannot count and
    PlanError(InvalidModelConfig) for a config that is not a usable model description.
    """
    if not isinstance(config, dict):
        raise PlanError("InvalidModelConfig", "config.json must hold a JSON object")
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    if not isinstance(architectures, list):
        raise PlanError("InvalidModelConfig", "config.architectures must be a list")
    architecture = str(architectures[0]) if architectures else None
    if not model_type and architecture:
        model_type = _ARCH_TO_TYPE.get(architecture)
    if not isinstance(model_type, str) or not model_type:
        raise PlanError("InvalidModelConfig", "config.json has neither model_type nor a known architecture")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise PlanError(
            "UnsupportedArchitecture",
            f"model type {model_type!r} ({architecture or 'no architecture'}) is not supported by "
            f"the planner; supported: {', '.join(SUPPORTED_MODEL_TYPES)}",
        )
    architecture = architecture or _TYPE_TO_ARCH[model_type]
    _check_plausible_depth(config)

    if model_type in _LLAMA_LIKE:
        facts = _llama_like(_Config(config), model_type, architecture)
    elif model_type == "gemma3":
        facts = _gemma3_multimodal(config, architecture)
    elif model_type in ("deepseek_v2", "deepseek_v3"):
        facts = _deepseek(_Config(config), model_type, architecture)
    elif model_type == "gpt2":
        facts = _gpt2(_Config(config), architecture)
    else:
        facts = _opt(_Config(config), architecture)

    if not name:
        name = config.get("_name_or_path")
    changes: dict[str, Any] = {"name": name if isinstance(name, str) and name else None}
    if safetensors_index is not None:
        changes["safetensors_weight_bytes"] = _weights_from_index(facts, safetensors_index)
    return _replace(facts, **changes)


# No served model has more than a few hundred layers; a bigger number is a garbled config
# (and would make the pipeline search needlessly long).
MAX_LAYERS = 1024


def _check_plausible_depth(config: dict) -> None:
    for scope in (config, config.get("text_config")):
        if not isinstance(scope, dict):
            continue
        for key in ("num_hidden_layers", "n_layer"):
            value = scope.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > MAX_LAYERS:
                raise PlanError("InvalidModelConfig", f"{key} {value} is implausible (more than {MAX_LAYERS})")


def _replace(facts: ModelFacts, **changes) -> ModelFacts:
    return replace(facts, **changes)


def _flag(cfg: _Config, spec: str | bool | tuple[str, bool]) -> bool:
    if isinstance(spec, bool):
        return spec
    key, default = spec if isinstance(spec, tuple) else (spec, False)
    return cfg.bool(key, default)


def _common_text_facts(cfg: _Config, model_type: str) -> dict:
    dtype = normalize_dtype(cfg.raw("torch_dtype", cfg.raw("dtype"))) or "float32"
    if dtype == "auto":
        dtype = "bfloat16"
    quant = cfg.raw("quantization_config")
    derived, default = _max_model_len(cfg, model_type)
    return {
        "checkpoint_dtype": dtype,
        "quantization": scheme_from_quantization_config(quant) if quant else None,
        "derived_max_model_len": derived,
        "default_max_model_len": default,
    }


def _llama_like(cfg: _Config, model_type: str, architecture: str) -> ModelFacts:
    fam = _LLAMA_LIKE[model_type]
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

    num_experts = top_k = 0
    moe_I = shared_I = None
    sparse_layers: set[int] = set()
    moe_mlp = None
    if fam.moe == "mixtral":
        num_experts = cfg.int("num_local_experts")
        top_k = cfg.int("num_experts_per_tok")
        moe_I = I
        sparse_layers = set(range(L))
        moe_mlp = LayerParams(sharded_linear=num_experts * 3 * H * I, replicated_other=H * num_experts,
                              routed_expert_params=num_experts * 3 * H * I)
    elif fam.moe in ("qwen2_moe", "qwen3_moe"):
        num_experts = cfg.int("num_experts", default=0, minimum=0)
        top_k = cfg.int("num_experts_per_tok", default=0, minimum=0)
        step = cfg.int("decoder_sparse_step", default=1)
        mlp_only = set(cfg.int_list("mlp_only_layers"))
        if num_experts:
            moe_I = cfg.int("moe_intermediate_size")
            sparse_layers = {i for i in range(L) if i not in mlp_only and (i + 1) % step == 0}
            routed = num_experts * 3 * H * moe_I
            moe_mlp = LayerParams(sharded_linear=routed, replicated_other=H * num_experts,
                                  routed_expert_params=routed)
            if fam.moe == "qwen2_moe":
                shared_I = cfg.int("shared_expert_intermediate_size")
                moe_mlp = moe_mlp + LayerParams(sharded_linear=3 * H * shared_I, replicated_other=H)
    layers = tuple(attention + (moe_mlp if i in sparse_layers else dense_mlp) for i in range(L))
    if num_experts and top_k > num_experts:
        raise PlanError("InvalidModelConfig", f"num_experts_per_tok {top_k} exceeds the {num_experts} experts")

    divisible = [("attention heads", nh)]
    aligned = [("attention width", nh * hd)]
    if len(sparse_layers) < L:
        divisible.append(("intermediate size", I))
        aligned.append(("intermediate size", I))
    if moe_I:
        divisible.append(("expert intermediate size", moe_I))
        aligned.append(("expert intermediate size", moe_I))
    if shared_I:
        divisible.append(("shared expert intermediate size", shared_I))
        aligned.append(("shared expert intermediate size", shared_I))
    ffn_width = max(I if len(sparse_layers) < L else 0, (top_k * moe_I if moe_I else 0) + (shared_I or 0))

    return ModelFacts(
        architecture=architecture, model_type=model_type, num_layers=L, hidden_size=H,
        num_attention_heads=nh, num_kv_heads=nkv, head_dim=hd, vocab_size=V,
        kv_elements_per_token_per_layer=2 * nkv * hd, kv_cache_is_latent=False,
        layers=layers, embedding_params=V * H, lm_head_params=0 if tied else V * H,
        tie_word_embeddings=tied, last_stage_replicated_params=H,
        num_experts=num_experts, experts_per_token=top_k, ffn_activation_width=ffn_width,
        tp_divisible=tuple(divisible), tp_group_aligned=tuple(aligned),
        **_common_text_facts(cfg, model_type),
    )


def _gemma3_multimodal(config: dict, architecture: str) -> ModelFacts:
    """Gemma 3 4B/12B/27B: the Gemma 3 text decoder plus a SigLIP vision tower."""
    text = config.get("text_config")
    vision = config.get("vision_config")
    if not isinstance(text, dict) or not isinstance(vision, dict):
        raise PlanError("InvalidModelConfig", "a gemma3 config needs text_config and vision_config objects")
    text = dict(text)
    # Top-level fields vLLM and transformers read for the whole model.
    for key in ("torch_dtype", "dtype", "quantization_config"):
        if key in config and key not in text:
            text[key] = config[key]
    text.setdefault("tie_word_embeddings", config.get("tie_word_embeddings", True))
    for key, value in _GEMMA3_TEXT_DEFAULTS.items():
        text.setdefault(key, value)
    facts = _llama_like(_Config(text, "text_config"), "gemma3_text", architecture)

    v = _Config(vision, "vision_config")
    D = v.int("hidden_size", default=_SIGLIP_DEFAULTS["hidden_size"])
    Di = v.int("intermediate_size", default=_SIGLIP_DEFAULTS["intermediate_size"])
    Lv = v.int("num_hidden_layers", default=_SIGLIP_DEFAULTS["num_hidden_layers"])
    hv = v.int("num_attention_heads", default=_SIGLIP_DEFAULTS["num_attention_heads"])
    image = v.int("image_size", default=_SIGLIP_DEFAULTS["image_size"])
    patch = v.int("patch_size", default=_SIGLIP_DEFAULTS["patch_size"])
    channels = v.int("num_channels", default=_SIGLIP_DEFAULTS["num_channels"])
    patches = (image // patch) ** 2
    per_layer = 4 * D + 4 * (D * D + D) + (D * Di + Di) + (Di * D + D)
    tower = channels * patch * patch * D + D + patches * D + Lv * per_layer + 2 * D
    projector = D * facts.hidden_size + D  # mm_input_projection_weight + mm_soft_emb_norm
    return _replace(
        facts, model_type="gemma3", encoder_params=tower + projector,
        tp_divisible=facts.tp_divisible + (("vision attention heads", hv), ("vision intermediate size", Di)),
    )


def _deepseek(cfg: _Config, model_type: str, architecture: str) -> ModelFacts:
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
    divisible = [("attention heads", nh)]
    aligned = [("attention width", nh * v_dim)]
    if len(sparse) < L:
        divisible.append(("intermediate size", I))
        aligned.append(("intermediate size", I))
    if sparse:
        divisible.append(("expert intermediate size", moe_I))
        aligned.append(("expert intermediate size", moe_I))
    return ModelFacts(
        architecture=architecture, model_type=model_type, num_layers=L, hidden_size=H,
        num_attention_heads=nh, num_kv_heads=1, head_dim=qk_dim, vocab_size=V,
        kv_elements_per_token_per_layer=kv_lora + rope, kv_cache_is_latent=True,
        layers=layers, embedding_params=V * H, lm_head_params=0 if tied else V * H,
        tie_word_embeddings=tied, last_stage_replicated_params=H,
        num_experts=E if sparse else 0, experts_per_token=top_k if sparse else 0,
        ffn_activation_width=max(I if len(sparse) < L else 0,
                                 (top_k + shared) * moe_I if sparse else 0),
        tp_divisible=tuple(divisible), tp_group_aligned=tuple(aligned),
        **_common_text_facts(cfg, model_type),
    )


def _gpt2(cfg: _Config, architecture: str) -> ModelFacts:
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
    facts = _common_text_facts(cfg, "gpt2")
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


def _opt(cfg: _Config, architecture: str) -> ModelFacts:
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
        **_common_text_facts(cfg, "opt"),
    )


# ----------------------------------------------------------------------------- context length

_MAX_LEN_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length",
                 "model_max_length", "max_target_positions", "max_sequence_length",
                 "max_seq_length", "seq_len")


def _max_model_len(cfg: _Config, model_type: str) -> tuple[int, int]:
    """(longest length vLLM accepts, length it uses by default), per vLLM's config rules.

    Smallest of the length keys; RoPE scaling multiplies it except for types whose
    max_position_embeddings is already scaled (llama3, yarn, longrope, ...) and for
    Gemma 3; LongRoPE models default to their original (unscaled) length.
    """
    lengths = [cfg.data[k] for k in _MAX_LEN_KEYS
               if isinstance(cfg.data.get(k), int) and not isinstance(cfg.data.get(k), bool) and cfg.data[k] > 0]
    derived = float(min(lengths)) if lengths else 2048.0
    if isinstance(cfg.data.get("model_max_length"), int) and cfg.data["model_max_length"] > 0:
        derived = float(cfg.data["model_max_length"])
    rope = cfg.raw("rope_scaling") or cfg.raw("rope_parameters")
    rope_type = None
    if isinstance(rope, dict):
        rope_type = rope.get("rope_type", rope.get("type"))
        factor = rope.get("factor")
        if ("gemma3" not in model_type and rope_type not in
                ("su", "longrope", "llama3", "yarn", "deepseek_yarn", "deepseek_llama_scaling")
                and isinstance(factor, (int, float)) and factor > 0):
            derived *= factor
    default = int(derived)
    if rope_type == "longrope":
        original = cfg.raw("original_max_position_embeddings")
        if isinstance(original, int) and original > 0:
            default = original
    return int(derived), default


# ----------------------------------------------------------------------------- safetensors index

_LAYER_NAME = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def _weights_from_index(facts: ModelFacts, index: dict) -> int | None:
    """Bytes vLLM loads according to model.safetensors.index.json, None if it has no size.

    DeepSeek-V3-style checkpoints append multi-token-prediction layers (indices at or
    beyond num_hidden_layers) that vLLM skips unless speculative decoding uses them;
    their estimated size is taken off the total.
    """
    if not isinstance(index, dict):
        raise PlanError("InvalidModelConfig", "the safetensors index must be a JSON object")
    total = (index.get("metadata") or {}).get("total_size")
    if isinstance(total, str) and total.isdigit():
        total = int(total)
    if not isinstance(total, int) or isinstance(total, bool) or total <= 0:
        return None
    weight_map = index.get("weight_map") or {}
    extra_layers: dict[int, set[str]] = {}
    for name in weight_map if isinstance(weight_map, dict) else ():
        match = _LAYER_NAME.search(name)
        if match and int(match.group(1)) >= facts.num_layers:
            extra_layers.setdefault(int(match.group(1)), set()).add(name)
    if not extra_layers:
        return total
    from .weights import checkpoint_bytes_of_layer, checkpoint_bytes_per_param  # noqa: avoid cycle
    skipped = 0.0
    for names in extra_layers.values():
        skipped += checkpoint_bytes_of_layer(facts, facts.layers[-1])
        skipped += 2 * facts.hidden_size * facts.hidden_size * checkpoint_bytes_per_param(facts, linear=True)
        matrix = facts.vocab_size * facts.hidden_size * checkpoint_bytes_per_param(facts, linear=False)
        skipped += matrix * sum(1 for part in ("embed_tokens", "shared_head.head")
                                if any(part in n for n in names))
    return max(1, total - int(skipped))
