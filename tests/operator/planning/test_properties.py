"""Property tests: plans never break the divisibility and memory rules, and bad input
never crashes the planner (it raises PlanError or plans)."""

from __future__ import annotations

import copy

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from scibox_operator.planning import GPU_TABLE, PlanError, model_facts_from_config, plan_parallelism

from .conftest import CONFIG_NAMES, load_config, load_model
from .plan_checks import assert_fits, assert_minimal, assert_rules

KNOWN_REASONS = {
    "InvalidModelConfig", "UnsupportedArchitecture", "UnknownGpu", "UnsupportedDtype",
    "UnsupportedQuantization", "QuantizationMismatch", "InvalidParallelSize",
    "TensorParallelNotDivisor", "TensorParallelExceedsNode", "PipelineParallelTooLarge",
    "InvalidGpuMemoryUtilization", "InvalidConcurrencyTarget", "InvalidMaxModelLen",
    "MaxModelLenTooLarge", "ModelTooLarge", "InsufficientKvCache", "TooManyNodes",
}

PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                             suppress_health_check=[HealthCheck.too_slow])


@st.composite
def llama_like_configs(draw) -> dict:
    """Decoder configs shaped like the real families, with sizes drawn at random."""
    model_type = draw(st.sampled_from(["llama", "mistral", "qwen2", "qwen3", "gemma2", "mixtral",
                                       "qwen3_moe"]))
    kv_heads = draw(st.sampled_from([1, 2, 4, 5, 8, 10, 16, 32]))
    group = draw(st.sampled_from([1, 2, 3, 4, 5, 7, 8]))
    heads = kv_heads * group
    head_dim = draw(st.sampled_from([64, 80, 96, 128, 256]))
    config = {
        "model_type": model_type,
        "hidden_size": heads * head_dim if model_type != "gemma2" else draw(st.integers(512, 8192)),
        "head_dim": head_dim,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "num_hidden_layers": draw(st.integers(1, 128)),
        "intermediate_size": 128 * draw(st.integers(2, 400)),
        "vocab_size": draw(st.integers(1000, 260000)),
        "max_position_embeddings": 131072,
        "torch_dtype": draw(st.sampled_from(["bfloat16", "float16", "float32"])),
        "tie_word_embeddings": draw(st.booleans()),
    }
    if model_type == "mixtral":
        config.update(num_local_experts=draw(st.sampled_from([4, 8, 16])), num_experts_per_tok=2)
    if model_type == "qwen3_moe":
        config.update(num_experts=draw(st.sampled_from([16, 64, 128])), num_experts_per_tok=8,
                      moe_intermediate_size=128 * draw(st.integers(1, 16)))
    return config


def _check(model, gpu, gpus_per_node, options, tp=None, pp=None):
    options = dict(options)
    max_nodes = options.pop("max_nodes", None)
    try:
        plan = plan_parallelism(model, gpu, gpus_per_node, tensor_parallel_size=tp,
                                pipeline_parallel_size=pp, max_nodes=max_nodes, **options)
    except PlanError as error:
        assert error.reason in KNOWN_REASONS
        assert error.message
        return None
    assert max_nodes is None or plan.nodes <= max_nodes
    assert_rules(model, plan, gpus_per_node)
    assert_fits(model, gpu, plan, gpus_per_node, **options)
    if tp is not None:
        assert plan.tensor_parallel_size == tp          # never silently changed
    if pp is not None:
        assert plan.pipeline_parallel_size == pp
    if tp is None and pp is None:
        assert_minimal(model, gpu, plan, gpus_per_node, max_nodes=max_nodes, **options)
    return plan


options_strategy = st.fixed_dictionaries({
    "max_model_len": st.integers(256, 131072),
    "gpu_memory_utilization": st.floats(0.5, 0.98),
    "concurrency_target": st.integers(1, 8),
    "kv_cache_dtype": st.sampled_from(["auto", "auto", "fp8"]),
    "max_nodes": st.one_of(st.none(), st.integers(1, 4)),
})


@PROPERTY_SETTINGS
@given(config=llama_like_configs(), gpu=st.sampled_from(GPU_TABLE),
       gpus_per_node=st.sampled_from([1, 2, 4, 8]), options=options_strategy)
def test_auto_plans_obey_rules_fit_and_are_minimal(config, gpu, gpus_per_node, options):
    _check(model_facts_from_config(config), gpu, gpus_per_node, options)


@PROPERTY_SETTINGS
@given(config=llama_like_configs(), gpu=st.sampled_from(GPU_TABLE),
       gpus_per_node=st.sampled_from([1, 2, 4, 8]), options=options_strategy,
       tp=st.one_of(st.none(), st.integers(1, 16)), pp=st.one_of(st.none(), st.integers(1, 12)))
def test_explicit_sizes_are_validated_and_kept(config, gpu, gpus_per_node, options, tp, pp):
    assume(tp is not None or pp is not None)
    _check(model_facts_from_config(config), gpu, gpus_per_node, options, tp, pp)


@PROPERTY_SETTINGS
@given(name=st.sampled_from(CONFIG_NAMES), gpu=st.sampled_from(GPU_TABLE),
       gpus_per_node=st.sampled_from([1, 2, 4, 8]), max_model_len=st.integers(256, 65536),
       concurrency=st.integers(1, 16))
def test_real_models_on_any_gpu(name, gpu, gpus_per_node, max_model_len, concurrency):
    model = load_model(name)
    options = {"max_model_len": min(max_model_len, model.derived_max_model_len),
               "concurrency_target": concurrency}
    _check(model, gpu, gpus_per_node, options)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10**6) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=6,
)


@PROPERTY_SETTINGS
@given(name=st.sampled_from(CONFIG_NAMES), key=st.sampled_from([
    "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size",
    "intermediate_size", "head_dim", "tie_word_embeddings", "torch_dtype", "quantization_config",
    "max_position_embeddings", "rope_scaling", "num_local_experts", "num_experts", "n_routed_experts",
    "q_lora_rank", "kv_lora_rank", "n_embd", "n_head", "ffn_dim", "text_config", "vision_config",
    "architectures", "model_type", "mlp_only_layers", "first_k_dense_replace",
]), value=json_values)
def test_garbled_configs_raise_plan_error_or_plan(name, key, value):
    config = copy.deepcopy(load_config(name))
    config[key] = value
    try:
        model = model_facts_from_config(config)
        plan_parallelism(model, GPU_TABLE[-1], 8, max_model_len=min(2048, model.derived_max_model_len))
    except PlanError as error:
        assert error.reason in KNOWN_REASONS
