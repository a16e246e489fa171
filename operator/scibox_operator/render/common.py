"""Labels, names and owner references shared by every child resource."""

from __future__ import annotations

from typing import Any

from .. import FIELD_MANAGER
from ..spec import VLLMDeployment

MANAGED_BY = FIELD_MANAGER
INSTANCE_LABEL = "app.kubernetes.io/instance"
COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
OWNER_NAME_LABEL = "scibox.io/vllmdeployment"

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
