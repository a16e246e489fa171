"""Weight bytes: of the checkpoint, and of each GPU of a tensor x pipeline layout."""

from __future__ import annotations

import pytest

from scibox_operator.planning.weights import (
    Storage,
    estimated_checkpoint_bytes,
    pipeline_stages,
    total_weight_bytes,
    weight_bytes_per_stage,
)

from .conftest import load_model

LLAMA_70B = "meta-llama/Llama-3.1-70B-Instruct"


def test_weight_bytes_match_the_safetensors_index_of_llama_3_1_8b():
    # model.safetensors.index.json of meta-llama/Llama-3.1-8B-Instruct: total_size 16060522496.
    facts = load_model("meta-llama/Llama-3.1-8B-Instruct")
    assert total_weight_bytes(facts, Storage.of("bfloat16", None)) == 16_060_522_496


def test_fp8_checkpoint_is_about_half_the_bf16_one():
    fp8 = load_model("RedHatAI/Meta-Llama-3.1-70B-Instruct-FP8")
    bf16 = load_model("meta-llama/Llama-3.1-70B-Instruct")
    ratio = estimated_checkpoint_bytes(fp8) / estimated_checkpoint_bytes(bf16)
    assert 0.5 < ratio < 0.52   # embeddings and LM head stay 16-bit


def test_pipeline_stages_match_vllm_partitioning():
    # vllm.distributed.utils.get_pp_indices(126, rank, 4) -> 31, 32, 32, 31 layers
    assert pipeline_stages(126, 4) == [(0, 31), (31, 63), (63, 95), (95, 126)]
    assert pipeline_stages(80, 3) == [(0, 27), (27, 54), (54, 80)]
    assert pipeline_stages(61, 2) == [(0, 31), (31, 61)]
    assert pipeline_stages(12, 1) == [(0, 12)]


def test_pipeline_stages_agree_with_vllm_itself():
    utils = pytest.importorskip("vllm.distributed.utils")
    for layers in (12, 61, 80, 94, 126):
        for pp in (2, 3, 4, 5, 7, 8):
            assert pipeline_stages(layers, pp) == [utils.get_pp_indices(layers, r, pp) for r in range(pp)]


def test_weights_split_by_tensor_parallelism():
    model = load_model(LLAMA_70B)
    storage = Storage.of("bfloat16", None)
    whole = weight_bytes_per_stage(model, 1, 1, storage)[0]
    assert whole == 2 * model.total_params
    for tp in (2, 4, 8):
        share = weight_bytes_per_stage(model, tp, 1, storage)[0]
        assert whole / tp <= share <= whole / tp * 1.001     # only norms are replicated


def test_tied_embedding_costs_a_copy_on_the_last_stage():
    model = load_model("meta-llama/Llama-3.2-1B-Instruct")     # tied
    storage = Storage.of("bfloat16", None)
    whole = weight_bytes_per_stage(model, 1, 1, storage)[0]
    first, last = weight_bytes_per_stage(model, 1, 2, storage)
    embedding = 128256 * 2048 * 2
    assert first + last == pytest.approx(whole + embedding, abs=64 * 2048 * 2 * 2)
