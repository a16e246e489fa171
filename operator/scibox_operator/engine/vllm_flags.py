"""How many value tokens each vLLM 0.32 server flag takes, for the shape check of extra args.

A bare token that no flag takes as its value becomes vLLM's positional `model_tag`, which replaces
`--model`: it must never reach the server's argv. Flags in neither set take exactly one value.
Generated from vLLM's own parser (make_arg_parser); tests/operator/engine/test_vllm_flags.py
compares the sets with the parser of the installed vLLM, so an upgrade that changes them fails.
"""

# store_true / store_false / BooleanOptionalAction spellings: no value token.
NO_VALUE_FLAGS: frozenset[str] = frozenset({
    "--aggregate-engine-logging", "--allow-credentials", "--allow-deprecated-quantization",
    "--async-scheduling", "--cohere-is-reasoning-model", "--cudagraph-metrics", "--data-parallel-external-lb",
    "--data-parallel-hybrid-lb", "--data-parallel-multi-port-external-lb", "--dcp-q-replicate",
    "--disable-cascade-attn", "--disable-chunked-mm-input", "--disable-custom-all-reduce",
    "--disable-fastapi-docs", "--disable-hybrid-kv-cache-manager", "--disable-log-stats",
    "--disable-nccl-for-dp-synchronization", "--disable-sliding-window", "--disable-uvicorn-access-log",
    "--enable-auto-tool-choice", "--enable-batch-sharded-sampling", "--enable-chunked-prefill",
    "--enable-cumem-allocator", "--enable-dbo", "--enable-elastic-ep", "--enable-ep-weight-filter",
    "--enable-eplb", "--enable-expert-parallel", "--enable-fault-tolerance",
    "--enable-flash-late-interaction", "--enable-flashinfer-autotune", "--enable-force-include-usage",
    "--enable-hc-sp", "--enable-layerwise-nvtx-tracing", "--enable-log-deltas", "--enable-log-outputs",
    "--enable-log-requests", "--enable-logging-iteration-details", "--enable-lora",
    "--enable-mamba-cache-stochastic-rounding", "--enable-mamba-shared-prefix-checkpoint",
    "--enable-mfu-metrics", "--enable-mixed-moe-lora-format", "--enable-mm-embeds",
    "--enable-moe-shared-loras", "--enable-nccl-comm-suspend", "--enable-offline-docs",
    "--enable-per-request-metrics", "--enable-prefix-caching", "--enable-prompt-embeds",
    "--enable-prompt-tokens-details", "--enable-request-id-headers", "--enable-return-routed-experts",
    "--enable-scale-out", "--enable-server-load-tracking", "--enable-shm-tensor-arena", "--enable-sleep-mode",
    "--enable-ssl-refresh", "--enable-tokenizer-info-endpoint", "--enable-tower-connector-lora",
    "--enable-trace-replay", "--enforce-eager", "--exclude-tools-when-tool-choice-none",
    "--fail-on-environ-validation", "--fully-sharded-loras", "--grpc", "--headless", "--help",
    "--interleave-mm-strings", "--jit-monitor-verbose", "--kv-cache-metrics", "--kv-sharing-fast-prefill",
    "--language-model-only", "--log-error-stack", "--long-prefill-token-threshold-adaptive",
    "--mm-device-do-normalize", "--mm-encoder-only", "--no-allow-credentials",
    "--no-allow-deprecated-quantization", "--no-async-scheduling", "--no-cohere-is-reasoning-model",
    "--no-cudagraph-metrics", "--no-data-parallel-external-lb", "--no-data-parallel-hybrid-lb",
    "--no-dcp-q-replicate", "--no-disable-cascade-attn", "--no-disable-chunked-mm-input",
    "--no-disable-custom-all-reduce", "--no-disable-fastapi-docs", "--no-disable-hybrid-kv-cache-manager",
    "--no-disable-nccl-for-dp-synchronization", "--no-disable-sliding-window",
    "--no-disable-uvicorn-access-log", "--no-enable-auto-tool-choice", "--no-enable-batch-sharded-sampling",
    "--no-enable-chunked-prefill", "--no-enable-cumem-allocator", "--no-enable-dbo", "--no-enable-elastic-ep",
    "--no-enable-ep-weight-filter", "--no-enable-eplb", "--no-enable-expert-parallel",
    "--no-enable-fault-tolerance", "--no-enable-flash-late-interaction", "--no-enable-flashinfer-autotune",
    "--no-enable-force-include-usage", "--no-enable-hc-sp", "--no-enable-layerwise-nvtx-tracing",
    "--no-enable-log-deltas", "--no-enable-log-outputs", "--no-enable-log-requests",
    "--no-enable-logging-iteration-details", "--no-enable-lora",
    "--no-enable-mamba-cache-stochastic-rounding", "--no-enable-mamba-shared-prefix-checkpoint",
    "--no-enable-mfu-metrics", "--no-enable-mixed-moe-lora-format", "--no-enable-mm-embeds",
    "--no-enable-moe-shared-loras", "--no-enable-nccl-comm-suspend", "--no-enable-offline-docs",
    "--no-enable-per-request-metrics", "--no-enable-prefix-caching", "--no-enable-prompt-embeds",
    "--no-enable-prompt-tokens-details", "--no-enable-request-id-headers",
    "--no-enable-return-routed-experts", "--no-enable-scale-out", "--no-enable-server-load-tracking",
    "--no-enable-shm-tensor-arena", "--no-enable-sleep-mode", "--no-enable-ssl-refresh",
    "--no-enable-tokenizer-info-endpoint", "--no-enable-tower-connector-lora", "--no-enable-trace-replay",
    "--no-enforce-eager", "--no-exclude-tools-when-tool-choice-none", "--no-fail-on-environ-validation",
    "--no-fully-sharded-loras", "--no-interleave-mm-strings", "--no-jit-monitor-verbose",
    "--no-kv-cache-metrics", "--no-kv-sharing-fast-prefill", "--no-language-model-only",
    "--no-log-error-stack", "--no-long-prefill-token-threshold-adaptive", "--no-mm-device-do-normalize",
    "--no-mm-encoder-only", "--no-numa-bind", "--no-ray-workers-use-nsight", "--no-return-sampling-mask",
    "--no-return-tokens-as-token-ids", "--no-scheduler-reserve-full-isl", "--no-skip-mm-profiling",
    "--no-skip-tokenizer-init", "--no-sleep-mode-offload-cudagraph", "--no-specialize-active-lora",
    "--no-swa-bounded-replay", "--no-tokens-only", "--no-trust-remote-code",
    "--no-trust-request-chat-template", "--no-trust-request-mm-kwargs", "--no-use-fp64-gumbel",
    "--no-use-replayssm", "--no-use-tqdm-on-load", "--numa-bind", "--ray-workers-use-nsight",
    "--return-sampling-mask", "--return-tokens-as-token-ids", "--scheduler-reserve-full-isl",
    "--skip-mm-profiling", "--skip-tokenizer-init", "--sleep-mode-offload-cudagraph",
    "--specialize-active-lora", "--swa-bounded-replay", "--tokens-only", "--trust-remote-code",
    "--trust-request-chat-template", "--trust-request-mm-kwargs", "--use-fp64-gumbel", "--use-replayssm",
    "--use-tqdm-on-load", "-dpe", "-dph", "-dpm", "-ep", "-h",
})

# nargs '+' / '*': any number of value tokens.
MANY_VALUE_FLAGS: frozenset[str] = frozenset({
    "--allowed-media-domains", "--api-key", "--collect-detailed-traces", "--cpu-offload-params",
    "--cudagraph-capture-sizes", "--ignore-patterns", "--kv-cache-dtype-skip-layers", "--logits-processors",
    "--lora-modules", "--lora-target-modules", "--numa-bind-cpus", "--numa-bind-nodes", "--offload-params",
    "--served-model-name", "--sleep-preserve-parameter-names",
})
