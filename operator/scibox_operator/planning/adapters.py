"""LoRA adapters of a VLLMDeployment (pure): whether the server runs with LoRA, where each
adapter lives in the server container, and the name of the Job that fetches it.

What is rendered into the pod template depends only on `engine.maxLoras`, `engine.maxLoraRank`
and whether `spec.adapters` is empty: the adapter list itself never is (it is loaded and
unloaded at runtime, readiness/adapters.py), so adding or removing an adapter restarts nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from scibox_operator.api.spec import DEFAULT_MAX_LORAS, Adapter, VLLMDeployment, dns_name, short_hash
from scibox_operator.engine.cache_layout import model_cache_path
from scibox_operator.planning.serving_plan import MODELS_MOUNT

# vLLM reads runtime-loaded adapters only with this set (and refuses /v1/load_lora_adapter without).
RUNTIME_LORA_ENV = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"


def lora_enabled(vd: VLLMDeployment) -> bool:
    """LoRA is on with any adapter, or when engine.maxLoras is set (so that the first adapter
    added later restarts nothing either)."""
    return vd.spec.model.task == "generate" and (bool(vd.spec.adapters) or vd.spec.engine.max_loras is not None)


def max_loras(vd: VLLMDeployment) -> int | None:
    """--max-loras: adapters the server holds at once, or None without LoRA."""
    if not lora_enabled(vd):
        return None
    return vd.spec.engine.max_loras or DEFAULT_MAX_LORAS


def adapter_dir(vd: VLLMDeployment, adapter: Adapter) -> str:
    """The adapter's folder inside the server container: its cache folder (the download Job's
    layout, one per adapter repo and revision), or its path on the pvc:// model's claim."""
    if adapter.is_pvc:
        _, _, path = adapter.source.removeprefix("pvc://").partition("/")
        return f"{MODELS_MOUNT}/{path.strip('/')}"
    return model_cache_path(MODELS_MOUNT, adapter.source, adapter.revision)


def adapter_load_path(vd: VLLMDeployment, adapter: Adapter) -> str:
    """What /v1/load_lora_adapter gets as lora_path: the folder relative to the cache mount,
    which is the server container's working directory when LoRA is on (render/deployment.py).
    vLLM resolves a relative path that exists against its working directory."""
    return adapter_dir(vd, adapter).removeprefix(MODELS_MOUNT + "/")


def adapter_job_name(vd: VLLMDeployment, adapter: Adapter) -> str:
    """One download Job per VLLMDeployment and adapter revision (the files land once per
    revision in the shared cache: a second Job finds the marker and fetches nothing)."""
    return dns_name(f"{vd.name}-lora-{adapter.name}", suffix="-" + short_hash(adapter.source, adapter.revision, length=8))


@dataclass(frozen=True)
class WantedAdapter:
    """One adapter as the runtime loader needs it."""

    name: str
    path: str  # lora_path for vLLM
    job: str | None  # the download Job, None for pvc:// adapters (nothing to wait for)


def wanted_adapters(vd: VLLMDeployment) -> tuple[WantedAdapter, ...]:
    return tuple(WantedAdapter(a.name, adapter_load_path(vd, a), None if a.is_pvc else adapter_job_name(vd, a))
                 for a in vd.spec.adapters)
