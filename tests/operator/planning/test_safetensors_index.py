"""The safetensors index: its total size replaces the config's estimate (weights.index_correction)."""

from __future__ import annotations

import pytest

from scibox_operator.planning import PlanError, model_facts_from_config
from scibox_operator.planning.weights import Storage, estimated_checkpoint_bytes, total_weight_bytes

from .conftest import load_config


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
