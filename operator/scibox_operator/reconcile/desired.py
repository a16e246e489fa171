"""Every child one VLLMDeployment should have, and every child it should no longer have (pure).

`desired(vd, plan, observed)` is the one place the list of children is composed: the controller
applies its differences, `scibox-operator render` prints it. The same inputs always give
byte-identical children, each stamped with its render hash (see diff.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from scibox_operator.api.quantity import parse_quantity
from scibox_operator.api.spec import VLLMDeployment
from scibox_operator.planning.serving_plan import DEFAULT_VLLM_IMAGE, GpuNode, ServingPlan
from scibox_operator.reconcile.adapters import adapter_download_states, desired_adapter_jobs
from scibox_operator.reconcile.autoscale import (
    AutoscalingPrometheus,
    autoscaler_children,
    autoscaler_keys,
    autoscaling_notes,
)
from scibox_operator.reconcile.diff import needs_apply, stamped
from scibox_operator.reconcile.rollout import RolloutInputs, RolloutOutcome, decide_rollout
from scibox_operator.reconcile.status import CacheState, Failure

from ..render.cache import cache_owner_refs, download_job_name, render_cache_pvc, render_download_job
from ..render.deployment import render_deployment
from ..render.leaderworkerset import INSTALL_HINT, leader_worker_set_name, render_leader_worker_set
from ..render.monitoring import render_service_monitor
from ..render.network_policy import render_network_policy
from ..render.service import render_service

ChildKey = tuple[str, str]  # (kind, name); the namespace is the VLLMDeployment's


@dataclass(frozen=True)
class Note:
    """An extra condition a pass wants in status (a problem the spec cannot fix by waiting)."""

    type: str
    status: str
    reason: str
    message: str


@dataclass(frozen=True)
class Observed:
    """What the operator saw of one VLLMDeployment's world, taken from its watch store."""

    children: Mapping[ChildKey, dict[str, Any]] = field(default_factory=dict)
    # every VLLMDeployment serving from this cache claim, gathered only while it matters (an
    # unfinished download, a Delete-policy claim, a finished Job this object does not own yet);
    # otherwise just the object itself
    users: tuple[VLLMDeployment, ...] = ()
    users_gathered: bool = False  # True when `users` is every user, not just the object itself
    cache: CacheState = CacheState(False, reason="DownloadPending", message="the download Job is being created")
    service_monitor_crd: bool = False
    leader_worker_set_crd: bool = False
    # StorageClass name -> may its volumes grow (allowVolumeExpansion)
    expandable_storage: Mapping[str, bool] = field(default_factory=dict)
    # the server image of a spec that names none (the operator's setting): a shared Job rendered
    # from another user's spec must use that user's image, not this one's
    default_image: str = DEFAULT_VLLM_IMAGE
    # where the download Job fetches from when the spec names no endpoint (the operator's setting)
    hub_endpoint: str | None = None
    # digest of the API key Secret's value (render/deployment.py), None without a key
    api_key_digest: str | None = None
    # LoRA: this VLLMDeployment's live adapter download Jobs and their reports, by Job name
    adapter_jobs: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    adapter_reports: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    # autoscaling (reconcile/autoscale.py): KEDA installed?, the GPU inventory for the guard
    # rail (gathered only for objects that autoscale), where KEDA's triggers query Prometheus
    scaled_object_crd: bool = False
    gpu_nodes: tuple[GpuNode, ...] = ()
    autoscaling_prometheus: AutoscalingPrometheus = AutoscalingPrometheus()
    # what the rollout decision sees: free GPUs, time, server pods, the upgrade slot budget
    rollout: RolloutInputs = RolloutInputs()

    def live(self, kind: str, name: str) -> dict[str, Any] | None:
        return self.children.get((kind, name))


# What a pass may delete (the chart grants `delete` on exactly these): a failed or changed
# download Job, the workload kind a plan left, optional children the spec dropped. Never a claim.
REMOVABLE_KINDS = ("Job", "Deployment", "LeaderWorkerSet", "NetworkPolicy", "ServiceMonitor",
                   "HorizontalPodAutoscaler", "ScaledObject")


