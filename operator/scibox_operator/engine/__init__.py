"""The vLLM engine contract: argv rendering and checks (vllm_args), the model cache layout (cache_layout)."""
