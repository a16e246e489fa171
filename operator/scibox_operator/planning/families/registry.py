"""The model types the planner can count, their architectures, and which family counts each."""

from __future__ import annotations

from ..config_reader import ConfigReader
from ..facts import ModelFacts
from .deepseek import deepseek_facts
from .gemma3 import gemma3_multimodal_facts
from .gpt2 import gpt2_facts
from .llama_like import LLAMA_LIKE, llama_like_facts
from .opt import opt_facts

ARCH_TO_TYPE = {
    "LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral",
    "MixtralForCausalLM": "mixtral", "Qwen2ForCausalLM": "qwen2",
    "Qwen2MoeForCausalLM": "qwen2_moe", "Qwen3ForCausalLM": "qwen3",
    "Qwen3MoeForCausalLM": "qwen3_moe", "Phi3ForCausalLM": "phi3",
    "GemmaForCausalLM": "gemma", "Gemma2ForCausalLM": "gemma2",
    "Gemma3ForCausalLM": "gemma3_text", "Gemma3ForConditionalGeneration": "gemma3",
    "DeepseekV2ForCausalLM": "deepseek_v2", "DeepseekV3ForCausalLM": "deepseek_v3",
    "GPT2LMHeadModel": "gpt2", "OPTForCausalLM": "opt",
}
TYPE_TO_ARCH = {v: k for k, v in ARCH_TO_TYPE.items()}

SUPPORTED_MODEL_TYPES = tuple(sorted(set(ARCH_TO_TYPE.values())))


def family_facts(config: dict, model_type: str, architecture: str) -> ModelFacts:
    """Count a supported `model_type`'s parameters with its family's rules."""
    if model_type in LLAMA_LIKE:
        return llama_like_facts(ConfigReader(config), model_type, architecture)
    if model_type == "gemma3":
        return gemma3_multimodal_facts(config, architecture)
    if model_type in ("deepseek_v2", "deepseek_v3"):
        return deepseek_facts(ConfigReader(config), model_type, architecture)
    if model_type == "gpt2":
        return gpt2_facts(ConfigReader(config), architecture)
    return opt_facts(ConfigReader(config), architecture)
