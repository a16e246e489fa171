"""The operator's view of the cluster, fed by watch events and re-lists (no API calls here)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from scibox_operator.api.names import (
    CACHE_LABEL,
    COMPONENT_LABEL,
    DOWNLOAD,
    LEADER_WORKER_SET_CRD,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    OWNER_NAME_LABEL,
    SCALED_OBJECT_CRD,
    SERVER,
    SERVICE_MONITOR_CRD,
)
from scibox_operator.api.spec import InvalidSpec, VLLMDeployment, parse
from scibox_operator.planning.serving_plan import GpuNode

if TYPE_CHECKING:
    from scibox_operator.readiness.verdicts import ReadinessSummary

Key = tuple[str, str]  # (namespace, name)

# The kinds the operator renders, and therefore watches and re-lists (only objects it labelled).
CHILD_KINDS = ("Deployment", "Service", "Job", "PersistentVolumeClaim", "ServiceMonitor", "LeaderWorkerSet",
               "NetworkPolicy", "HorizontalPodAutoscaler", "ScaledObject")
OURS_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
SERVER_POD_SELECTOR = f"{OURS_SELECTOR},{COMPONENT_LABEL}={SERVER}"
DOWNLOAD_POD_SELECTOR = f"{OURS_SELECTOR},{COMPONENT_LABEL}={DOWNLOAD}"
# The links between a server pod and its workload, kept as owner summaries only: a Deployment's
# ReplicaSets carry its pod template's labels (ours); a LeaderWorkerSet's leader StatefulSet only
# LWS's own name label.
LWS_NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"
OWNER_CHAIN_SELECTORS = {"ReplicaSet": OURS_SELECTOR, "StatefulSet": LWS_NAME_LABEL}


def crd_established(body: Any) -> bool:
    """Served and staying: a CRD being deleted keeps Established=True while the API server
    removes its objects (minutes, when its finalizer backs off) and refuses new ones meanwhile."""
    if (body.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return any(c.get("type") == "Established" and c.get("status") == "True"
               for c in (body.get("status") or {}).get("conditions") or [])


def owner_summary(body: Any) -> dict[str, Any]:
    """What the chain check needs of a ReplicaSet or StatefulSet: the store keeps only this
    (a ReplicaSet's pod template is most of its size, and there are several per Deployment)."""
    meta = body.get("metadata") or {}
    return {"metadata": {"name": meta.get("name"), "namespace": meta.get("namespace"), "uid": meta.get("uid"),
                         "ownerReferences": [dict(r) for r in meta.get("ownerReferences") or []]}}


def storage_class_summary(body: Any) -> dict[str, Any]:
    meta = body.get("metadata") or {}
    return {"metadata": {"name": meta.get("name"), "annotations": dict(meta.get("annotations") or {})},
            "allowVolumeExpansion": bool(body.get("allowVolumeExpansion"))}


def trim(body: Any) -> dict[str, Any]:
    """Keep what comparisons and status need; managedFields alone is often half an object.
    Shallow: every watch event brings a fresh body and nothing here mutates a stored one."""
    obj = dict(body)
    obj["metadata"] = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    return obj


def newer(version: str, than: str) -> bool:
    """resourceVersions are etcd revisions (integers) on every real API server; anything else
    counts as newer when it differs."""
    try:
        return int(version) > int(than)
    except ValueError:
        return version != than


@dataclass
class Store:
    """The operator's view of the cluster, fed by watch events."""

    vllmds: dict[Key, dict[str, Any]] = field(default_factory=dict)
    # kind -> (namespace, name) -> object, for the kinds the operator renders
    children: dict[str, dict[Key, dict[str, Any]]] = field(default_factory=dict)
    nodes: dict[str, GpuNode] = field(default_factory=dict)
    storage_classes: dict[str, dict[str, Any]] = field(default_factory=dict)
    pods: dict[Key, dict[str, Any]] = field(default_factory=dict)
    # (namespace, VLLMDeployment name) -> names of its server pods: the prober's lookup per
    # object must not scan every pod of the cluster (that was quadratic at 1000 objects)
    pods_by_owner: dict[Key, set[str]] = field(default_factory=dict)
    readiness: dict[Key, ReadinessSummary] = field(default_factory=dict)
    # LoRA: (adapter, pod, state, message) per server pod, from the prober's adapter loader
    adapters: dict[Key, tuple[tuple[str, str, str, str], ...]] = field(default_factory=dict)
    # (namespace, job name) -> the download script's JSON report of its latest finished pod
    downloads: dict[Key, dict[str, Any]] = field(default_factory=dict)
    established_crds: set[str] = field(default_factory=set)
    # key -> (resourceVersion, the parsed spec or None when invalid): other objects' specs are
    # read on every pass of a shared cache's users, and parsing them anew each time was
    # quadratic in CPU and held N parsed copies per concurrent pass (1.4 GB at 300 users).
    parsed_vllmds: dict[Key, tuple[str, VLLMDeployment | None]] = field(default_factory=dict)
    # server pod uid -> {"health": epoch of its first /health 200, "serving": of its first
    # answered completion}: the prober's clock readings for status.startup (reconcile/startup.py)
    startup_marks: dict[str, dict[str, float]] = field(default_factory=dict)
    # Every bound, unfinished pod of the cluster holding GPUs: (namespace, name) -> (node, GPUs),
    # and the per-node sums kept with it (free GPUs for a rollout's surge, reconcile/rollout.py).
    gpu_pods: dict[Key, tuple[str, int]] = field(default_factory=dict)
    gpus_by_node: dict[str, int] = field(default_factory=dict)
    # node name -> all its labels (a rollout's free GPUs honour any nodeSelector key)
    node_labels: dict[str, dict[str, str]] = field(default_factory=dict)

    def set_gpu_pod(self, key: Key, held: tuple[str, int] | None) -> None:
        before = self.gpu_pods.pop(key, None)
        if before is not None:
            left = self.gpus_by_node.get(before[0], 0) - before[1]
            if left > 0:
                self.gpus_by_node[before[0]] = left
            else:
                self.gpus_by_node.pop(before[0], None)
        if held is not None:
            self.gpu_pods[key] = held
            self.gpus_by_node[held[0]] = self.gpus_by_node.get(held[0], 0) + held[1]

    def parsed(self, key: Key) -> VLLMDeployment | None:
        """The stored VLLMDeployment parsed once per version, or None when absent or invalid."""
        body = self.vllmds.get(key)
        if body is None:
            self.parsed_vllmds.pop(key, None)
            return None
        version = (body.get("metadata") or {}).get("resourceVersion", "")
        known = self.parsed_vllmds.get(key)
        if known is not None and known[0] == version and version:
            return known[1]
        try:
            vd: VLLMDeployment | None = parse(body)
        except InvalidSpec:
            vd = None
        self.parsed_vllmds[key] = (version, vd)
        return vd

    def forget_vllmd(self, key: Key) -> None:
        self.vllmds.pop(key, None)
        self.parsed_vllmds.pop(key, None)
        self.readiness.pop(key, None)
        self.adapters.pop(key, None)

    @property
    def service_monitor_crd(self) -> bool:
        return SERVICE_MONITOR_CRD in self.established_crds

    @property
    def scaled_object_crd(self) -> bool:
        return SCALED_OBJECT_CRD in self.established_crds

    @property
    def leader_worker_set_crd(self) -> bool:
        return LEADER_WORKER_SET_CRD in self.established_crds

    def child(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.children.get(kind, {}).get((namespace, name))

    def put_child(self, kind: str, body: Any) -> None:
        meta = body["metadata"]
        self.children.setdefault(kind, {})[(meta["namespace"], meta["name"])] = trim(body)

    def drop_child(self, kind: str, namespace: str, name: str) -> None:
        self.children.get(kind, {}).pop((namespace, name), None)

    def owners_of(self, body: Any) -> list[Key]:
        meta = body.get("metadata") or {}
        ns = meta.get("namespace", "")
        keys = [(ns, ref["name"]) for ref in meta.get("ownerReferences") or []
                if ref.get("kind") == "VLLMDeployment"]
        label = (meta.get("labels") or {}).get(OWNER_NAME_LABEL)
        if label:
            keys.append((ns, label))
        cache = (meta.get("labels") or {}).get(CACHE_LABEL)
        if cache:  # every user of a (shared) cache claim cares about its Job
            keys.extend(k for k, v in self.vllmds.items()
                        if k[0] == ns and (v.get("status") or {}).get("cacheClaim") == cache)
        return sorted(set(keys))

    def gpu_nodes(self) -> list[GpuNode]:
        return sorted(self.nodes.values(), key=lambda n: n.name)

    def put_pod(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        self.pods[(meta["namespace"], meta["name"])] = pod
        owner = (meta.get("labels") or {}).get(OWNER_NAME_LABEL)
        if owner:
            self.pods_by_owner.setdefault((meta["namespace"], owner), set()).add(meta["name"])

    def drop_pod(self, namespace: str, name: str) -> None:
        pod = self.pods.pop((namespace, name), None)
        self.startup_marks.pop(((pod or {}).get("metadata") or {}).get("uid") or "", None)
        owner = ((pod or {}).get("metadata", {}).get("labels") or {}).get(OWNER_NAME_LABEL)
        if owner:
            names = self.pods_by_owner.get((namespace, owner), set())
            names.discard(name)
            if not names:
                self.pods_by_owner.pop((namespace, owner), None)

    def server_pods(self, key: Key) -> list[dict[str, Any]]:
        ns, _ = key
        return [self.pods[(ns, name)] for name in sorted(self.pods_by_owner.get(key, ()))]


def pod_summary(body: Any) -> dict[str, Any]:
    """Only what the prober and the metrics need: address, readiness, container states."""
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    return {
        "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace"), "uid": meta.get("uid"),
                     "resourceVersion": meta.get("resourceVersion"), "labels": dict(meta.get("labels") or {}),
                     "creationTimestamp": meta.get("creationTimestamp"),  # status.startup's stages
                     # what says whether the operator's own workload made the pod (ownership.pod_is_ours)
                     "ownerReferences": [dict(r) for r in meta.get("ownerReferences") or []]},
        "spec": {"hostNetwork": bool((body.get("spec") or {}).get("hostNetwork"))},
        "status": {"phase": status.get("phase"), "podIP": status.get("podIP"), "hostIP": status.get("hostIP"),
                   "conditions": list(status.get("conditions") or []),
                   "containerStatuses": list(status.get("containerStatuses") or [])},
    }


def reconcile_listing(listing: dict[str, Any], known: dict[Key, dict[str, Any]],
                      put: Callable[[Any], Any], drop: Callable[..., Any]) -> list[Any]:
    """Bring `known` (the store's objects of one list) in line with a fresh LIST: what the list
    has newer is put, what it lacks is dropped unless the store's copy is newer than the list.
    Returns the objects that changed."""
    listed_at = (listing.get("metadata") or {}).get("resourceVersion", "")
    seen: set[Key] = set()
    changed: list[Any] = []
    for item in listing.get("items") or []:
        meta = item["metadata"]
        key = (meta["namespace"], meta["name"])
        seen.add(key)
        have = known.get(key)
        if have is None or newer(meta.get("resourceVersion", ""), (have.get("metadata") or {}).get("resourceVersion") or ""):
            put(item)
            changed.append(item)
    for key, body in list(known.items()):
        if key not in seen and not newer((body.get("metadata") or {}).get("resourceVersion") or "", listed_at):
            drop(*key)
            changed.append(body)
    return changed
