"""A snapshot of one VLLMDeployment's world, taken from the watch store (pure reads, no I/O)."""

from __future__ import annotations

from typing import Any

from scibox_operator.api.names import ADAPTER_LABEL, RWX_ANNOTATION
from scibox_operator.api.spec import VLLMDeployment
from scibox_operator.planning.adapters import adapter_job_name
from scibox_operator.planning.serving_plan import ServingPlan, cache_claim_name
from scibox_operator.reconcile.autoscale import AutoscalingPrometheus
from scibox_operator.reconcile.desired import Observed, child_keys
from scibox_operator.reconcile.diff import owned_by
from scibox_operator.reconcile.status import CacheState
from scibox_operator.render.cache import download_job_name
from scibox_operator.runtime.store import Store


def observe(store: Store, vd: VLLMDeployment, plan: ServingPlan, *, default_image: str, hub_endpoint: str | None,
            api_key_digest: str | None = None,
            autoscaling_prometheus: AutoscalingPrometheus = AutoscalingPrometheus()) -> Observed:
    """A snapshot of what the store holds for this VLLMDeployment (no I/O)."""
    ns = vd.namespace
    children = {(kind, name): live for kind, name in child_keys(vd, plan)
                if (live := store.child(kind, ns, name)) is not None}
    job: dict[str, Any] | None = None
    if vd.spec.model.is_pvc:
        cache = CacheState(True, reason="ModelOnVolume", message=f"model read from claim {plan.cache_claim}")
    else:
        job_name = download_job_name(plan)
        job = children.get(("Job", job_name))
        cache = CacheState.from_job(job, store.downloads.get((ns, job_name)))
    # A shared claim's Job (and a Delete-policy claim) is owned by every user of the model, so
    # gathering them costs O(users): done only while the download is unfinished, when the
    # claim may be deleted with its users, or when this object came after the download and
    # does not own its Job yet (with 1000 users that was half the operator's CPU).
    joined_late = job is not None and vd.uid not in _owner_uids(job)
    gather = (not cache.complete and not vd.spec.model.is_pvc) or vd.spec.cache.deletion_policy == "Delete" \
        or joined_late
    users = tuple(cache_users(store, vd, plan)) if gather else (vd,)
    expandable = {name: bool(sc.get("allowVolumeExpansion")) for name, sc in store.storage_classes.items()}
    # The adapters' Jobs: the spec's, and those status still lists (an adapter just removed).
    listed = ((store.vllmds.get((ns, vd.name)) or {}).get("status") or {}).get("adapters") or []
    names = {adapter_job_name(vd, a) for a in vd.spec.adapters if not a.is_pvc} | {
        str(e["downloadJob"]) for e in listed if isinstance(e, dict) and e.get("downloadJob")}
    adapter_jobs = {name: job for name in sorted(names) if (job := store.child("Job", ns, name)) is not None
                    and ADAPTER_LABEL in ((job.get("metadata") or {}).get("labels") or {})
                    and owned_by("Job", job, vd.uid) and _controller_uid(job) == vd.uid}
    adapter_reports = {name: report for name in adapter_jobs if (report := store.downloads.get((ns, name)))}
    return Observed(children=children, users=users, users_gathered=gather, cache=cache,
                    adapter_jobs=adapter_jobs, adapter_reports=adapter_reports,
                    service_monitor_crd=store.service_monitor_crd,
                    leader_worker_set_crd=store.leader_worker_set_crd,
                    scaled_object_crd=store.scaled_object_crd,
                    gpu_nodes=tuple(store.gpu_nodes()) if vd.spec.autoscaling is not None else (),
                    autoscaling_prometheus=autoscaling_prometheus,
                    expandable_storage=expandable, default_image=default_image,
                    hub_endpoint=hub_endpoint, api_key_digest=api_key_digest)


def _owner_uids(body: dict[str, Any]) -> set[str]:
    return {str(r.get("uid")) for r in (body.get("metadata") or {}).get("ownerReferences") or []}


def _controller_uid(body: dict[str, Any]) -> str | None:
    refs = (body.get("metadata") or {}).get("ownerReferences") or []
    return next((r.get("uid") for r in refs if r.get("controller")), None)


def cache_shared(store: Store, vd: VLLMDeployment) -> bool:
    mode = vd.spec.cache.access_mode
    if mode != "Auto":
        return mode == "ReadWriteMany"
    sc_name = vd.spec.cache.storage_class_name or default_storage_class(store)
    sc = store.storage_classes.get(sc_name or "")
    modes = ((sc or {}).get("metadata", {}).get("annotations") or {}).get(RWX_ANNOTATION, "")
    return "ReadWriteMany" in modes

def default_storage_class(store: Store) -> str | None:
    for name, sc in sorted(store.storage_classes.items()):
        ann = (sc.get("metadata") or {}).get("annotations") or {}
        if ann.get("storageclass.kubernetes.io/is-default-class") == "true":
            return name
    return None

def cache_users(store: Store, vd: VLLMDeployment, plan: ServingPlan) -> list[VLLMDeployment]:
    """Every live VLLMDeployment of the namespace serving from this plan's cache claim."""
    if not plan.cache_shared:
        return [vd]
    users = [vd]
    for (ns, name), body in list(store.vllmds.items()):
        if ns != vd.namespace or name == vd.name or (body.get("metadata") or {}).get("deletionTimestamp"):
            continue
        other = store.parsed((ns, name))
        if other is None or other.spec.model.is_pvc or other.spec.cache.existing_claim:
            continue
        if (other.spec.model.name, other.spec.model.revision) == (vd.spec.model.name, vd.spec.model.revision) \
                and cache_claim_name(other, cache_shared(store, other)) == plan.cache_claim:
            users.append(other)
    return users
