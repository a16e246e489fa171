"""Where a rollout's start-up time went, stage by stage (pure: no I/O).

`status.startup` describes the latest rollout: the pass that first sees a new generation starts
it (`startedAt`); the first server pod created since then is the one whose stages are reported.

    planningSeconds         the serving plan (hub metadata, the planner), first pass only
    downloadSeconds/Bytes   the download Job's own report, when it ran for this rollout
    podCreationSeconds      rollout start -> the pod exists (planning, download, the workload)
    schedulingSeconds       pod created -> scheduled
    containerStartSeconds   scheduled -> the vLLM container runs (pull, volumes)
    engineLoadSeconds       container running -> /health 200 (weights, compile, KV cache)
    firstCompletionSeconds  /health 200 -> the first answered completion (the operator's probe)
    readySeconds            rollout start -> Ready (every replica serving), in total

Kubernetes timestamps have one-second resolution; /health and the completion are the prober's
own clock readings (`ProbeMarks`). A value once written is kept for the rollout (an operator
restart forgets the prober's readings, not the status). The pod's stages are written when its
server first answers or the rollout turns Ready, together with the Ready condition's change.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# The stages as metric label values (metrics.STARTUP_STAGE_SECONDS), in order.
STAGES = ("planning", "download", "podCreation", "scheduling", "containerStart", "engineLoad",
          "firstCompletion", "ready")

_POD_KEYS = frozenset({"pod", "podCreationSeconds", "schedulingSeconds", "containerStartSeconds",
                       "engineLoadSeconds", "firstCompletionSeconds"})


@dataclass(frozen=True)
class StartupInputs:
    planning_seconds: float | None = None  # measured by this pass
    download_report: Mapping[str, Any] | None = None  # the download script's JSON report
    job: Mapping[str, Any] | None = None  # the download Job
    pods: tuple[Mapping[str, Any], ...] = ()  # server pods (store summaries)
    # pod uid -> {"health": epoch seconds of the first /health 200, "serving": of the first completion}
    marks: Mapping[str, Mapping[str, float]] = field(default_factory=dict)


def _ts(value: Any) -> datetime | None:
    if not value or not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _secs(later: datetime | None, earlier: datetime | None) -> float | None:
    if later is None or earlier is None:
        return None
    return round(max(0.0, (later - earlier).total_seconds()), 3)


def _first_new_pod(pods: Iterable[Mapping[str, Any]], started: datetime) -> Mapping[str, Any] | None:
    floor = started.replace(microsecond=0)  # creationTimestamp is truncated to the second
    new = [(created, p["metadata"].get("name") or "", p) for p in pods
           if (created := _ts(p["metadata"].get("creationTimestamp"))) is not None and created >= floor]
    return min(new, key=lambda t: (t[0], t[1]))[2] if new else None


def _pod_stages(pod: Mapping[str, Any], marks: Mapping[str, Mapping[str, float]],
                started: datetime) -> dict[str, Any]:
    status = pod.get("status") or {}
    created = _ts(pod["metadata"].get("creationTimestamp"))
    scheduled = next((_ts(c.get("lastTransitionTime")) for c in status.get("conditions") or []
                      if c.get("type") == "PodScheduled" and c.get("status") == "True"), None)
    statuses = list(status.get("containerStatuses") or [])
    server = next((cs for cs in statuses if cs.get("name") == "vllm"), statuses[0] if statuses else {})
    running = _ts(((server.get("state") or {}).get("running") or {}).get("startedAt"))
    mark = marks.get(pod["metadata"].get("uid") or "") or {}
    health = datetime.fromtimestamp(mark["health"], UTC) if "health" in mark else None
    serving = datetime.fromtimestamp(mark["serving"], UTC) if "serving" in mark else None
    out: dict[str, Any] = {"pod": pod["metadata"].get("name")}
    for name, value in (("podCreationSeconds", _secs(created, started)),
                        ("schedulingSeconds", _secs(scheduled, created)),
                        ("containerStartSeconds", _secs(running, scheduled)),
                        ("engineLoadSeconds", _secs(health, running)),
                        ("firstCompletionSeconds", _secs(serving, health))):
        if value is not None:
            out[name] = value
    return out


def _download(report: Mapping[str, Any] | None, job: Mapping[str, Any] | None,
              started: datetime) -> dict[str, Any]:
    """The download's numbers when its Job finished during this rollout."""
    if not report or "bytes" not in report or job is None:
        return {}
    completed = _ts((job.get("status") or {}).get("completionTime"))
    if completed is None or completed < started.replace(microsecond=0):
        return {}
    seconds = float(report.get("duration_seconds") or 0.0)
    moved = int(report.get("downloaded_bytes", report.get("bytes")) or 0)
    out: dict[str, Any] = {"downloadSeconds": round(seconds, 3), "downloadBytes": moved}
    if report.get("cached"):
        out["downloadCached"] = True
    if seconds > 0:
        out["downloadBytesPerSecond"] = int(moved / seconds)
    return out


