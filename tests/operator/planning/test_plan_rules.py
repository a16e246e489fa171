"""Explicit sizes are validated and kept; impossible requests get a clear reason."""

from __future__ import annotations

import pytest

from scibox_operator.planning import PlanError, evaluate_layout, lookup_gpu, plan_parallelism, tensor_parallel_problem

from .conftest import load_config, load_model
from .plan_checks import assert_fits, assert_rules

LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"
LLAMA_70B = "meta-llama/Llama-3.1-70B-Instruct"


def _reason(callable_, *args, **kwargs) -> PlanError:
    with pytest.raises(PlanError) as error:
        callable_(*args, **kwargs)
    assert error.value.message and error.value.reason in str(error.value)
    return error.value


def test_explicit_sizes_are_kept_even_when_more_than_needed():
    model = load_model(LLAMA_8B)
    plan = plan_parallelism(model, lookup_gpu("H100"), 8, max_model_len=8192, tensor_parallel_size=8)
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size) == (8, 1)
    assert "requested tensor parallel size" in plan.reason
    plan = plan_parallelism(model, lookup_gpu("H100"), 8, max_model_len=8192,
                            tensor_parallel_size=2, pipeline_parallel_size=2)
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size, plan.nodes) == (2, 2, 1)


def test_explicit_tp_with_pipeline_chosen_to_fit():
    model, gpu = load_model(LLAMA_70B), lookup_gpu("L4")
    plan = plan_parallelism(model, gpu, 4, max_model_len=8192, tensor_parallel_size=4)
    assert plan.tensor_parallel_size == 4 and plan.pipeline_parallel_size >= 2
    assert plan.nodes == plan.pipeline_parallel_size          # one 4-GPU stage per 4-GPU node
    assert_rules(model, plan, 4)
    assert_fits(model, gpu, plan, 4, max_model_len=8192)
    smaller = evaluate_layout(model, gpu, 4, 4, plan.pipeline_parallel_size - 1, max_model_len=8192)
    assert not smaller.fits


def test_explicit_pp_with_tensor_chosen_to_fit():
    model, gpu = load_model(LLAMA_70B), lookup_gpu("A100-40GB")
    plan = plan_parallelism(model, gpu, 8, max_model_len=8192, pipeline_parallel_size=2)
    assert plan.pipeline_parallel_size == 2 and plan.tensor_parallel_size == 4
    assert (plan.nodes, plan.gpus_per_node) == (1, 8)


@pytest.mark.parametrize("tp,reason", [
    (3, "TensorParallelNotDivisor"),        # 32 heads
    (16, "TensorParallelNotDivisor"),       # 8 KV heads: 16 is a multiple, but 32 heads / 16 ok...
    (0, "InvalidParallelSize"),
    (-2, "InvalidParallelSize"),
    (True, "InvalidParallelSize"),
])
def test_invalid_tensor_parallel_sizes(tp, reason):
    model = load_model(LLAMA_8B)
    if tp == 16:
        # 32 heads and 8 KV heads both allow 16; the node does not.
        assert _reason(plan_parallelism, model, lookup_gpu("H100"), 8,
                       tensor_parallel_size=16).reason == "TensorParallelExceedsNode"
        return
    assert _reason(plan_parallelism, model, lookup_gpu("H100"), 8, tensor_parallel_size=tp).reason == reason


def test_quantization_groups_constrain_tensor_parallelism():
    awq = load_model("Qwen/Qwen2.5-72B-Instruct-AWQ")               # intermediate padded to 29696
    assert tensor_parallel_problem(awq, 8, awq.quantization) is None
    config = load_config("Qwen/Qwen2.5-72B-Instruct-AWQ")
    config["intermediate_size"] = 29568                              # the unpadded bf16 width
    from scibox_operator.planning import model_facts_from_config
    unpadded = model_facts_from_config(config)
    problem = tensor_parallel_problem(unpadded, 8, unpadded.quantization)
    assert "group size 128" in problem
    error = _reason(plan_parallelism, unpadded, lookup_gpu("L4"), 8, tensor_parallel_size=8)
    assert error.reason == "TensorParallelNotDivisor"


def test_pipeline_cannot_exceed_layers():
    model = load_model("openai-community/gpt2")
    assert _reason(plan_parallelism, model, lookup_gpu("L4"), 8,
                   pipeline_parallel_size=13).reason == "PipelineParallelTooLarge"


