"""Settings a plan is computed under: vLLM's batch defaults per GPU."""

from __future__ import annotations

from scibox_operator.planning import lookup_gpu, vllm_default_batch


def test_vllm_batch_defaults_by_gpu():
    assert vllm_default_batch(lookup_gpu("H100")) == (8192, 1024)
    assert vllm_default_batch(lookup_gpu("A100-80GB")) == (2048, 256)
    assert vllm_default_batch(lookup_gpu("B200")) == (16384, 1024)
    assert vllm_default_batch(lookup_gpu("L4")) == (2048, 256)
