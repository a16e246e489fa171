"""The model-cache PersistentVolumeClaim and the Job that fills it once."""

from __future__ import annotations

from typing import Any

from scibox_operator.api.names import MODEL_ANNOTATION, REVISION_ANNOTATION
from scibox_operator.api.spec import VLLMDeployment
from scibox_operator.engine.cache_layout import DOWNLOAD_EXIT_CODES
from scibox_operator.planning.serving_plan import MODELS_MOUNT, ServingPlan, tokenizer_revision

from .common import (
    CACHE,
    CACHE_LABEL,
    DOWNLOAD,
    OWNER_NAME_LABEL,
    container_security_context,
    labels,
    pod_security_context,
    server_placement,
)

DOWNLOAD_SCRIPT = "/opt/scibox/download_model.sh"
# Exit codes of download_model.sh that no retry can fix: the Job fails at once instead of
# burning its back-off budget (a mirror that is down, by contrast, is retried with back-off).
PERMANENT_EXIT_CODES = tuple(DOWNLOAD_EXIT_CODES[k] for k in
                             ("bad_config", "not_found", "unauthorized", "disk_full", "no_weights",
                                                    "bad_adapter"))
DOWNLOAD_BACKOFF_LIMIT = 4


def cache_owner_refs(owners: list[VLLMDeployment]) -> list[dict[str, Any]]:
    """A shared claim is owned by every VLLMDeployment using it (none is *the* controller), so
    the garbage collector removes it only when the last one is gone."""
    refs = []
    for vd in sorted(owners, key=lambda o: o.uid):
        ref = dict(vd.owner_reference)
        ref["controller"] = False
        refs.append(ref)
    return refs


def _cache_metadata(vd: VLLMDeployment, name: str, component: str, owners: list[VLLMDeployment]) -> dict[str, Any]:
    meta_labels = labels(vd, component)
    # A shared claim serves several VLLMDeployments: label it by model, not by one of them.
    meta_labels.pop(OWNER_NAME_LABEL)
    meta_labels["app.kubernetes.io/instance"] = name
    meta_labels[CACHE_LABEL] = name
    meta: dict[str, Any] = {"name": name, "namespace": vd.namespace, "labels": meta_labels,
                            "annotations": {MODEL_ANNOTATION: vd.spec.model.name,
                                            REVISION_ANNOTATION: vd.spec.model.revision}}
    if owners:
        meta["ownerReferences"] = cache_owner_refs(owners)
    return meta


def claim_owners(users: list[VLLMDeployment]) -> list[VLLMDeployment]:
    """Whose deletion may delete the cache claim: every user, when each of them asks for
    deletionPolicy Delete; nobody (the claim is kept) as soon as one user retains it."""
    if any(u.spec.cache.deletion_policy != "Delete" for u in users):
        return []
    return users


def render_cache_pvc(vd: VLLMDeployment, plan: ServingPlan,
                     users: list[VLLMDeployment]) -> dict[str, Any] | None:
    """None when the claim is the user's (existingClaim or pvc://): the operator never owns it.
    `users` are every VLLMDeployment serving from the claim (see claim_owners)."""
    cache = vd.spec.cache
    if vd.spec.model.is_pvc or cache.existing_claim:
        return None
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteMany" if plan.cache_shared else
                        ("ReadWriteOncePod" if cache.access_mode == "ReadWriteOncePod" else "ReadWriteOnce")],
        "resources": {"requests": {"storage": plan.cache_size}},
        "volumeMode": "Filesystem",
    }
    if cache.storage_class_name:
        spec["storageClassName"] = cache.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _cache_metadata(vd, plan.cache_claim, CACHE, claim_owners(users)),
        "spec": spec,
    }


def download_job_name(plan: ServingPlan) -> str:
    return plan.cache_claim[: 63 - len("-download")].rstrip("-") + "-download"


def render_download_job(vd: VLLMDeployment, plan: ServingPlan, owners: list[VLLMDeployment], *,
                        hub_endpoint: str | None = None) -> dict[str, Any] | None:
    """None for pvc:// models: they are already on a volume and need no download. The weights
    come from `cache.endpoint`, else from the operator's own hub endpoint (an air-gapped
    cluster's mirror), the one its metadata reads use: never a hub nobody configured."""
    if vd.spec.model.is_pvc:
        return None
    model = vd.spec.model
    cache = vd.spec.cache
    env: list[dict[str, Any]] = [
        {"name": "MODEL_ID", "value": model.name},
        {"name": "MODEL_REVISION", "value": model.revision},
        {"name": "CACHE_DIR", "value": MODELS_MOUNT},
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_HOME", "value": "/tmp/hf"},
        {"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"},
    ]
    if model.tokenizer_repo is not None:  # the servers run offline: fetch it with the model
        env += [{"name": "TOKENIZER_ID", "value": model.tokenizer_repo},
                {"name": "TOKENIZER_REVISION", "value": tokenizer_revision(vd)}]
    endpoint = cache.endpoint or hub_endpoint
    if endpoint:
        env.append({"name": "HF_ENDPOINT", "value": endpoint})
    if cache.token_secret_ref:
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": cache.token_secret_ref.name, "key": cache.token_secret_ref.key}}})
    name = download_job_name(plan)
    meta = _cache_metadata(vd, name, DOWNLOAD, owners)
    meta["labels"][CACHE_LABEL] = plan.cache_claim
    pod_labels = dict(meta["labels"])
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "backoffLimit": DOWNLOAD_BACKOFF_LIMIT,
            "activeDeadlineSeconds": 6 * 3600,
            "podFailurePolicy": {"rules": [{
                "action": "FailJob",
                "onExitCodes": {"containerName": "download", "operator": "In",
                                "values": list(PERMANENT_EXIT_CODES)},
            }]},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": pod_security_context(),
                    # The servers' placement, affinity included: a zonal or node-local volume
                    # binds where this pod runs, and the servers must be able to follow it there.
                    **server_placement(vd, plan.gpu_product),
                    "containers": [{
                        "name": "download",
                        "image": cache.download_image or plan.image,
                        "imagePullPolicy": "IfNotPresent",
                        "command": [DOWNLOAD_SCRIPT],
                        "env": env,
                        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"},
                                      "limits": {"memory": "4Gi"}},
                        "securityContext": container_security_context(),
                        "volumeMounts": [
                            {"name": "model-cache", "mountPath": MODELS_MOUNT},
                            {"name": "tmp", "mountPath": "/tmp"},
                        ],
                        "terminationMessagePolicy": "FallbackToLogsOnError",
                    }],
                    "volumes": [
                        {"name": "model-cache", "persistentVolumeClaim": {"claimName": plan.cache_claim}},
                        {"name": "tmp", "emptyDir": {}},
                    ],
                },
            },
        },
    }