def startup_status(generation: int, previous: Mapping[str, Any] | None, *, now: datetime,
                   inputs: StartupInputs, ready: bool, rolled_out: bool = True) -> dict[str, Any]:
    """The `status.startup` block for this pass; `previous` is the one in status now.

    `ready`: the model is Ready (phase Ready); `rolled_out`: UpToDate (every replica runs the
    current template, ready by the kubelet's probes). The rollout is over when both hold, or
    sooner, when Ready holds and the rollout's first new pod answered its first completion: the
    old pods' answers during a rollout never count, the kubelet's probe period does not either."""
    prev = dict(previous or {})
    if prev.get("generation") != generation or _ts(prev.get("startedAt")) is None:
        prev = {}
        started = now
        out: dict[str, Any] = {"generation": generation, "startedAt": _iso(now)}
        if inputs.planning_seconds is not None:
            out["planningSeconds"] = round(inputs.planning_seconds, 3)
    else:
        started = _ts(prev["startedAt"]) or now
        out = {"generation": generation, "startedAt": prev["startedAt"]}
        if "planningSeconds" in prev:
            out["planningSeconds"] = prev["planningSeconds"]
    out.update(_download(inputs.download_report, inputs.job, started))
    pod = _first_new_pod(inputs.pods, started)
    # The pod's stages appear when its server first answered (or the rollout is Ready): passes
    # that write status anyway (the Ready condition changes then), so no extra status write.
    if pod is not None and (ready or "health" in inputs.marks.get(pod["metadata"].get("uid") or "", {})
                            or prev.get("pod") == pod["metadata"].get("name")):
        stages = _pod_stages(pod, inputs.marks, started)
        if prev.get("pod") not in (None, stages["pod"]):  # that pod went: the next one's stages
            prev = {k: v for k, v in prev.items() if k not in _POD_KEYS}
        out.update(stages)
    new_pod_served = pod is not None and "serving" in inputs.marks.get(pod["metadata"].get("uid") or "", {})
    if ready and (rolled_out or new_pod_served) and "readySeconds" not in prev:
        out["readySeconds"] = _secs(now, started)
    # What was measured once stays (the prober's readings do not survive an operator restart).
    for key, value in prev.items():
        out.setdefault(key, value)
    return out


def new_stage_values(previous: Mapping[str, Any] | None, current: Mapping[str, Any]) -> dict[str, float]:
    """Stage -> seconds for the values this pass added (what the histograms observe once)."""
    prev = dict(previous or {})
    if prev.get("generation") != current.get("generation") or prev.get("startedAt") != current.get("startedAt"):
        prev = {}
    out: dict[str, float] = {}
    for stage in STAGES:
        key = f"{stage}Seconds"
        if key in current and key not in prev:
            out[stage] = float(current[key])
    return out
