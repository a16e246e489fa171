"""Acceptance table: real model configs on several GPU types; each plan fits and is minimal.

Expected layouts agree with what is known to run with vLLM (e.g. Llama 3.1 405B in
bf16 takes two 8 x H100 nodes but one 8 x H200 node, DeepSeek-V3 likewise; a 70B bf16
model does not leave KV room on 2 x H100 at vLLM's H100 defaults).
"""

from __future__ import annotations

import json

import pytest

from scibox_operator.planning import lookup_gpu, plan_parallelism

from .conftest import load_model
from .plan_checks import assert_fits, assert_minimal, assert_rules

# model, GPU, GPUs per node, max_model_len -> (tensor parallel, pipeline parallel, nodes)
TABLE = [
    ("meta-llama/Llama-3.1-8B-Instruct", "L4", 8, 8192, (1, 1, 1)),
    ("meta-llama/Llama-3.1-8B-Instruct", "L4", 8, 131072, (2, 1, 1)),
    ("meta-llama/Llama-3.1-8B-Instruct", "T4", 4, 4096, (2, 1, 1)),
    ("meta-llama/Meta-Llama-3-8B-Instruct", "A10G", 4, 8192, (1, 1, 1)),
    ("meta-llama/Llama-3.2-1B-Instruct", "T4", 1, 32768, (1, 1, 1)),
    ("meta-llama/Llama-3.2-3B-Instruct", "RTX-4090", 1, 65536, (1, 1, 1)),
    ("meta-llama/Llama-2-7b-hf", "A10G", 4, 4096, (1, 1, 1)),
    ("meta-llama/Llama-2-13b-hf", "L4", 8, 4096, (2, 1, 1)),
    ("meta-llama/Llama-2-70b-hf", "B200", 8, 4096, (1, 1, 1)),
    ("meta-llama/Llama-3.1-70B-Instruct", "H100", 8, 8192, (4, 1, 1)),
    ("meta-llama/Llama-3.1-70B-Instruct", "A100-80GB", 8, 8192, (2, 1, 1)),
    ("meta-llama/Llama-3.1-70B-Instruct", "L40S", 8, 8192, (4, 1, 1)),
    ("RedHatAI/Meta-Llama-3.1-70B-Instruct-FP8", "L40S", 8, 8192, (2, 1, 1)),
    ("meta-llama/Llama-3.1-405B-Instruct", "H100", 8, 8192, (8, 2, 2)),
    ("meta-llama/Llama-3.1-405B-Instruct", "H200", 8, 8192, (8, 1, 1)),
    ("meta-llama/Llama-3.1-405B-Instruct", "A100-80GB", 4, 8192, (4, 3, 3)),
    ("mistralai/Mistral-7B-Instruct-v0.3", "L4", 8, 32768, (1, 1, 1)),
    ("mistralai/Mistral-Nemo-Instruct-2407", "A10G", 4, 32768, (2, 1, 1)),
    ("mistralai/Mixtral-8x7B-Instruct-v0.1", "A100-80GB", 8, 32768, (2, 1, 1)),
    ("mistralai/Mixtral-8x22B-Instruct-v0.1", "H100", 8, 65536, (8, 1, 1)),
    ("mistralai/Mixtral-8x22B-Instruct-v0.1", "H100", 8, 16384, (4, 1, 1)),
    ("Qwen/Qwen2.5-0.5B-Instruct", "T4", 1, 32768, (1, 1, 1)),
    ("Qwen/Qwen2.5-7B-Instruct", "L4", 8, 32768, (1, 1, 1)),
    ("Qwen/Qwen2.5-72B-Instruct", "H100", 8, 32768, (4, 1, 1)),
    ("Qwen/Qwen2.5-72B-Instruct-AWQ", "L4", 8, 32768, (4, 1, 1)),
    ("Qwen/Qwen2.5-72B-Instruct-AWQ", "A100-40GB", 8, 32768, (2, 1, 1)),
    # 28 heads / 4 KV heads: TP stops at 4 on an 8-GPU node, so two stages share the node.
    ("Qwen/Qwen2-57B-A14B-Instruct", "L4", 8, 32768, (4, 2, 1)),
    ("Qwen/Qwen3-8B", "L4", 8, 40960, (2, 1, 1)),
    ("Qwen/Qwen3-8B", "L4", 8, 8192, (1, 1, 1)),
    ("Qwen/Qwen3-32B", "A100-40GB", 8, 40960, (4, 1, 1)),
    ("Qwen/Qwen3-32B", "A100-40GB", 8, 8192, (2, 1, 1)),
    ("Qwen/Qwen3-30B-A3B", "L40S", 8, 40960, (2, 1, 1)),
    ("Qwen/Qwen3-235B-A22B", "H100", 8, 40960, (8, 1, 1)),
    ("Qwen/Qwen3-235B-A22B", "H200", 8, 40960, (4, 1, 1)),
    ("google/gemma-2-9b-it", "L4", 8, 8192, (2, 1, 1)),
    ("google/gemma-2-27b-it", "L4", 8, 8192, (4, 1, 1)),
    ("google/gemma-3-1b-it", "RTX-4090", 1, 32768, (1, 1, 1)),
    ("google/gemma-3-27b-it", "L40S", 8, 32768, (2, 1, 1)),
    ("microsoft/Phi-3-mini-4k-instruct", "T4", 1, 4096, (1, 1, 1)),
    ("microsoft/Phi-3-medium-4k-instruct", "L4", 8, 4096, (2, 1, 1)),
    ("deepseek-ai/DeepSeek-V2-Lite-Chat", "L4", 8, 32768, (2, 1, 1)),
    ("deepseek-ai/DeepSeek-V2-Chat-0628", "H200", 8, 32768, (4, 1, 1)),
    ("deepseek-ai/DeepSeek-V3", "H200", 8, 32768, (8, 1, 1)),
    ("deepseek-ai/DeepSeek-V3", "H100", 8, 32768, (8, 2, 2)),
    ("openai-community/gpt2", "T4", 1, 1024, (1, 1, 1)),
    ("openai-community/gpt2-xl", "A10G", 1, 1024, (1, 1, 1)),
    ("facebook/opt-125m", "L4", 1, 2048, (1, 1, 1)),
    ("facebook/opt-66b", "A100-40GB", 8, 2048, (4, 1, 1)),
]


def test_table_covers_enough_models_and_gpus():
    assert len({row[0] for row in TABLE}) >= 20
    assert len({row[1] for row in TABLE}) >= 6


@pytest.mark.parametrize("name,gpu_name,gpus_per_node,max_model_len,expected", TABLE,
                         ids=[f"{r[0].split('/')[1]}-{r[1]}-{r[3]}" for r in TABLE])
def test_plan_table(name, gpu_name, gpus_per_node, max_model_len, expected):
    model, gpu = load_model(name), lookup_gpu(gpu_name)
    plan = plan_parallelism(model, gpu, gpus_per_node, max_model_len=max_model_len)
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size, plan.nodes) == expected, plan.reason
    assert_rules(model, plan, gpus_per_node)
    assert_fits(model, gpu, plan, gpus_per_node, max_model_len=max_model_len)
    assert_minimal(model, gpu, plan, gpus_per_node, max_model_len=max_model_len)
    data = json.loads(json.dumps(plan.to_json()))
    for key in ("tensorParallelSize", "pipelineParallelSize", "gpus", "nodes", "weightBytesPerGpu",
                "kvCacheTokens", "reason"):
        assert key in data
    assert gpu.name in plan.reason and f"{plan.gpus} " in plan.reason