def test_explicit_layout_too_small_for_weights():
    error = _reason(plan_parallelism, load_model(LLAMA_70B), lookup_gpu("L4"), 8,
                    tensor_parallel_size=1, pipeline_parallel_size=1, max_model_len=4096)
    assert error.reason == "ModelTooLarge"
    assert "L4" in error.message


def test_explicit_layout_with_too_little_kv_cache():
    error = _reason(plan_parallelism, load_model(LLAMA_8B), lookup_gpu("L4"), 8,
                    tensor_parallel_size=1, max_model_len=131072, pipeline_parallel_size=1)
    assert error.reason == "InsufficientKvCache"
    assert "131,072" in error.message


def test_model_too_large_for_any_allowed_layout():
    # 405B in fp16 on single-T4 nodes: even one 6 GiB layer per T4 leaves no KV room.
    error = _reason(plan_parallelism, load_model("meta-llama/Llama-3.1-405B-Instruct"),
                    lookup_gpu("T4"), 1, max_model_len=4096)
    assert error.reason in ("ModelTooLarge", "InsufficientKvCache")
    error = _reason(plan_parallelism, load_model(LLAMA_70B), lookup_gpu("T4"), 1,
                    max_model_len=4096, pipeline_parallel_size=4)
    assert error.reason == "ModelTooLarge"


def test_too_many_nodes_names_the_need():
    error = _reason(plan_parallelism, load_model(LLAMA_70B), lookup_gpu("T4"), 1,
                    max_model_len=4096, max_nodes=4)
    assert error.reason == "TooManyNodes" and "maxNodes is 4" in error.message


def test_max_nodes_is_respected_and_named():
    model, gpu = load_model("meta-llama/Llama-3.1-405B-Instruct"), lookup_gpu("H100")
    plan = plan_parallelism(model, gpu, 8, max_model_len=8192, max_nodes=2)
    assert plan.nodes == 2
    error = _reason(plan_parallelism, model, gpu, 8, max_model_len=8192, max_nodes=1)
    assert error.reason == "TooManyNodes" and "2 nodes" in error.message


# 35 heads over 5 KV heads: no TP size above 1 fits a 4-GPU node, so only stages grow.
ODD_HEADS = {"model_type": "llama", "hidden_size": 35 * 128, "head_dim": 128, "num_attention_heads": 35,
             "num_key_value_heads": 5, "num_hidden_layers": 56, "intermediate_size": 128 * 300,
             "vocab_size": 128000, "max_position_embeddings": 131072, "torch_dtype": "bfloat16"}


def test_a_node_limit_prefers_fuller_uniform_nodes_over_a_prime_stage_count():
    from scibox_operator.planning import model_facts_from_config
    model, gpu = model_facts_from_config(ODD_HEADS), lookup_gpu("T4")
    fewest_gpus = plan_parallelism(model, gpu, 4, max_model_len=8192)
    # 7 stages cannot be split evenly over fewer than 7 nodes
    assert (fewest_gpus.tensor_parallel_size, fewest_gpus.pipeline_parallel_size, fewest_gpus.nodes) == (1, 7, 7)
    limited = plan_parallelism(model, gpu, 4, max_model_len=8192, max_nodes=2)
    assert (limited.pipeline_parallel_size, limited.nodes, limited.gpus_per_node) == (8, 2, 4)
    error = _reason(plan_parallelism, model, gpu, 4, max_model_len=8192, max_nodes=1)
    assert error.reason == "TooManyNodes" and "needs 2 nodes" in error.message


def test_concurrency_target_raises_the_gpu_count():
    model, gpu = load_model(LLAMA_8B), lookup_gpu("L4")
    single = plan_parallelism(model, gpu, 8, max_model_len=8192)
    busy = plan_parallelism(model, gpu, 8, max_model_len=8192, concurrency_target=8)
    assert busy.gpus > single.gpus
    assert busy.kv_cache_tokens >= 8 * 8192
    assert "x 8 sequences" in busy.reason


def test_context_longer_than_the_model_supports():
    error = _reason(plan_parallelism, load_model("meta-llama/Llama-2-7b-hf"), lookup_gpu("H100"), 8,
                    max_model_len=8192)
    assert error.reason == "MaxModelLenTooLarge"


def test_default_context_is_the_models_own():
    plan = plan_parallelism(load_model(LLAMA_8B), lookup_gpu("L4"), 8)
    assert plan.max_model_len == 131072 and plan.gpus == 2


