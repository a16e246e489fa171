"""Model facts from real configs: parameter counts per family, quantization, bad configs."""

from __future__ import annotations

import copy

import pytest

from scibox_operator.planning import PlanError, model_facts_from_config

from .conftest import CONFIG_NAMES, load_config, load_model

# Parameter counts the model publishers state (model cards, or sum of the safetensors
# shapes); they pin the counting rules independently of transformers.
PUBLISHED_PARAMETERS = {
    "meta-llama/Llama-2-7b-hf": 6_738_415_616,
    "meta-llama/Llama-3.1-8B-Instruct": 8_030_261_248,
    "meta-llama/Llama-3.1-70B-Instruct": 70_553_706_496,
    "meta-llama/Llama-3.1-405B-Instruct": 405_853_388_800,
    "mistralai/Mistral-7B-v0.1": 7_241_732_096,
    "mistralai/Mixtral-8x7B-Instruct-v0.1": 46_702_792_704,
    "Qwen/Qwen2.5-7B-Instruct": 7_615_616_512,
    "openai-community/gpt2": 124_439_808,
    "facebook/opt-125m": 125_239_296,
}


def test_fixture_set_is_large_enough():
    assert len(CONFIG_NAMES) >= 20
    families = {load_model(name).model_type for name in CONFIG_NAMES}
    assert {"llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma2",
            "gemma3", "gemma3_text", "phi3", "deepseek_v2", "deepseek_v3", "gpt2", "opt"} <= families


@pytest.mark.parametrize("name,expected", sorted(PUBLISHED_PARAMETERS.items()))
def test_parameter_count_matches_published_figure(name, expected):
    assert load_model(name).total_params == expected


def test_moe_active_parameters():
    mixtral = load_model("mistralai/Mixtral-8x7B-Instruct-v0.1")
    assert 12.8e9 < mixtral.active_params < 13.0e9          # "12.9B active"
    qwen = load_model("Qwen/Qwen3-30B-A3B")
    assert 3.2e9 < qwen.active_params < 3.4e9               # "3.3B activated"
    v3 = load_model("deepseek-ai/DeepSeek-V3")
    assert 36.5e9 < v3.active_params < 37.8e9               # "37B activated"
    dense = load_model("meta-llama/Llama-3.1-8B-Instruct")
    assert dense.active_params == dense.total_params


def test_checkpoint_quantization_is_read():
    assert load_model("deepseek-ai/DeepSeek-V3").quantization.method == "fp8"
    awq = load_model("Qwen/Qwen2.5-72B-Instruct-AWQ").quantization
    assert (awq.method, awq.group_size) == ("awq", 128)
    assert 0.5 < awq.bytes_per_weight < 0.53
    fp8 = load_model("RedHatAI/Meta-Llama-3.1-70B-Instruct-FP8").quantization
    assert fp8.bytes_per_weight == 1.0
    assert load_model("meta-llama/Llama-3.1-8B-Instruct").quantization is None


def _broken(name: str, mutate) -> dict:
    config = copy.deepcopy(load_config(name))
    mutate(config)
    return config


@pytest.mark.parametrize("config,reason", [
    ("not a dict", "InvalidModelConfig"),
    ({}, "InvalidModelConfig"),
    ({"model_type": "bert", "architectures": ["BertModel"]}, "UnsupportedArchitecture"),
    ({"model_type": "mamba"}, "UnsupportedArchitecture"),
    (_broken("meta-llama/Llama-3.1-8B-Instruct", lambda c: c.pop("hidden_size")), "InvalidModelConfig"),
    (_broken("meta-llama/Llama-3.1-8B-Instruct", lambda c: c.update(num_hidden_layers="32")), "InvalidModelConfig"),
    (_broken("meta-llama/Llama-3.1-8B-Instruct", lambda c: c.update(num_attention_heads=0)), "InvalidModelConfig"),
    (_broken("meta-llama/Llama-3.1-8B-Instruct", lambda c: c.update(num_key_value_heads=5)), "InvalidModelConfig"),
    (_broken("meta-llama/Llama-3.1-8B-Instruct", lambda c: c.update(tie_word_embeddings="no")), "InvalidModelConfig"),
    (_broken("meta-llama/Llama-2-7b-hf", lambda c: c.update(hidden_size=4097)), "InvalidModelConfig"),
    (_broken("mistralai/Mixtral-8x7B-Instruct-v0.1", lambda c: c.update(num_experts_per_tok=9)), "InvalidModelConfig"),
    (_broken("google/gemma-3-4b-it", lambda c: c.pop("vision_config")), "InvalidModelConfig"),
    (_broken("Qwen/Qwen3-8B", lambda c: c.update(quantization_config={"quant_method": "hqq"})), "UnsupportedQuantization"),
    (_broken("Qwen/Qwen3-8B", lambda c: c.update(architectures="Qwen3")), "InvalidModelConfig"),
    (_broken("Qwen/Qwen3-8B", lambda c: c.update(num_hidden_layers=10**6)), "InvalidModelConfig"),
])
def test_bad_configs_raise_a_plan_error(config, reason):
    with pytest.raises(PlanError) as error:
        model_facts_from_config(config)
    assert error.value.reason == reason
    assert error.value.message


def test_model_type_can_come_from_the_architecture_alone():
    config = load_config("meta-llama/Llama-3.1-8B-Instruct")
    config.pop("model_type")
    assert model_facts_from_config(config).model_type == "llama"


def test_to_json_is_serialisable():
    import json
    data = load_model("deepseek-ai/DeepSeek-V3").to_json()
    assert json.loads(json.dumps(data))["kvCacheIsLatent"] is True
