"""Parameter counts, weight bytes, KV bytes and context length from real configs."""

from __future__ import annotations

import copy

import pytest

from scibox_operator.planning import PlanError, kv_bytes_per_token, model_facts_from_config
from scibox_operator.planning.weights import Storage, estimated_checkpoint_bytes, total_weight_bytes

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


def test_weight_bytes_match_the_safetensors_index_of_llama_3_1_8b():
    # model.safetensors.index.json of meta-llama/Llama-3.1-8B-Instruct: total_size 16060522496.
    facts = load_model("meta-llama/Llama-3.1-8B-Instruct")
    assert total_weight_bytes(facts, Storage.of("bfloat16", None)) == 16_060_522_496


def test_llama_2_7b_index_total_is_preferred_over_the_estimate():
    # Llama-2-7b-hf's index says 13476839424 bytes: 8192 more than the parameters,
    # the rotary inv_freq buffers saved with it.
    facts = model_facts_from_config(load_config("meta-llama/Llama-2-7b-hf"),
                                    {"metadata": {"total_size": 13_476_839_424}, "weight_map": {}})
    assert facts.safetensors_weight_bytes == 13_476_839_424
    assert total_weight_bytes(facts, Storage.of("float16", None)) == pytest.approx(13_476_839_424, abs=2)


def test_index_total_rescales_every_gpu_share():
    config = load_config("Qwen/Qwen3-8B")
    plain = model_facts_from_config(config)
    estimate = estimated_checkpoint_bytes(plain)
    indexed = model_facts_from_config(config, {"metadata": {"total_size": int(estimate * 1.1)}})
    storage = Storage.of("bfloat16", None)
    assert total_weight_bytes(indexed, storage) == pytest.approx(total_weight_bytes(plain, storage) * 1.1, rel=1e-6)


def test_index_of_another_model_is_refused():
    facts = model_facts_from_config(load_config("Qwen/Qwen3-8B"), {"metadata": {"total_size": 10**9}})
    with pytest.raises(PlanError) as error:
        total_weight_bytes(facts, Storage.of("bfloat16", None))
    assert error.value.reason == "InvalidModelConfig"


def test_index_without_total_size_is_ignored():
    facts = model_facts_from_config(load_config("Qwen/Qwen3-8B"), {"weight_map": {"a": "b"}})
    assert facts.safetensors_weight_bytes is None


def test_deepseek_v3_multi_token_prediction_layer_is_not_counted_as_served():
    # DeepSeek-V3's checkpoint carries layer 61 (MTP: its own embed_tokens, shared_head
    # and one MoE layer); vLLM skips it when it is not used for speculative decoding.
    config = load_config("deepseek-ai/DeepSeek-V3")
    plain = model_facts_from_config(config)
    served = estimated_checkpoint_bytes(plain)
    mtp_names = ["model.layers.61.embed_tokens.weight", "model.layers.61.shared_head.head.weight",
                 "model.layers.61.eh_proj.weight", "model.layers.61.mlp.experts.0.up_proj.weight"]
    weight_map = {name: "model-00163-of-000163.safetensors" for name in mtp_names}
    weight_map["model.layers.0.self_attn.kv_a_proj_with_mqa.weight"] = "model-00001-of-000163.safetensors"
    mtp_estimate = served * 0.015 + 2 * 129280 * 7168 * 2
    facts = model_facts_from_config(config, {"metadata": {"total_size": int(served + mtp_estimate)},
                                             "weight_map": weight_map})
    assert facts.safetensors_weight_bytes == pytest.approx(served, rel=0.01)


@pytest.mark.parametrize("name,expected", [
    ("meta-llama/Llama-2-7b-hf", 32 * 2 * 32 * 128 * 2),          # MHA: 512 KiB per token
    ("meta-llama/Llama-3.1-8B-Instruct", 32 * 2 * 8 * 128 * 2),   # GQA 8 KV heads: 128 KiB
    ("Qwen/Qwen3-0.6B", 28 * 2 * 8 * 128 * 2),
    ("google/gemma-3-27b-it", 62 * 2 * 16 * 128 * 2),
    ("deepseek-ai/DeepSeek-V3", 61 * (512 + 64) * 2),             # MLA latent: 70,272 bytes
    ("deepseek-ai/DeepSeek-V2-Lite-Chat", 27 * (512 + 64) * 2),
    ("openai-community/gpt2", 12 * 2 * 768 * 2),
])
def test_kv_cache_bytes_per_token(name, expected):
    assert kv_bytes_per_token(load_model(name), 2) == expected


def test_kv_cache_per_gpu_splits_by_kv_head_but_not_below_one_head():
    llama = load_model("meta-llama/Llama-3.1-8B-Instruct")       # 8 KV heads
    assert kv_bytes_per_token(llama, 2, tp=2) == kv_bytes_per_token(llama, 2) // 2
    assert kv_bytes_per_token(llama, 2, tp=8) == kv_bytes_per_token(llama, 2) // 8
    gemma = load_model("google/gemma-3-1b-it")                    # 1 KV head: replicated
    assert kv_bytes_per_token(gemma, 2, tp=4) == kv_bytes_per_token(gemma, 2)
    mla = load_model("deepseek-ai/DeepSeek-V3")                   # latent cache: every rank whole
    assert kv_bytes_per_token(mla, 2, tp=8) == kv_bytes_per_token(mla, 2)
    assert kv_bytes_per_token(llama, 1) == kv_bytes_per_token(llama, 2) // 2   # fp8 KV cache


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


def test_checkpoint_quantization_is_read():
    assert load_model("deepseek-ai/DeepSeek-V3").quantization.method == "fp8"
    awq = load_model("Qwen/Qwen2.5-72B-Instruct-AWQ").quantization
    assert (awq.method, awq.group_size) == ("awq", 128)
    assert 0.5 < awq.bytes_per_weight < 0.53
    fp8 = load_model("RedHatAI/Meta-Llama-3.1-70B-Instruct-FP8").quantization
    assert fp8.bytes_per_weight == 1.0
    assert load_model("meta-llama/Llama-3.1-8B-Instruct").quantization is None


def test_fp8_checkpoint_is_about_half_the_bf16_one():
    fp8 = load_model("RedHatAI/Meta-Llama-3.1-70B-Instruct-FP8")
    bf16 = load_model("meta-llama/Llama-3.1-70B-Instruct")
    ratio = estimated_checkpoint_bytes(fp8) / estimated_checkpoint_bytes(bf16)
    assert 0.5 < ratio < 0.52   # embeddings and LM head stay 16-bit


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
