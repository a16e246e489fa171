"""Compute a VLLMDeployment's status from what the operator observed (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from scibox_operator.api.conditions import make_condition
from scibox_operator.api.spec import VLLMDeployment
from scibox_operator.planning.serving_plan import ServingPlan
from scibox_operator.readiness.verdicts import ReadinessSummary, summarize_readiness
from scibox_operator.render.common import SERVER, selector_labels


def pod_selector(vd: VLLMDeployment) -> str:
    """The server pods' label selector as a string, what a scale subresource reports."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(vd, SERVER).items()))


@dataclass(frozen=True)
class CacheState:
    complete: bool
    failed: bool = False
    active: bool = False
    reason: str = ""
    message: str = ""

    @classmethod
    def from_job(cls, job: dict[str, Any] | None, summary: dict[str, Any] | None = None) -> CacheState:
        """`summary` is the download script's JSON report, read from its pod's termination message."""
        if job is None:
            return cls(False, reason="DownloadPending", message="the download Job is being created")
        status = job.get("status") or {}
        name = job["metadata"]["name"]
        summary = summary or {}
        for cond in status.get("conditions") or []:
            if cond.get("status") != "True":
                continue
            if cond.get("type") == "Complete":
                return cls(True, reason="Downloaded", message=_downloaded(summary))
            if cond.get("type") == "Failed":
                why = summary.get("message") or cond.get("message") or cond.get("reason") or "the download Job failed"
                kind = f" [{summary['error']}]" if summary.get("error") else ""
                return cls(False, failed=True, reason="DownloadFailed",
                           message=f"download Job {name} failed{kind}: {why} (delete the Job to retry)")
        attempts = int(status.get("failed") or 0)
        last = f"; last attempt: {summary['message']}" if summary.get("error") and summary.get("message") else ""
        return cls(False, active=True, reason="Downloading",
                   message=f"download Job {name} running ({attempts} failed attempts so far{last})")


def _downloaded(summary: dict[str, Any]) -> str:
    if "bytes" not in summary:
        return "model downloaded into the cache"
    size = f"{summary['bytes'] / 1e9:.2f} GB" if summary["bytes"] >= 1e8 else f"{summary['bytes']} bytes"
    if summary.get("cached"):
        return f"model already in the cache ({size}, {summary.get('file_count', '?')} files)"
    return (f"model downloaded into the cache: {size} in {float(summary.get('duration_seconds') or 0):.1f}s "
            f"({summary.get('file_count', '?')} files)")


@dataclass(frozen=True)
class Failure:
    reason: str
    message: str


def _replicas(deployment: dict[str, Any] | None) -> tuple[int, int]:
    status = (deployment or {}).get("status") or {}
    return int(status.get("replicas") or 0), int(status.get("readyReplicas") or 0)


@dataclass(frozen=True)
class PlanNote:
    """How the plan in status came about when it is not a fresh one (e.g. the hub was down)."""

    reason: str
    message: str


