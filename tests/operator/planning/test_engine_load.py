"""The operator's plan follows the engine settings that change GPU memory use (issue 19):
maxNumBatchedTokens (activation buffers), maxNumSeqs (the sampler's logits rows), kvCacheDtype (KV
bytes per token) and targetConcurrentSequences (full-length sequences the KV cache must hold).

Each knob is shown to change the plan (more GPUs, fewer GPUs, or a refusal), and removing it to
give back the plan made without it. The spec goes through the real parser and the real planner
with real public configs, on GPU nodes as GPU Feature Discovery labels them.
"""

from __future__ import annotations

import pytest

from scibox_operator.api.spec import InvalidSpec, parse
from scibox_operator.planning.serving_plan import GpuNode, PlanFailure, decide_serving_plan

from .conftest import load_config

L4 = (("nvidia.com/gpu.memory", "23034"), ("nvidia.com/gpu.product", "NVIDIA-L4"))
H100 = (("nvidia.com/gpu.memory", "81559"), ("nvidia.com/gpu.product", "NVIDIA-H100-80GB-HBM3"))
L4_NODES = [GpuNode(f"l4-{i}", L4, 8) for i in range(3)]
H100_NODES = [GpuNode(f"h100-{i}", H100, 8) for i in range(2)]
LLAMA_8B = "meta-llama--Llama-3.1-8B-Instruct"
LLAMA_70B = "meta-llama--Llama-3.1-70B-Instruct"


def spec(engine: dict | None = None, max_model_len: int = 32768) -> dict:
    return {"metadata": {"name": "m", "namespace": "n"},
            "spec": {"model": {"name": "org/model", "maxModelLen": max_model_len}, "engine": engine or {}}}


def layout(config: str, nodes: list[GpuNode], engine: dict | None = None) -> tuple[int, int, int] | str:
    """(tensor, pipeline, nodes) of the plan, or the refusal's reason."""
    try:
        plan = decide_serving_plan(parse(spec(engine)), config=load_config(config), safetensors_index=None,
                                   nodes=nodes, cache_shared=False)
    except PlanFailure as exc:
        return exc.reason
    return plan.tensor_parallel_size, plan.pipeline_parallel_size, plan.nodes


# Llama 3.1 8B at 32k context on L4s (24 GB) takes TP 2 with vLLM's defaults for that GPU
# (2048 batched tokens, 256 sequences); Llama 3.1 70B on H100s takes TP 4.
BASE = {LLAMA_8B: (2, 1, 1), LLAMA_70B: (4, 1, 1)}
CASES = [
    # 256k batched tokens: ~12 GiB of forward-pass buffers per GPU at TP 2.
    (LLAMA_8B, L4_NODES, {"maxNumBatchedTokens": 262144}, (4, 1, 1)),
    # 2048 sequences: 2048 x 128256 float32 logits and their temporaries (~9 GiB) on the last stage.
    (LLAMA_8B, L4_NODES, {"maxNumSeqs": 2048}, (4, 1, 1)),
    # 4096 sequences: the sampler alone (~19 GiB) leaves no L4 room for weights, whatever the TP.
    (LLAMA_8B, L4_NODES, {"maxNumSeqs": 4096}, "ModelTooLarge"),
    # fp8 halves the 4 GiB a 32k sequence takes in bf16: one L4 holds it with the weights.
    (LLAMA_8B, L4_NODES, {"kvCacheDtype": "fp8"}, (1, 1, 1)),
    (LLAMA_8B, L4_NODES, {"kvCacheDtype": "fp8_e5m2"}, (1, 1, 1)),
    (LLAMA_8B, L4_NODES, {"kvCacheDtype": "bfloat16"}, (2, 1, 1)),  # the serving dtype: no change
    # 64 sequences of 32k (2M tokens, 640 GiB of KV): two nodes of eight H100s.
    (LLAMA_70B, H100_NODES, {"targetConcurrentSequences": 64}, (8, 2, 2)),
    (LLAMA_70B, H100_NODES, {"targetConcurrentSequences": 4096}, "InsufficientKvCache"),
]


@pytest.mark.parametrize("config,nodes,engine,expected", CASES,
                         ids=[f"{c.split('--')[1]}-{e}" for c, _, e, _ in CASES])
def test_each_engine_knob_changes_the_plan_and_removing_it_restores_it(config, nodes, engine, expected):
    assert layout(config, nodes) == BASE[config]
    assert layout(config, nodes, engine) == expected
    assert layout(config, nodes, {}) == BASE[config], "the knob removed: the plan made without it"


def test_more_batched_tokens_only_ever_reserve_more():
    """Monotone: raising the batch never frees memory for the KV cache (nor fewer GPUs)."""
    gpus = []
    for tokens in (2048, 16384, 65536, 131072, 262144):
        tp, pp, _ = layout(LLAMA_8B, L4_NODES, {"maxNumBatchedTokens": tokens})
        gpus.append(tp * pp)
    assert gpus == sorted(gpus) and gpus[-1] > gpus[0]


def test_a_refusal_for_concurrency_names_the_numbers():
    with pytest.raises(PlanFailure) as info:
        decide_serving_plan(parse(spec({"targetConcurrentSequences": 4096})), config=load_config(LLAMA_70B),
                            safetensors_index=None, nodes=H100_NODES, cache_shared=False)
    assert info.value.reason == "InsufficientKvCache"
    assert "KV" in info.value.message or "kv" in info.value.message.lower()


@pytest.mark.parametrize("engine,field", [
    ({"kvCacheDtype": "int2"}, "kvCacheDtype"),
    ({"kvCacheDtype": "fp8_inc"}, "kvCacheDtype"),          # Gaudi only: its bytes are not planned
    ({"kvCacheDtype": ""}, "kvCacheDtype"),
    ({"targetConcurrentSequences": 0}, "targetConcurrentSequences"),
    ({"targetConcurrentSequences": 5000}, "targetConcurrentSequences"),
    ({"extraArgs": ["--kv-cache-dtype", "fp8"]}, "kv-cache-dtype"),
    ({"extraArgs": ["--kv_cache_dtype=fp8"]}, "kv-cache-dtype"),
])
def test_bad_values_of_the_new_fields_are_refused_by_the_spec(engine, field):
    with pytest.raises(InvalidSpec, match=field):
        parse(spec(engine))
