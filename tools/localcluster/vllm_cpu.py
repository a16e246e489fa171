"""How a vLLM CPU server must be started on these machines (shared by the test fixtures and the
real runner)."""

# Measured here: vLLM CPU needs these to start offline on 2 cores (see ENVIRONMENT-FACTS.md).
# The last four keep every byte on loopback: vLLM reports usage to stats.vllm.ai unless told not
# to, and finds its "own" IP for engine<->worker queues by routing towards 8.8.8.8.
SERVER_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "VLLM_DO_NOT_TRACK": "1",
    "DO_NOT_TRACK": "1",
    "VLLM_HOST_IP": "127.0.0.1",
}
