"""The memory model: KV-cache bytes per token, and one layout's KV budget against measured vLLM."""

from __future__ import annotations

import pytest

from scibox_operator.planning import evaluate_layout, kv_bytes_per_token, lookup_gpu

from .conftest import load_model

LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"


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


def test_kv_replicated_when_tp_exceeds_kv_heads():
    model, gpu = load_model("google/gemma-3-1b-it"), lookup_gpu("L4")  # 1 KV head
    one = evaluate_layout(model, gpu, 8, 1, 1, max_model_len=8192)
    four = evaluate_layout(model, gpu, 8, 4, 1, max_model_len=8192)
    assert four.stages[0].kv_bytes_per_token == one.stages[0].kv_bytes_per_token


# Published vLLM startup logs on one H100 (llm-d-benchmark, empirical-vllm-memory-results):
# our KV-cache memory must not exceed what vLLM found, and stay within 3 GiB of it.
@pytest.mark.parametrize("name,tp,measured_kv_gib", [
    (LLAMA_8B, 1, 51.38),
    ("Qwen/Qwen3-0.6B", 1, 64.45),
    ("Qwen/Qwen3-32B", 1, 4.45),
    ("RedHatAI/Meta-Llama-3.1-70B-Instruct-FP8", 2, 32.0),
])
def test_kv_memory_is_conservative_against_measured_vllm(name, tp, measured_kv_gib):
    fit = evaluate_layout(load_model(name), lookup_gpu("H100"), 8, tp, 1, max_model_len=16000)
    estimate = fit.stages[0].kv_budget_bytes / 2**30
    assert measured_kv_gib - 3 <= estimate <= measured_kv_gib