@dataclass(frozen=True)
class OwnerUpdate:
    """New owner references for a live child that is no longer rendered: a finished download
    Job (its template is immutable, and re-rendering it after an image change would replace it
    and download again). Its users must own it, or deleting the first users would
    garbage-collect the record that the cache is full while others still serve from it."""
    kind: str
    name: str
    uid: str  # the live object's: a precondition, so a recreated Job is not patched
    owner_references: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class Desired:
    children: tuple[dict[str, Any], ...]  # applied where they differ from the live ones
    removals: tuple[ChildKey, ...]  # live children this spec no longer asks for
    workload: ChildKey  # the Deployment or LeaderWorkerSet whose status the VLLMDeployment reports
    workload_current: bool  # False while the live workload waits for the model to be cached
    failure: Failure | None = None
    notes: tuple[Note, ...] = ()
    rollout: RolloutOutcome | None = None  # the workload's rollout (reconcile/rollout.py)
    owner_updates: tuple[OwnerUpdate, ...] = ()

    def __post_init__(self) -> None:
        unexpected = {kind for kind, _ in self.removals} - set(REMOVABLE_KINDS)
        if unexpected:  # a bug, not an input error: the chart would refuse the delete
            raise AssertionError(f"removal of {sorted(unexpected)} is not allowed")


def child_keys(vd: VLLMDeployment, plan: ServingPlan) -> tuple[ChildKey, ...]:
    """Every child this VLLMDeployment may have (rendered now or to be removed)."""
    keys = [("PersistentVolumeClaim", plan.cache_claim)]
    if not vd.spec.model.is_pvc:
        keys.append(("Job", download_job_name(plan)))
    keys += [("Deployment", vd.name), ("LeaderWorkerSet", leader_worker_set_name(vd)), ("Service", vd.name),
             ("NetworkPolicy", vd.name), ("ServiceMonitor", vd.name), *autoscaler_keys(vd)]
    return tuple(keys)


def workload_key(vd: VLLMDeployment, plan: ServingPlan) -> ChildKey:
    return ("LeaderWorkerSet", leader_worker_set_name(vd)) if plan.multi_node else ("Deployment", vd.name)


def desired(vd: VLLMDeployment, plan: ServingPlan, observed: Observed) -> Desired:
    workload = workload_key(vd, plan)
    if plan.multi_node and not observed.leader_worker_set_crd:
        failure = Failure("LeaderWorkerSetMissing",
                          f"the plan needs {plan.nodes} nodes per replica ({plan.parallelism_reason}); {INSTALL_HINT}")
        return Desired((), (), workload, False, failure)
    children: list[dict[str, Any]] = []
    removals: list[ChildKey] = []
    notes: list[Note] = []

    def want(kind: str, name: str, obj: dict[str, Any] | None) -> None:
        if obj is not None:
            children.append(stamped(obj))
        elif observed.live(kind, name) is not None:
            removals.append((kind, name))

    users = list(observed.users) or [vd]
    claim, note = _cache_claim(vd, plan, users, observed)
    conflict = cache_access_conflict(vd, plan, _claim_access_modes(vd, claim))
    if conflict is not None:
        return Desired((), (), workload, False, conflict)
    if claim is not None:
        children.append(stamped(claim))
    if note is not None:
        notes.append(note)
    children.extend(_download_job(plan, users, observed, removals))
    owner_updates = _finished_job_owners(plan, users, observed)

    rollout: RolloutOutcome | None = None
    if observed.cache.complete:
        other = ("Deployment", vd.name) if plan.multi_node else ("LeaderWorkerSet", leader_worker_set_name(vd))
        digest = observed.api_key_digest
        rendered = render_leader_worker_set(vd, plan, api_key_digest=digest) if plan.multi_node \
            else render_deployment(vd, plan, api_key_digest=digest)
        modes = _claim_access_modes(vd, claim)
        inputs = replace(observed.rollout, api_key_digest=digest,
                         may_surge=not modes or bool(_SHAREABLE_MODES & set(modes)))
        rollout = decide_rollout(vd, plan, rendered, observed.live(*workload), inputs)
        if rollout.workload is not None:  # None: the live workload stays as it is (queued, announced)
            children.append(stamped(rollout.workload))
        notes.append(Note(*rollout.condition))
        if observed.live(*other) is not None:
            removals.append(other)
    adapter_jobs, adapter_removals = desired_adapter_jobs(
        vd, plan, base_cached=observed.cache.complete, jobs=observed.adapter_jobs, hub_endpoint=observed.hub_endpoint,
        states=adapter_download_states(vd, observed.adapter_jobs, observed.adapter_reports))
    children.extend(adapter_jobs)
    removals.extend(("Job", name) for name in adapter_removals)
    want("Service", vd.name, render_service(vd, multi_node=plan.multi_node))
    want("NetworkPolicy", vd.name, render_network_policy(vd, multi_node=plan.multi_node))
    want("ServiceMonitor", vd.name, render_service_monitor(vd)
         if observed.service_monitor_crd and vd.spec.monitoring.service_monitor else None)
    for kind, name, obj in autoscaler_children(vd, plan, observed.scaled_object_crd, observed.autoscaling_prometheus,
                                               observed.live(*workload)):
        want(kind, name, obj)
    notes.extend(Note(*n) for n in autoscaling_notes(vd, plan, observed.gpu_nodes, keda=observed.scaled_object_crd,
                                                     allow_query=observed.autoscaling_prometheus.allow_query))
    return Desired(tuple(children), tuple(removals), workload, observed.cache.complete, None, tuple(notes), rollout,
                   owner_updates)


