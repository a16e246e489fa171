"""Which layouts exist: tensor-parallel sizes vLLM can shard, and how stages fill nodes."""

from __future__ import annotations

from scibox_operator.planning import place, tensor_parallel_problem, valid_tensor_parallel_sizes

from .conftest import load_model


def test_kv_heads_must_split_or_replicate_evenly():
    model = load_model("Qwen/Qwen2.5-0.5B-Instruct")                 # 14 heads, 2 KV heads
    assert valid_tensor_parallel_sizes(model, 8) == [1, 2]
    assert "KV heads" in tensor_parallel_problem(model, 7)
    gemma = load_model("google/gemma-3-1b-it")                       # 4 heads, 1 KV head
    assert valid_tensor_parallel_sizes(gemma, 8) == [1, 2, 4]


def test_place_keeps_tp_inside_nodes():
    assert place(8, 1, 8) == (1, 8)
    assert place(8, 2, 8) == (2, 8)
    assert place(4, 2, 8) == (1, 8)
    assert place(4, 3, 8) == (3, 4)          # 3 stages do not split evenly over 2 nodes
    assert place(2, 6, 8) == (2, 6)
    assert place(16, 1, 8) is None