def rollout_condition(desired: int, workload: dict[str, Any] | None, current: bool) -> tuple[str, str, str]:
    """UpToDate: True only when every replica runs the current template and is ready, read from
    the workload controller's own status for the workload's current generation."""
    if not current:
        return "False", "WaitingForModelCache", "the new template waits until the model is in the cache"
    if workload is None:
        return "False", "RollingOut", "the workload is being created"
    status = workload.get("status") or {}
    generation = int((workload.get("metadata") or {}).get("generation") or 0)
    conditions = status.get("conditions") or []
    # A Deployment reports observedGeneration; a LeaderWorkerSet only on its conditions.
    seen = status.get("observedGeneration")
    if seen is None:
        seen = max((int(c.get("observedGeneration") or 0) for c in conditions), default=None)
    if seen is not None and int(seen) < generation:
        return "False", "RollingOut", "the workload controller has not yet seen the current template"
    if any(c.get("type") == "UpdateInProgress" and c.get("status") == "True" for c in conditions):
        return "False", "RollingOut", "the LeaderWorkerSet is replacing its groups"
    replicas = int(status.get("replicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    ready = int(status.get("readyReplicas") or 0)
    if updated < desired or replicas > updated or ready < desired:
        old = max(0, replicas - updated)
        return ("False", "RollingOut", f"{min(updated, desired)}/{desired} replicas run the current template "
                f"({ready} ready, {old} old still running)")
    if desired == 0:
        return "True", "RolledOut", "scaled to zero replicas"
    return "True", "RolledOut", f"all {desired} replicas run the current template and are ready"


def group_at_rest(workload: dict[str, Any] | None) -> bool:
    """A LeaderWorkerSet whose controller has nothing left to do: every group it wants runs its
    current template and is ready (UpToDate's rule, on the object's own spec.replicas)."""
    if workload is None:
        return False
    replicas = int((workload.get("spec") or {}).get("replicas", 1) or 0)
    return rollout_condition(replicas, workload, True)[0] == "True"


def plan_status(plan: ServingPlan, inputs: str) -> dict[str, Any]:
    """What status keeps of a plan: enough to serve on with it when the hub cannot be read."""
    return {"tensorParallelSize": plan.tensor_parallel_size, "pipelineParallelSize": plan.pipeline_parallel_size,
            "gpusPerReplica": plan.gpus_per_replica, "parallelismReason": plan.parallelism_reason,
            "cacheClaim": plan.cache_claim,
            "plan": {"inputs": inputs, "nodesPerReplica": plan.nodes, "cacheSize": plan.cache_size,
                     **({"weightBytesPerPod": plan.weight_bytes_per_pod}
                        if plan.weight_bytes_per_pod is not None else {}),
                     **({"gpuProduct": plan.gpu_product} if plan.gpu_product else {})}}


def compute_status(vd: VLLMDeployment, *, current: dict[str, Any] | None, now: datetime,
                   plan: ServingPlan | None = None, failure: Failure | None = None,
                   cache: CacheState | None = None, deployment: dict[str, Any] | None = None,
                   readiness: ReadinessSummary | None = None, endpoint: str | None = None,
                   probing: bool = False, plan_inputs: str = "", plan_note: PlanNote | None = None,
                   workload_current: bool = True,
                   notes: tuple[tuple[str, str, str, str], ...] = (),
                   rollout: dict[str, Any] | None = None) -> dict[str, Any]:
    current = current or {}
    previous = {c.get("type"): c for c in current.get("conditions") or []}
    gen = vd.generation

    def cond(type_: str, status: str, reason: str, message: str) -> dict[str, Any]:
        return make_condition(type_, status, reason, message, now=now, previous=previous.get(type_),
                              observed_generation=gen)

    conditions: list[dict[str, Any]] = [cond(*note) for note in notes]
    out: dict[str, Any] = {"observedGeneration": gen}
    if rollout:
        out["rollout"] = rollout  # reconcile/rollout.py: strategy, counts, queue, failed template
    if plan is not None:
        out.update(plan_status(plan, plan_inputs))
        planned = plan_note or PlanNote("Planned", plan.parallelism_reason)
        conditions.append(cond("ParallelismPlanned", "True", planned.reason, planned.message))
    if endpoint:
        out["endpoint"] = endpoint
    replicas, pods_ready = _replicas(deployment)
    out["replicas"] = replicas
    out["selector"] = pod_selector(vd)  # the scale subresource's labelSelectorPath (HPA, KEDA)

    if failure is not None:
        if plan is None:
            conditions.append(cond("ParallelismPlanned", "False", failure.reason, failure.message))
        conditions.append(cond("Ready", "False", failure.reason, failure.message))
        conditions.append(cond("UpToDate", "False", failure.reason, failure.message))
        out.update(phase="Failed", readyReplicas=0, conditions=conditions)
        return out

    conditions.append(cond("UpToDate", *rollout_condition(vd.spec.replicas, deployment, workload_current)))
    if cache is not None:
        conditions.append(cond("ModelCached", "True" if cache.complete else "False", cache.reason, cache.message))
        if cache.failed:
            conditions.append(cond("Ready", "False", cache.reason, cache.message))
            out.update(phase="Failed", readyReplicas=0, conditions=conditions)
            return out
        if not cache.complete and deployment is None:
            conditions.append(cond("Ready", "False", "WaitingForModelCache", cache.message))
            out.update(phase="Downloading" if cache.active else "Pending", readyReplicas=0, conditions=conditions)
            return out

    desired = vd.spec.replicas
    ready_before = previous.get("Ready")
    carried = (probing and readiness is None and deployment is not None and ready_before is not None
               and ready_before.get("reason") not in ("WaitingForModelCache", "InvalidSpec", "Pending"))
    if carried:
        # The prober has not reported since this operator started: keep what the last one saw,
        # rather than writing a transient "unknown" after every restart.
        conditions.append(dict(ready_before, observedGeneration=gen))
        ready = int(current.get("readyReplicas") or 0)
    else:
        if probing:
            readiness = readiness or summarize_readiness([], desired)
        if readiness is not None:
            ready = readiness.ready_replicas
            status, reason, message = readiness.status, readiness.reason, readiness.message
        elif desired == 0:
            ready, status, reason, message = 0, "False", "ScaledToZero", "scaled to zero replicas"
        elif pods_ready:
            ready, status, reason, message = pods_ready, "True", "PodsReady", f"{pods_ready}/{desired} pods ready"
        else:
            ready, status, reason, message = 0, "False", "Loading", f"0/{desired} pods ready: the server is starting"
        conditions.append(cond("Ready", status, reason, message))
    if desired == 0:
        # the autoscaler took it to zero (scale to zero), not the user
        phase = "ScaledToZero" if vd.spec.autoscaling is not None else "Stopped"
    elif ready >= desired:
        phase = "Ready"
    elif ready > 0:
        phase = "Degraded"
    else:
        phase = "Deploying"
    out.update(phase=phase, readyReplicas=ready, conditions=conditions)
    return out


def status_differs(current: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """Compare as the API server stores it; conditions are compared by type, order-free."""
    current = dict(current or {})

    def norm(status: dict[str, Any]) -> dict[str, Any]:
        status = dict(status)
        status["conditions"] = sorted(status.get("conditions") or [], key=lambda c: c.get("type", ""))
        return status

    return norm(current) != norm(new)
