"""Is this pod one the operator's own workload created? The prober asks before it sends a pod
the model's API key.

Labels say nothing: anyone who may create a pod in the namespace can copy the server labels.
What the operator trusts is the controller chain it set up itself:

  single node:  Pod -> ReplicaSet -> Deployment -> VLLMDeployment (uid)
  multi-node:   Pod -> StatefulSet -> LeaderWorkerSet -> VLLMDeployment (uid)   (leaders only)

each link a `controller: true` owner reference whose uid is the uid of the object the store
holds under that name, and the pod on a pod network (not hostNetwork, its IP not its node's):
an address on the node would hand the key to whatever else listens there.

(Someone who may create pods in the namespace can also mount the API key's Secret directly; this
check keeps the key from pods that merely look like servers: copied labels, hand-made owner
references to names that do not chain up, node-network pods.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

# kind -> (apiVersion, the kind its controller must be): the two chains above, and nothing else.
CHAINS: dict[str, tuple[tuple[str, str], ...]] = {
    "ReplicaSet": (("apps/v1", "ReplicaSet"), ("apps/v1", "Deployment"),
                   ("scibox.io/v1alpha1", "VLLMDeployment")),
    "StatefulSet": (("apps/v1", "StatefulSet"), ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"),
                    ("scibox.io/v1alpha1", "VLLMDeployment")),
}

# (kind, namespace, name) -> the stored object (at least metadata.uid and ownerReferences), or None
Lookup = Callable[[str, str, str], Mapping[str, Any] | None]


def controller_of(meta: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The owner reference marked controller: true (the API server allows at most one)."""
    return next((ref for ref in meta.get("ownerReferences") or [] if ref.get("controller") is True), None)


def on_pod_network(pod: Mapping[str, Any]) -> bool:
    """A pod IP of its own: not hostNetwork, and not the node's address."""
    status = pod.get("status") or {}
    pod_ip = status.get("podIP")
    return bool(pod_ip) and not (pod.get("spec") or {}).get("hostNetwork") and pod_ip != status.get("hostIP")


def owned_by(pod: Mapping[str, Any], vd_uid: str, lookup: Lookup) -> bool:
    """Whether the pod's controller chain ends at the VLLMDeployment with uid `vd_uid`."""
    meta = pod.get("metadata") or {}
    namespace = meta.get("namespace", "")
    ref = controller_of(meta)
    chain = CHAINS.get((ref or {}).get("kind", ""))
    if not vd_uid or chain is None:
        return False
    for depth, (api_version, kind) in enumerate(chain):
        if ref is None or (ref.get("apiVersion"), ref.get("kind")) != (api_version, kind) or not ref.get("uid"):
            return False
        if depth == len(chain) - 1:
            return ref["uid"] == vd_uid
        held = lookup(kind, namespace, ref.get("name", ""))
        held_meta = (held or {}).get("metadata") or {}
        if held_meta.get("uid") != ref["uid"]:
            return False  # not the object of that name the operator knows (or none at all)
        ref = controller_of(held_meta)
    return False


def pod_is_ours(pod: Mapping[str, Any], vd_uid: str, lookup: Lookup) -> bool:
    """The prober's rule: on a pod network and created by this VLLMDeployment's own workload."""
    return on_pod_network(pod) and owned_by(pod, vd_uid, lookup)
