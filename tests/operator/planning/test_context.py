"""Context length: what vLLM accepts and uses by default, from the config's length keys and RoPE."""

from __future__ import annotations

import pytest

from scibox_operator.planning import model_facts_from_config

from .conftest import load_config, load_model


@pytest.mark.parametrize("name,derived,default", [
    ("meta-llama/Llama-3.1-8B-Instruct", 131072, 131072),   # llama3 rope: already scaled
    ("meta-llama/Llama-2-7b-hf", 4096, 4096),
    ("microsoft/Phi-3.5-mini-instruct", 131072, 4096),      # LongRoPE defaults to the original
    ("google/gemma-3-27b-it", 131072, 131072),              # Gemma 3: linear factor not applied
    ("deepseek-ai/DeepSeek-V3", 163840, 163840),            # yarn: already scaled
    ("mistralai/Mistral-7B-v0.1", 32768, 32768),
    ("openai-community/gpt2", 1024, 1024),
    ("facebook/opt-125m", 2048, 2048),
])
def test_context_length_follows_vllm(name, derived, default):
    facts = load_model(name)
    assert (facts.derived_max_model_len, facts.default_max_model_len) == (derived, default)


def test_linear_rope_scaling_multiplies_context():
    config = load_config("meta-llama/Llama-2-7b-hf")
    config["rope_scaling"] = {"type": "linear", "factor": 2.0}
    assert model_facts_from_config(config).derived_max_model_len == 8192
