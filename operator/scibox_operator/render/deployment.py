"""The GPU Deployment running vLLM's OpenAI-compatible server."""

from __future__ import annotations

from typing import Any

from scibox_operator.api.names import API_KEY_DIGEST_ANNOTATION, COMPILE_CACHE_MOUNT, OPERATOR_LABEL_PREFIXES
from scibox_operator.api.spec import VLLMDeployment
from scibox_operator.engine.vllm_args import EngineSettings, render_vllm_args
from scibox_operator.planning.adapters import RUNTIME_LORA_ENV, lora_enabled, max_loras
from scibox_operator.planning.serving_plan import GIB, MODELS_MOUNT, ServingPlan, model_dir, tokenizer_dir

from .common import GPU_MEMORY_LABEL as GPU_MEMORY_LABEL  # re-exported: tests and docs read them here
from .common import GPU_PRODUCT_LABEL as GPU_PRODUCT_LABEL
from .common import (
    GPU_RESOURCE,
    SERVER,
    container_security_context,
    metadata,
    pod_security_context,
    selector_labels,
    server_placement,
)
from .compile_cache import compile_cache_key, compile_cache_subpath

CONTAINER_PORT = 8000
PROBE_PERIOD_SECONDS = 10
# Writable places under a read-only root filesystem: vLLM, torch and triton write caches below
# HOME, and NCCL/torch need a large shared-memory /dev/shm for tensor parallel workers.
WRITABLE_HOME = "/tmp"

# Host memory of a server pod besides the weights: the API server, tokenizer and engine core,
# plus one worker process per GPU (torch, its CUDA context, pinned staging buffers).
RUNTIME_BYTES = 2 * GIB
RUNTIME_BYTES_PER_GPU = 2 * GIB
# /dev/shm holds vLLM's shared-memory queues between the engine and its workers, NCCL's
# intra-node buffers and torch's shared tensors; Docker's 64 MiB default breaks tensor
# parallelism. It is memory-backed, so it counts against the pod's memory (and its request).
SHM_BYTES_PER_GPU = 1 * GIB
# When the checkpoint size is unknown (pvc:// models, the hub unreachable): a 4B-parameter bf16
# model. Requests only reserve: a larger model still runs, it is just less protected from
# eviction; set resources.memory for it.
UNKNOWN_WEIGHT_BYTES_PER_POD = 8 * GIB


# vLLM 0.32's --runner: a generating model keeps vLLM's default (nothing passed, so existing pods
# are not restarted); an embedding model runs the pooling runner (vLLM adapts a *ForCausalLM
# checkpoint itself: `--convert auto` resolves to embed).
RUNNER_OF_TASK: dict[str, str | None] = {"generate": None, "embed": "pooling"}


def engine_settings(vd: VLLMDeployment, plan: ServingPlan) -> EngineSettings:
    spec = vd.spec
    engine = spec.engine
    return EngineSettings(
        model=model_dir(vd),
        served_model_name=spec.model.served_name,
        host="0.0.0.0",
        port=CONTAINER_PORT,
        tensor_parallel_size=plan.tensor_parallel_size,
        pipeline_parallel_size=plan.pipeline_parallel_size,
        max_model_len=spec.model.max_model_len,
        gpu_memory_utilization=engine.gpu_memory_utilization,
        max_num_batched_tokens=engine.max_num_batched_tokens,
        max_num_seqs=engine.max_num_seqs,
        enable_prefix_caching=engine.enable_prefix_caching,
        enable_chunked_prefill=engine.enable_chunked_prefill,
        trust_remote_code=spec.model.trust_remote_code,
        dtype=spec.model.dtype,
        quantization=spec.model.quantization,
        kv_cache_dtype=engine.kv_cache_dtype,
        tokenizer=tokenizer_dir(vd),
        runner=RUNNER_OF_TASK[spec.model.task],
        extra_args=(*((f"--load-format={engine.load_format}",) if engine.load_format else ()),
                    *engine.extra_args),
        max_loras=max_loras(vd),
        max_lora_rank=engine.max_lora_rank if lora_enabled(vd) else None,
    )


