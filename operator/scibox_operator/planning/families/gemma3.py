"""Gemma 3 4B/12B/27B (model_type gemma3): the Gemma 3 text decoder plus a SigLIP vision tower.

The text-only Gemma 3 1B (gemma3_text) and Gemma 1/2 are Llama-shaped (`llama_like.py`).
"""

from __future__ import annotations

from dataclasses import replace

from ..config_reader import ConfigReader
from ..errors import PlanError
from ..facts import ModelFacts
from .llama_like import llama_like_facts

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


def gemma3_multimodal_facts(config: dict, architecture: str) -> ModelFacts:
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
    facts = llama_like_facts(ConfigReader(text, "text_config"), "gemma3_text", architecture)

    v = ConfigReader(vision, "vision_config")
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
    return replace(
        facts, model_type="gemma3", encoder_params=tower + projector,
        tp_divisible=facts.tp_divisible + (("vision attention heads", hv), ("vision intermediate size", Di)),
    )
