"""The download Job of one LoRA adapter: the model downloader in adapter mode, into the model's
cache claim, one Job per VLLMDeployment and adapter revision (a second user of the same
revision on a shared claim finds its completion marker and fetches nothing)."""

from __future__ import annotations

from typing import Any

from scibox_operator.api.names import ADAPTER_LABEL, ADAPTER_SOURCE_ANNOTATION, CACHE_LABEL, REVISION_ANNOTATION
from scibox_operator.api.spec import Adapter, VLLMDeployment
from scibox_operator.planning.adapters import adapter_job_name
from scibox_operator.planning.serving_plan import ServingPlan, model_dir

from .cache import render_download_job
from .common import DOWNLOAD, labels

# The downloader's inputs that name the base model's own second repo: not an adapter's.
_BASE_ONLY_ENV = ("TOKENIZER_ID", "TOKENIZER_REVISION")


def render_adapter_job(vd: VLLMDeployment, plan: ServingPlan, adapter: Adapter, *,
                       hub_endpoint: str | None = None) -> dict[str, Any] | None:
    """None for a pvc:// adapter (already on the model's volume)."""
    if adapter.is_pvc:
        return None
    job = render_download_job(vd, plan, [vd], hub_endpoint=hub_endpoint)
    if job is None:
        return None
    name = adapter_job_name(vd, adapter)
    meta_labels = {**labels(vd, DOWNLOAD), CACHE_LABEL: plan.cache_claim, ADAPTER_LABEL: adapter.name}
    job["metadata"] = {"name": name, "namespace": vd.namespace, "labels": meta_labels,
                       "annotations": {ADAPTER_SOURCE_ANNOTATION: adapter.source,
                                       REVISION_ANNOTATION: adapter.revision},
                       "ownerReferences": [vd.owner_reference]}
    template = job["spec"]["template"]
    template["metadata"]["labels"] = dict(meta_labels)
    container = template["spec"]["containers"][0]
    env = [e for e in container["env"] if e["name"] not in _BASE_ONLY_ENV]
    for entry in env:
        if entry["name"] == "MODEL_ID":
            entry["value"] = adapter.source
        elif entry["name"] == "MODEL_REVISION":
            entry["value"] = adapter.revision
    env += [{"name": "ADAPTER_MAX_RANK", "value": str(vd.spec.engine.max_lora_rank)},
            {"name": "ADAPTER_BASE_DIR", "value": model_dir(vd)}]
    container["env"] = env
    container["resources"] = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}
    return job