def server_env(vd: VLLMDeployment) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "HOME", "value": WRITABLE_HOME},
        # The weights come from the cache volume only; a server must never reach for the hub.
        {"name": "HF_HUB_OFFLINE", "value": "1"},
        {"name": "HF_HOME", "value": f"{WRITABLE_HOME}/hf"},
        {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
        {"name": "VLLM_DO_NOT_TRACK", "value": "1"},
        {"name": "DO_NOT_TRACK", "value": "1"},
    ]
    ref = vd.spec.auth.api_key_secret_ref
    if ref is not None:
        # Through the environment only: arguments show up in `ps`, logs and the pod spec.
        env.append({"name": "VLLM_API_KEY",
                    "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    if lora_enabled(vd):  # the operator loads spec.adapters through vLLM's runtime endpoints
        env.append({"name": RUNTIME_LORA_ENV, "value": "True"})
    env.extend({"name": e.name, "value": e.value} for e in vd.spec.engine.env)
    return env


def _gib(n_bytes: int) -> str:
    return f"{-(-n_bytes // GIB)}Gi"


def shm_bytes(plan: ServingPlan) -> int:
    return SHM_BYTES_PER_GPU * max(1, plan.gpus_per_pod)


def planned_memory_bytes(plan: ServingPlan) -> int:
    """Weights the pod loads (they pass through the page cache, charged to the pod), the
    processes around them, and /dev/shm."""
    weights = plan.weight_bytes_per_pod if plan.weight_bytes_per_pod is not None else UNKNOWN_WEIGHT_BYTES_PER_POD
    gpus = max(1, plan.gpus_per_pod)
    return weights + RUNTIME_BYTES + RUNTIME_BYTES_PER_GPU * gpus + shm_bytes(plan)


def planned_cpu(plan: ServingPlan) -> str:
    """One core per GPU worker process: vLLM's workers busy-wait on their GPU, and a starved
    worker stalls the whole tensor-parallel group. No CPU limit: throttling shows up as latency."""
    return str(max(1, plan.gpus_per_pod))


def _resources(vd: VLLMDeployment, plan: ServingPlan) -> dict[str, Any]:
    """GPUs from the plan; CPU and memory requested from the plan so the pod is never BestEffort
    (the first to be evicted under memory pressure). The spec's resources.cpu / resources.memory
    replace the planned value and also become the limit (both set: Guaranteed)."""
    limits: dict[str, Any] = {GPU_RESOURCE: str(plan.gpus_per_pod)}
    requests: dict[str, Any] = {"cpu": planned_cpu(plan), "memory": _gib(planned_memory_bytes(plan))}
    res = vd.spec.resources
    for key, value in (("cpu", res.cpu), ("memory", res.memory)):
        if value is not None:
            limits[key] = str(value)
            requests[key] = str(value)
    return {"limits": limits, "requests": requests}


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }




def gateway_pod_labels(vd: VLLMDeployment) -> dict[str, str]:
    """The VLLMDeployment's own labels, which its server pods carry so that a VLLMGateway's
    router, selecting worker pods by label, fronts the VLLMDeployments its selector matches.
    The operator's own keys (app.kubernetes.io/*, scibox.io/*) are never taken from the user."""
    return {k: v for k, v in vd.labels if not k.startswith(OPERATOR_LABEL_PREFIXES)}


def compile_cache_parts(vd: VLLMDeployment, plan: ServingPlan, args: list[str],
                        env: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """VLLM_CACHE_ROOT on the model's cache claim, in the folder of this configuration's compile
    key, mounted writable (only that folder: the weights stay read-only). (env, mounts) to add;
    none for a pvc:// model, whose claim is the user's and is never written."""
    if vd.spec.model.is_pvc:
        return [], []
    key = compile_cache_key(image=plan.image, model=vd.spec.model.name, revision=vd.spec.model.revision,
                            gpu_product=plan.gpu_product, args=args,
                            env={e["name"]: e["value"] for e in env if "value" in e})
    return ([{"name": "VLLM_CACHE_ROOT", "value": COMPILE_CACHE_MOUNT}],
            [{"name": "model-cache", "mountPath": COMPILE_CACHE_MOUNT, "subPath": compile_cache_subpath(key)}])


def render_deployment(vd: VLLMDeployment, plan: ServingPlan, *, api_key_digest: str | None = None) -> dict[str, Any]:
    spec = vd.spec
    startup_failures = max(1, -(-spec.rollout.startup_timeout_seconds // PROBE_PERIOD_SECONDS))
    args = render_vllm_args(engine_settings(vd, plan))
    env = server_env(vd)
    compile_env, compile_mounts = compile_cache_parts(vd, plan, args, env)
    container = {
        "name": "vllm",
        "image": plan.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python3", "-m", "vllm.entrypoints.openai.api_server"],
        "args": args,
        # the service's env first, the user's last (a removed user entry leaves a prefix)
        "env": env[:len(env) - len(spec.engine.env)] + compile_env + env[len(env) - len(spec.engine.env):],
        "ports": [{"name": "http", "containerPort": CONTAINER_PORT, "protocol": "TCP"}],
        "resources": _resources(vd, plan),
        "startupProbe": _probe("/health", PROBE_PERIOD_SECONDS, startup_failures),
        "readinessProbe": _probe("/health", PROBE_PERIOD_SECONDS, 3),
        "livenessProbe": _probe("/health", 15, 4),
        "securityContext": container_security_context(),
        "volumeMounts": [
            {"name": "model-cache", "mountPath": MODELS_MOUNT, "readOnly": True},
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "tmp", "mountPath": WRITABLE_HOME},
            *compile_mounts,
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        # With LoRA, adapter paths sent to /v1/load_lora_adapter are relative to the cache mount.
        **({"workingDir": MODELS_MOUNT} if lora_enabled(vd) else {}),
    }
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "terminationGracePeriodSeconds": 60,
        "containers": [container],
        "volumes": [
            {"name": "model-cache",
             # Read-only at the volume when nothing is written to it; else each mount says.
             "persistentVolumeClaim": {"claimName": plan.cache_claim,
                                       **({} if compile_mounts else {"readOnly": True})}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": _gib(shm_bytes(plan))}},
            {"name": "tmp", "emptyDir": {}},
        ],
        **server_placement(vd, plan.gpu_product),
    }

    if spec.rollout.strategy == "Recreate":
        strategy: dict[str, Any] = {"type": "Recreate"}
    else:
        strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}

    selector = selector_labels(vd, SERVER)
    meta = metadata(vd, vd.name, SERVER)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": spec.replicas,
            "revisionHistoryLimit": 3,
            "progressDeadlineSeconds": spec.rollout.startup_timeout_seconds + 600,
            "strategy": strategy,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": {**gateway_pod_labels(vd), **meta["labels"]},
                             **({"annotations": {API_KEY_DIGEST_ANNOTATION: api_key_digest}}
                                if api_key_digest and spec.auth.api_key_secret_ref else {})},
                "spec": pod_spec,
            },
        },
    }