CACHE_ACCESS_CONFLICT = "CacheAccessModeConflict"
# Modes whose volume several nodes may mount at once (the servers mount the cache read-only).
_SHAREABLE_MODES = frozenset({"ReadWriteMany", "ReadOnlyMany"})


def _claim_access_modes(vd: VLLMDeployment, claim: dict[str, Any] | None) -> tuple[str, ...]:
    """The access modes the server pods will meet: the operator's claim as it will be applied
    (a live claim's modes are immutable and win), else what the spec says of the user's claim
    (pvc:// or existingClaim; Auto says nothing: that claim is the user's to size and share)."""
    if claim is not None:
        return tuple(claim["spec"].get("accessModes") or ())
    mode = vd.spec.cache.access_mode
    return () if mode == "Auto" else (mode,)


def pods_mounting_cache(vd: VLLMDeployment, plan: ServingPlan) -> tuple[int, str]:
    """How many server pods may hold the cache volume at the same moment, and why."""
    replicas = vd.spec.replicas
    why = [f"replicas {replicas}"] if replicas > 1 else []
    scaling = vd.spec.autoscaling
    if scaling is not None and scaling.max_replicas > replicas:  # what the autoscaler may ask for
        replicas = scaling.max_replicas
        why = [f"autoscaling.maxReplicas {replicas}"] if replicas > 1 else []
    pods = replicas * plan.nodes
    if plan.multi_node and replicas:
        why.append(f"{plan.nodes} pods per replica on different nodes")
    # A Deployment's RollingUpdate starts the new pod (maxSurge 1) while the old one still holds
    # the volume; a LeaderWorkerSet rolls with maxSurge 0, so it adds no pod.
    if vd.spec.rollout.strategy == "RollingUpdate" and not plan.multi_node and replicas:
        pods += 1
        why.append("rollout.strategy RollingUpdate starts a surge pod beside the old one")
    return pods, ", ".join(why)


def cache_access_conflict(vd: VLLMDeployment, plan: ServingPlan, modes: tuple[str, ...]) -> Failure | None:
    """A ReadWriteOnce(Pod) cache mounted by more than one pod: the scheduler places them on
    different nodes, the volume attaches to one, and the rest wait forever on Multi-Attach
    errors (a rollout that never finishes). Refused with the fix instead."""
    if not modes or _SHAREABLE_MODES & set(modes):
        return None
    pods, why = pods_mounting_cache(vd, plan)
    if pods <= 1:
        return None
    mode = "/".join(modes)
    fixes = "use ReadWriteMany storage: a StorageClass annotated scibox.io/access-modes: ReadWriteMany " \
            "(cache.storageClassName, with cache.accessMode Auto) or cache.accessMode ReadWriteMany"
    if not plan.multi_node:
        fixes += ", or serve with replicas 1 and rollout.strategy Recreate"
    return Failure(CACHE_ACCESS_CONFLICT,
                   f"cache claim {plan.cache_claim} is {mode}, a volume one node (one pod for ReadWriteOncePod) "
                   f"can mount, but {pods} server pods would mount it at once ({why}): {fixes}")


