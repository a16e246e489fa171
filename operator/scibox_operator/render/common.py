"""Labels, names and owner references shared by every child resource."""

from __future__ import annotations

from typing import Any

from scibox_operator.api.names import (
    CACHE,
    CACHE_LABEL,
    COMPONENT_LABEL,
    DOWNLOAD,
    INSTANCE_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    NAME_LABEL,
    OWNER_NAME_LABEL,
    PART_OF_LABEL,
    SERVER,
)
from scibox_operator.api.spec import VLLMDeployment

__all__ = ["CACHE", "CACHE_LABEL", "COMPONENT_LABEL", "DOWNLOAD", "INSTANCE_LABEL", "MANAGED_BY", "MANAGED_BY_LABEL",
           "OWNER_NAME_LABEL", "SERVER", "labels", "metadata", "selector_labels"]


def labels(vd: VLLMDeployment, component: str) -> dict[str, str]:
    return {
        NAME_LABEL: "vllm",
        INSTANCE_LABEL: vd.name,
        COMPONENT_LABEL: component,
        PART_OF_LABEL: "scibox",
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
