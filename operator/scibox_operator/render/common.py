"""Labels, names and owner references shared by every child resource."""

from __future__ import annotations

import copy
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


GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"


def _node_affinity(vd: VLLMDeployment) -> dict[str, Any] | None:
    user = copy.deepcopy(vd.spec.affinity) if vd.spec.affinity else {}
    min_mem = vd.spec.resources.min_gpu_memory_mi_b
    if min_mem is None:
        return user or None
    # Gt compares integers: label > min-1  <=>  label >= min.
    expr = {"key": GPU_MEMORY_LABEL, "operator": "Gt", "values": [str(min_mem - 1)]}
    node_aff = user.setdefault("nodeAffinity", {})
    required = node_aff.setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
    terms = required.setdefault("nodeSelectorTerms", [])
    if not terms:
        terms.append({"matchExpressions": []})
    for term in terms:  # terms are ORed, so the GPU memory rule must be in each of them
        term.setdefault("matchExpressions", []).append(expr)
    return user


def server_placement(vd: VLLMDeployment, planned_product: str | None = None) -> dict[str, Any]:
    """Where the server pods may run: the spec's node selector and GPU product (or the one the
    plan was made for), its affinity
    plus the minGpuMemoryMiB rule, its tolerations beside the GPU taint's, its priority class.
    The download Job's pod uses the same, so a zonal or node-local volume it binds first is one
    the servers can reach."""
    spec = vd.spec
    out: dict[str, Any] = {"tolerations": [
        {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"},
        *(t.model_dump(by_alias=True, exclude_none=True) for t in spec.tolerations),
    ]}
    node_selector = dict(sorted(spec.node_selector.items()))
    # The product the memory plan was made for: a pod on a smaller GPU would run out of memory.
    product = spec.resources.gpu_product or planned_product
    if product:
        node_selector[GPU_PRODUCT_LABEL] = product
    if node_selector:
        out["nodeSelector"] = node_selector
    affinity = _node_affinity(vd)
    if affinity:
        out["affinity"] = affinity
    if spec.priority_class_name:
        out["priorityClassName"] = spec.priority_class_name
    return out