def _canonical(users: list[VLLMDeployment]) -> VLLMDeployment:
    """The user a shared child is rendered from: every user must render the same object, or
    their passes would rewrite it in turn."""
    return min(users, key=lambda u: u.name)


def _download_job(plan: ServingPlan, users: list[VLLMDeployment], observed: Observed,
                  removals: list[ChildKey]) -> list[dict[str, Any]]:
    """The Job while the download is unfinished; a failed one is removed (and so retried) only
    when its inputs changed (token, mirror, ...)."""
    source = _canonical(users)
    if source.spec.model.is_pvc or observed.cache.complete:
        return []
    source_plan = replace(plan, image=source.spec.image or observed.default_image)
    job = render_download_job(source, source_plan, sorted(users, key=lambda u: u.uid),
                              hub_endpoint=observed.hub_endpoint)
    if job is None:
        return []
    job = stamped(job)
    live = observed.live("Job", job["metadata"]["name"])
    if observed.cache.failed:
        if live is not None and needs_apply(job, live):
            removals.append(("Job", job["metadata"]["name"]))
        return []
    return [job]


def _finished_job_owners(plan: ServingPlan, users: list[VLLMDeployment],
                         observed: Observed) -> tuple[OwnerUpdate, ...]:
    """A finished download Job owned by other VLLMDeployments than the claim's users today (one
    that started using the model after the download, one that stopped), when every user is
    known. References to other kinds of owner are kept."""
    if not observed.cache.complete or not observed.users_gathered:
        return ()
    name = download_job_name(plan)
    live = observed.live("Job", name)  # never observed for a pvc:// model (child_keys)
    if live is None:
        return ()
    meta = live.get("metadata") or {}
    refs = meta.get("ownerReferences") or []
    want = cache_owner_refs(sorted(users, key=lambda u: u.uid))
    if {r.get("uid") for r in refs if r.get("kind") == "VLLMDeployment"} == {r["uid"] for r in want}:
        return ()
    kept = [r for r in refs if r.get("kind") != "VLLMDeployment"]
    return (OwnerUpdate("Job", name, str(meta.get("uid", "")), tuple(kept + want)),)


def _cache_claim(vd: VLLMDeployment, plan: ServingPlan, users: list[VLLMDeployment],
                 observed: Observed) -> tuple[dict[str, Any] | None, Note | None]:
    """The claim, rendered the same by every user: immutable fields and a larger size are taken
    from the live claim (a claim never shrinks; a 422 would leave the object failed forever)."""
    claim = render_cache_pvc(vd, plan, users)
    live = observed.live("PersistentVolumeClaim", plan.cache_claim)
    if claim is None or live is None:
        return claim, None
    spec, live_spec = claim["spec"], live.get("spec") or {}
    for immutable in ("storageClassName", "accessModes", "volumeMode"):
        # Only where this render sets the field: one it leaves to the server's default stays
        # the server's (taking it over would cost a write after every claim creation).
        if immutable in spec and immutable in live_spec:
            spec[immutable] = live_spec[immutable]
    have = str(((live_spec.get("resources") or {}).get("requests") or {}).get("storage", "0"))
    want = spec["resources"]["requests"]["storage"]
    if parse_quantity(have) >= parse_quantity(want):
        spec["resources"]["requests"]["storage"] = have
        return claim, None
    storage_class = live_spec.get("storageClassName") or ""
    if observed.expandable_storage.get(storage_class):
        return claim, None
    spec["resources"]["requests"]["storage"] = have
    return claim, Note("CacheResized", "False", "StorageClassCannotExpand",
                       f"cache claim {plan.cache_claim} holds {have} and {want} is wanted, but StorageClass "
                       f"{storage_class or '(none)'} does not allow volume expansion: the claim keeps its size")
