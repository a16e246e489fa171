"""Labels, names and owner references shared by every child resource."""

from __future__ import annotations

from typing import Any

from scibox_operator.api.names import FIELD_MANAGER
from scibox_operator.api.spec import VLLMDeployment

MANAGED_BY = FIELD_MANAGER
INSTANCE_LABEL = "app.kubernetes.io/instance"
COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
OWNER_NAME_LABEL = "scibox.io/vllmdeployment"
# Marks a cache claim and its download Job with the claim name (shared by every user of a model).
CACHE_LABEL = "scibox.io/model-cache"

SERVER = "server"
CACHE = "model-cache"
DOWNLOAD = "model-download"


def labels(vd: VLLMDeployment, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "vllm",
        INSTANCE_LABEL: vd.name,
        COMPONENT_LABEL: component,
        "app.kubernetes.io/part-of": "scibox",
        MANAGED_BY_LABEL: MANAGED_BY,
        OWNER_NAME_LABEL: vd.name,
    }


def selector_labels(vd: VLLMDeployment, component: str) -> dict[str, str]:
    """The immutable subset used in selectors: never add to it, or existing Deployments break."""
    return {INSTANCE_LABEL: vd.name, COMPONENT_LABEL: component}


def metadata(vd: VLLMDeployment, name: str, component: str, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": vd.namespace,
        "labels": labels(vd, component),
        "ownerReferences": [vd.owner_reference],
    }
    meta.update(extra)
    return meta


# The user images/vllm/Dockerfile creates (group 0, so arbitrary-UID platforms work too); fsGroup
# makes the cache volume writable for the download Job and readable for the server.
IMAGE_UID = 10001
IMAGE_GID = 0


def pod_security_context() -> dict[str, Any]:
    """Every workload pod: non-root as the image's user, the runtime's default seccomp profile."""
    return {"runAsNonRoot": True, "runAsUser": IMAGE_UID, "runAsGroup": IMAGE_GID, "fsGroup": IMAGE_UID,
            "seccompProfile": {"type": "RuntimeDefault"}}


def container_security_context() -> dict[str, Any]:
    """Every workload container: no capabilities, no privilege escalation, read-only root."""
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True, "runAsNonRoot": True}