@pytest.mark.parametrize("kwargs,reason", [
    ({"gpu_memory_utilization": 0}, "InvalidGpuMemoryUtilization"),
    ({"gpu_memory_utilization": 1.5}, "InvalidGpuMemoryUtilization"),
    ({"concurrency_target": 0}, "InvalidConcurrencyTarget"),
    ({"max_model_len": -1}, "InvalidMaxModelLen"),
    ({"dtype": "int3"}, "UnsupportedDtype"),
    ({"quantization": "awq"}, "UnsupportedQuantization"),      # needs an AWQ checkpoint
    ({"quantization": "nonsense"}, "UnsupportedQuantization"),
    ({"kv_cache_dtype": "int2"}, "UnsupportedDtype"),
    ({"max_nodes": 0}, "InvalidParallelSize"),
])
def test_bad_options(kwargs, reason):
    assert _reason(plan_parallelism, load_model(LLAMA_8B), lookup_gpu("H100"), 8, **kwargs).reason == reason


def test_gpus_per_node_must_be_positive():
    assert _reason(plan_parallelism, load_model(LLAMA_8B), lookup_gpu("H100"), 0).reason == "InvalidParallelSize"


def test_quantization_must_match_the_checkpoint():
    awq = load_model("Qwen/Qwen2.5-72B-Instruct-AWQ")
    assert _reason(plan_parallelism, awq, lookup_gpu("H100"), 8, quantization="fp8").reason == "QuantizationMismatch"
    plan = plan_parallelism(awq, lookup_gpu("H100"), 8, quantization="awq_marlin", max_model_len=8192)
    assert plan.quantization == "awq"


def test_online_fp8_halves_the_weights():
    model, gpu = load_model(LLAMA_70B), lookup_gpu("H100")
    bf16 = plan_parallelism(model, gpu, 8, max_model_len=8192)
    fp8 = plan_parallelism(model, gpu, 8, max_model_len=8192, quantization="fp8")
    assert fp8.total_weight_bytes < 0.52 * bf16.total_weight_bytes
    assert fp8.gpus < bf16.gpus and fp8.quantization == "fp8"


def test_fp8_needs_a_capable_gpu():
    assert _reason(plan_parallelism, load_model(LLAMA_8B), lookup_gpu("T4"), 4,
                   quantization="fp8").reason == "UnsupportedQuantization"
    assert _reason(plan_parallelism, load_model("deepseek-ai/DeepSeek-V3"), lookup_gpu("V100-32GB"),
                   8).reason == "UnsupportedQuantization"


def test_dtype_follows_the_gpu():
    model = load_model(LLAMA_8B)
    assert plan_parallelism(model, lookup_gpu("T4"), 4, max_model_len=4096).dtype == "float16"
    assert _reason(plan_parallelism, model, lookup_gpu("T4"), 4, dtype="bfloat16").reason == "UnsupportedDtype"
    fp32 = plan_parallelism(model, lookup_gpu("H100"), 8, dtype="float32", max_model_len=8192)
    bf16 = plan_parallelism(model, lookup_gpu("H100"), 8, max_model_len=8192)
    assert fp32.dtype == "float32" and fp32.total_weight_bytes == 2 * bf16.total_weight_bytes
    gpt2 = plan_parallelism(load_model("openai-community/gpt2"), lookup_gpu("L4"), 1)
    assert gpt2.dtype == "bfloat16"                     # float32 checkpoints are served in 16 bit


def test_fp8_kv_cache_doubles_the_tokens():
    model, gpu = load_model(LLAMA_8B), lookup_gpu("H100")
    auto = plan_parallelism(model, gpu, 8, max_model_len=8192)
    fp8 = plan_parallelism(model, gpu, 8, max_model_len=8192, kv_cache_dtype="fp8")
    assert fp8.kv_cache_tokens == pytest.approx(2 * auto.kv_cache_tokens, rel=0.001)


def test_lower_utilization_leaves_fewer_tokens():
    model, gpu = load_model(LLAMA_8B), lookup_gpu("H100")
    high = plan_parallelism(model, gpu, 8, max_model_len=8192, gpu_memory_utilization=0.95)
    low = plan_parallelism(model, gpu, 8, max_model_len=8192, gpu_memory_utilization=0.5)
    assert low.kv_cache_tokens < high.kv_cache_tokens
    assert "50%" in low.reason
