"""LoRA adapters in a pass (pure): their download Jobs (wanted, and to remove), their download
state, and what status says of each adapter per pod.

The runtime side (loading into running servers) is readiness/adapters.py; it leaves its
per-pod results in the store (`Store.adapters`) as plain tuples, read here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scibox_operator.api.spec import VLLMDeployment
from scibox_operator.planning.adapters import adapter_job_name
from scibox_operator.planning.serving_plan import ServingPlan
from scibox_operator.reconcile.diff import needs_apply, stamped
from scibox_operator.reconcile.status import CacheState
from scibox_operator.render.adapters import render_adapter_job

# (adapter name, pod name, state, message): what the loader saw on each pod
PodAdapterState = tuple[str, str, str, str]

LOADED = "Loaded"
LOADING = "Loading"
DOWNLOADING = "Downloading"
FAILED = "Failed"
PENDING = "Pending"  # waiting for the server (or the base model's download)


def adapter_download_states(vd: VLLMDeployment, jobs: Mapping[str, dict[str, Any]],
                            reports: Mapping[str, dict[str, Any]]) -> dict[str, CacheState]:
    """adapter name -> its download's state (pvc:// adapters are on the volume already)."""
    states = {}
    for adapter in vd.spec.adapters:
        if adapter.is_pvc:
            states[adapter.name] = CacheState(True, reason="OnVolume", message=f"read from {adapter.source}")
            continue
        name = adapter_job_name(vd, adapter)
        states[adapter.name] = CacheState.from_job(jobs.get(name), reports.get(name))
    return states


def desired_adapter_jobs(vd: VLLMDeployment, plan: ServingPlan, *, base_cached: bool,
                         jobs: Mapping[str, dict[str, Any]], states: Mapping[str, CacheState],
                         hub_endpoint: str | None) -> tuple[list[dict[str, Any]], list[str]]:
    """(adapter Jobs to apply, live adapter Job names to delete). Jobs start once the base model
    is cached (the downloader checks the adapter against the base's tensors). A finished Job
    stays: it is the record that the adapter is in the cache. A failed one is removed, and so
    retried, only when what it would run changed; one whose adapter left the spec is removed."""
    children: list[dict[str, Any]] = []
    removals: list[str] = []
    wanted: set[str] = set()
    for adapter in vd.spec.adapters:
        job = render_adapter_job(vd, plan, adapter, hub_endpoint=hub_endpoint)
        if job is None:
            continue
        name = job["metadata"]["name"]
        wanted.add(name)
        if not base_cached:
            continue
        job = stamped(job)
        live = jobs.get(name)
        state = states.get(adapter.name)
        if state is not None and state.failed:
            if live is not None and needs_apply(job, live):
                removals.append(name)
            continue
        if state is not None and state.complete:
            continue  # nothing to write; a live Job's template is immutable anyway
        children.append(job)
    removals += sorted(set(jobs) - wanted)
    return children, removals


def adapter_status(vd: VLLMDeployment, states: Mapping[str, CacheState],
                   on_pods: tuple[PodAdapterState, ...]) -> tuple[list[dict[str, Any]], tuple[str, str, str, str] | None]:
    """status.adapters (each adapter, its state and its state on every server pod) and the
    AdaptersReady condition (None without adapters). A broken adapter fails only itself."""
    if not vd.spec.adapters:
        return [], None
    by_adapter: dict[str, list[dict[str, str]]] = {}
    for name, pod, state, message in on_pods:
        by_adapter.setdefault(name, []).append({"pod": pod, "state": state, **({"message": message} if message else {})})
    out: list[dict[str, Any]] = []
    failed: list[str] = []
    waiting: list[str] = []
    for adapter in vd.spec.adapters:
        download = states.get(adapter.name) or CacheState(False, reason="DownloadPending", message="")
        pods = sorted(by_adapter.get(adapter.name, []), key=lambda p: p["pod"])
        entry: dict[str, Any] = {"name": adapter.name, "source": adapter.source, "revision": adapter.revision}
        if not adapter.is_pvc:  # how the next pass finds the Job once the adapter left the spec
            entry["downloadJob"] = adapter_job_name(vd, adapter)
        if download.failed:
            entry.update(state=FAILED, reason="DownloadFailed", message=download.message)
        elif not download.complete:
            entry.update(state=DOWNLOADING if download.active else PENDING, message=download.message)
        elif any(p["state"] == FAILED for p in pods):
            bad = next(p for p in pods if p["state"] == FAILED)
            entry.update(state=FAILED, reason="LoadFailed", message=f"pod {bad['pod']}: {bad.get('message', '')}")
        elif pods and all(p["state"] == LOADED for p in pods):
            entry.update(state=LOADED)
        else:
            entry.update(state=LOADING if pods else PENDING)
        if pods:
            entry["pods"] = pods
        if entry["state"] == FAILED:
            failed.append(f"{adapter.name} ({entry['message']})")
        elif entry["state"] != LOADED:
            waiting.append(adapter.name)
        out.append(entry)
    if failed:
        cond = ("AdaptersReady", "False", "AdapterFailed",
                f"{len(failed)}/{len(out)} adapters failed: " + "; ".join(failed)[:900])
    elif waiting:
        cond = ("AdaptersReady", "False", "AdaptersLoading", f"not yet loaded everywhere: {', '.join(waiting)}")
    else:
        cond = ("AdaptersReady", "True", "Loaded", f"all {len(out)} adapters loaded on every serving pod")
    return out, cond
