"""The operator's own Prometheus metrics, served by `serve` on the operator's event loop.

Two kinds:
* event metrics the code paths update as they happen (reconciles, applies, API requests, probes,
  and finished model downloads: `DownloadRecorder`, fed from the Job and download pod events);
* state metrics read from the controller's in-memory store at scrape time
  (`register_state_collector`): VLLMDeployments by phase, per-VLLMDeployment replicas and phase,
  download Job attempts, and the work-queue depth. Reading at scrape time keeps them exact
  without any periodic task, and series of deleted objects disappear by themselves. A scrape
  only reads: it never records anything.

Per-object series are labelled `vllmdeployment_namespace` / `vllmdeployment`, never `namespace`:
Prometheus attaches the *operator's* namespace as `namespace` to everything it scrapes, and a
clash would silently rename ours to `exported_namespace` unless the scrape honours labels.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from scibox_operator.api.names import COMPONENT_LABEL, DOWNLOAD

from .engine.cache_layout import parse_download_report

log = logging.getLogger(__name__)

RECONCILES = Counter("scibox_operator_reconciles_total", "Reconcile passes by result", ["result"])
RECONCILE_SECONDS = Histogram(
    "scibox_operator_reconcile_duration_seconds", "Duration of one reconcile pass",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
APPLIES = Counter("scibox_operator_applies_total", "Server-side applies sent, by child kind", ["kind"])
API_REQUESTS = Counter("scibox_operator_api_requests_total", "Kubernetes API requests sent", ["verb", "code"])
API_ERRORS = Counter("scibox_operator_api_errors_total", "Kubernetes API requests that failed", ["verb", "code"])
PHASE_TRANSITIONS = Counter("scibox_operator_phase_transitions_total", "Status phase changes written", ["phase"])
DEPLOYMENTS_BY_PHASE = Gauge("scibox_operator_vllmdeployments", "VLLMDeployments by phase", ["phase"])
QUEUE_DEPTH = Gauge("scibox_operator_queue_depth", "Keys waiting for a reconcile")
PROBES = Counter("scibox_operator_probes_total", "Server probes by result reason", ["reason"])
PROBE_SECONDS = Histogram(
    "scibox_operator_probe_duration_seconds", "Duration of one server probe",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
DOWNLOAD_SECONDS = Histogram(
    "scibox_operator_model_download_duration_seconds", "Duration of completed model downloads",
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 3600, 7200),
)
DOWNLOAD_BYTES = Counter("scibox_operator_model_download_bytes_total", "Bytes of completed model downloads")
# Each rollout's start-up stages (status.startup, reconcile/startup.py STAGES), observed once.
STARTUP_STAGE_SECONDS = Histogram(
    "scibox_operator_startup_stage_seconds", "Seconds a rollout spent in each start-up stage "
    "(planning, download, podCreation, scheduling, containerStart, engineLoad, firstCompletion, ready = in total)",
    ["stage"], buckets=(0.05, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200, 3600),
)
DOWNLOAD_BYTES_PER_SECOND = Histogram(
    "scibox_operator_model_download_bytes_per_second", "Throughput of model downloads that ran for a rollout",
    buckets=(1e5, 1e6, 1e7, 5e7, 1e8, 2.5e8, 5e8, 1e9, 2.5e9, 1e10),
)
DOWNLOAD_FAILURES = Counter("scibox_operator_model_download_failures_total", "Failed model download Jobs")

# Every phase status.compute_status writes, plus Unknown for objects without a status yet.
# All are exported (0 when empty) so "by phase" panels and alerts see a stable set of series.
PHASES = ("Unknown", "Pending", "Downloading", "Deploying", "Ready", "Degraded", "Stopped", "Failed",
          "ScaledToZero")

NS_LABEL = "vllmdeployment_namespace"
NAME_LABEL = "vllmdeployment"
_JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")
_OWNER_NAME_LABEL = "scibox.io/vllmdeployment"


def record_request(method: str, path: str, status: int) -> None:
    API_REQUESTS.labels(verb=method, code=str(status)).inc()
    if status >= 400:
        API_ERRORS.labels(verb=method, code=str(status)).inc()


# --- pure readings of stored objects ----------------------------------------------------------


def phase_of(vllmd: Mapping[str, Any]) -> str:
    phase = (vllmd.get("status") or {}).get("phase")
    return phase if phase in PHASES else "Unknown"


def count_by_phase(vllmds: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Phase -> number of VLLMDeployments, with every phase of PHASES present."""
    counts = dict.fromkeys(PHASES, 0)
    for body in vllmds:
        if (body.get("metadata") or {}).get("deletionTimestamp"):
            continue  # going away: no longer counts as serving or failing
        counts[phase_of(body)] += 1
    return counts


@dataclass(frozen=True)
class DeploymentReading:
    namespace: str
    name: str
    phase: str
    desired_replicas: int
    ready_replicas: int


def read_deployment(body: Mapping[str, Any]) -> DeploymentReading:
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    desired = spec.get("replicas", 1)  # the CRD's default
    return DeploymentReading(
        namespace=str(meta.get("namespace", "")), name=str(meta.get("name", "")), phase=phase_of(body),
        desired_replicas=_int(desired, 1), ready_replicas=_int(status.get("readyReplicas"), 0))


@dataclass(frozen=True)
class DownloadOutcome:
    """A finished download Job: `succeeded` or not, how long it ran and (when the download pod
    left its JSON summary as termination message) how many bytes it fetched."""

    uid: str
    namespace: str
    job: str
    vllmdeployment: str
    succeeded: bool
    finished_at: datetime
    duration_seconds: float | None
    downloaded_bytes: int | None


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _job_condition(job: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]] | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "Failed"):
            return cond["type"], cond
    return None


def downloaded_bytes_from_pods(job_name: str, namespace: str, pods: Iterable[Mapping[str, Any]]) -> int | None:
    """`downloaded_bytes` from the summary download_model.py writes as the pod's termination
    message; None when no pod of this Job carries one."""
    for pod in pods:
        meta = pod.get("metadata") or {}
        labels = meta.get("labels") or {}
        if meta.get("namespace") != namespace or job_name not in (labels.get(k) for k in _JOB_NAME_LABELS):
            continue
        for state in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (state.get("state") or {}).get("terminated") or {}
            if terminated.get("exitCode") != 0 or not terminated.get("message"):
                continue
            summary = parse_download_report(terminated["message"])
            if summary is not None and isinstance(summary.get("downloaded_bytes"), int):
                return summary["downloaded_bytes"]
    return None


def download_outcome(job: Mapping[str, Any], pods: Iterable[Mapping[str, Any]] = ()) -> DownloadOutcome | None:
    """What a download Job's status says about a finished download; None while it runs."""
    finished = _job_condition(job)
    if finished is None:
        return None
    kind, cond = finished
    meta = job.get("metadata") or {}
    status = job.get("status") or {}
    started = _parse_time(status.get("startTime"))
    ended = _parse_time(status.get("completionTime")) if kind == "Complete" else None
    ended = ended or _parse_time(cond.get("lastTransitionTime"))
    if ended is None:
        return None  # a condition without any time: nothing trustworthy to record
    duration = (ended - started).total_seconds() if started else None
    name, namespace = str(meta.get("name", "")), str(meta.get("namespace", ""))
    return DownloadOutcome(
        uid=str(meta.get("uid") or f"{namespace}/{name}"), namespace=namespace, job=name,
        vllmdeployment=str((meta.get("labels") or {}).get(_OWNER_NAME_LABEL, "")),
        succeeded=kind == "Complete", finished_at=ended,
        duration_seconds=max(duration, 0.0) if duration is not None else None,
        downloaded_bytes=downloaded_bytes_from_pods(name, namespace, pods) if kind == "Complete" else None)


def is_download_job(job: Mapping[str, Any]) -> bool:
    return ((job.get("metadata") or {}).get("labels") or {}).get(COMPONENT_LABEL) == DOWNLOAD


# --- recording ------------------------------------------------------------------------------


def _job_of(pod: Mapping[str, Any]) -> str | None:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return next((labels[k] for k in _JOB_NAME_LABELS if labels.get(k)), None)


def _key(body: Mapping[str, Any]) -> tuple[str, str]:
    meta = body.get("metadata") or {}
    return str(meta.get("namespace", "")), str(meta.get("name", ""))


class DownloadRecorder:
    """Records each finished download Job once (by uid) into DOWNLOAD_SECONDS / DOWNLOAD_BYTES /
    DOWNLOAD_FAILURES, as its events arrive (`job_event`, `pod_event`). Jobs that finished before
    `since` are skipped: after an operator restart the watch replays old Jobs, and counting them
    again would show downloads that did not happen.

    The bytes come from the download pod's termination message and the outcome from the Job's
    condition: two watch streams, so either may come first. Whichever comes second records."""

    def __init__(self, since: datetime | None = None):
        self.since = since or datetime.now().astimezone()
        self._seen: set[str] = set()
        self._bytes: dict[tuple[str, str], int] = {}  # (namespace, job) -> bytes its pod reported
        self._pending: set[tuple[str, str]] = set()  # succeeded Jobs whose bytes are not known yet
        # observe() may be called from other threads (an executor, tests): one Job, one record.
        self._lock = threading.Lock()

    def job_event(self, event_type: str | None, job: Mapping[str, Any]) -> DownloadOutcome | None:
        if not is_download_job(job):
            return None
        key = _key(job)
        if event_type == "DELETED":
            self._forget(job, key)
            return None
        outcome = download_outcome(job)
        if outcome is not None and outcome.succeeded and key in self._bytes:
            outcome = dataclasses.replace(outcome, downloaded_bytes=self._bytes[key])
        recorded = self._record(outcome)
        if recorded is not None and recorded.succeeded and recorded.downloaded_bytes is None:
            self._pending.add(key)
        return recorded

    def pod_event(self, event_type: str | None, pod: Mapping[str, Any]) -> None:
        job = _job_of(pod)
        if job is None:
            return
        key = (str((pod.get("metadata") or {}).get("namespace", "")), job)
        if event_type == "DELETED":
            self._bytes.pop(key, None)
            return
        count = downloaded_bytes_from_pods(job, key[0], [pod])
        if count is None:
            return
        self._bytes[key] = count
        if key in self._pending:
            self._pending.discard(key)
            DOWNLOAD_BYTES.inc(count)

    def observe(self, job: Mapping[str, Any], pods: Iterable[Mapping[str, Any]] = ()) -> DownloadOutcome | None:
        """Record a Job whose pods are at hand (bytes read from them)."""
        return self._record(download_outcome(job, pods))

    def _record(self, outcome: DownloadOutcome | None) -> DownloadOutcome | None:
        if outcome is None:
            return None
        with self._lock:
            if outcome.uid in self._seen:
                return None
            self._seen.add(outcome.uid)
        if outcome.finished_at < self.since.replace(microsecond=0):  # API times have whole seconds
            return None
        if outcome.succeeded:
            if outcome.duration_seconds is not None:
                DOWNLOAD_SECONDS.observe(outcome.duration_seconds)
            if outcome.downloaded_bytes:
                DOWNLOAD_BYTES.inc(outcome.downloaded_bytes)
        else:
            DOWNLOAD_FAILURES.inc()
        return outcome

    def _forget(self, job: Mapping[str, Any], key: tuple[str, str]) -> None:
        """A deleted Job: its records go, so that they do not grow without bound."""
        meta = job.get("metadata") or {}
        with self._lock:
            self._seen.discard(str(meta.get("uid") or f"{key[0]}/{key[1]}"))
        self._pending.discard(key)
        self._bytes.pop(key, None)


class StateCollector(Collector):
    """Per-object gauges computed from the controller's store on every scrape (on the event
    loop, like every write to the store: no copy, no lock)."""

    def __init__(self, store: Any):
        self.store = store

    def _snapshot(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return list(self.store.vllmds.values()), list(self.store.children.get("Job", {}).values())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            vllmds, jobs = self._snapshot()
        except Exception:  # noqa: BLE001 - a metrics bug must never break /metrics
            log.exception("state metrics: cannot read the store")
            return
        labels = [NS_LABEL, NAME_LABEL]
        phase = GaugeMetricFamily("scibox_operator_vllmdeployment_phase",
                                  "1 for the current status phase of each VLLMDeployment", labels=labels + ["phase"])
        desired = GaugeMetricFamily("scibox_operator_vllmdeployment_desired_replicas",
                                    "spec.replicas of each VLLMDeployment", labels=labels)
        ready = GaugeMetricFamily("scibox_operator_vllmdeployment_ready_replicas",
                                  "status.readyReplicas (replicas that answer requests) of each VLLMDeployment",
                                  labels=labels)
        # only for objects with spec.autoscaling: the alert on an autoscaler pinned at its bound
        max_replicas = GaugeMetricFamily("scibox_operator_vllmdeployment_autoscaling_max_replicas",
                                         "spec.autoscaling.maxReplicas of each autoscaled VLLMDeployment",
                                         labels=labels)
        for body in vllmds:
            reading = read_deployment(body)
            key = [reading.namespace, reading.name]
            for p in PHASES:
                phase.add_metric(key + [p], 1.0 if p == reading.phase else 0.0)
            desired.add_metric(key, reading.desired_replicas)
            ready.add_metric(key, reading.ready_replicas)
            bound = ((body.get("spec") or {}).get("autoscaling") or {}).get("maxReplicas")
            if bound is not None:
                max_replicas.add_metric(key, _int(bound, 0))
        failed_pods = GaugeMetricFamily(
            "scibox_operator_model_download_failed_pods",
            "Failed pod attempts of each model download Job that still exists (status.failed)",
            labels=[NS_LABEL, "download_job"])
        for job in jobs:
            if is_download_job(job):
                failed_pods.add_metric(list(_key(job)), _int((job.get("status") or {}).get("failed"), 0))
        yield from (phase, desired, ready, max_replicas, failed_pods)


_state: dict[str, Any] = {}


def register_state_collector(store: Any, queue: Any = None, *,
                             registry: CollectorRegistry = REGISTRY) -> StateCollector:
    """Export the controller's state: call once, after the Controller is built (main.startup).

    `store` needs `.vllmds` ({key: VLLMDeployment body}) and `.children` ({kind: {key: body}}),
    optionally `.pods`; `queue` needs `.depth()`. Calling again (tests, a restarted controller in
    the same process) replaces the previous binding."""
    old = _state.pop("collector", None)
    if old is not None:
        try:
            _state["registry"].unregister(old)
        except KeyError:
            pass
    collector = StateCollector(store)
    registry.register(collector)
    _state.update(collector=collector, registry=registry)

    def vllmds() -> list[dict[str, Any]]:
        return list(store.vllmds.values())

    for p in PHASES:
        DEPLOYMENTS_BY_PHASE.labels(phase=p).set_function(_phase_counter(vllmds, p))
    if queue is not None:
        QUEUE_DEPTH.set_function(queue.depth)
    return collector


def _phase_counter(vllmds: Callable[[], list[dict[str, Any]]], phase: str) -> Callable[[], float]:
    return lambda: float(count_by_phase(vllmds())[phase])



# --- the endpoint ---------------------------------------------------------------------------


async def serve(port: int, addr: str = "0.0.0.0", registry: CollectorRegistry = REGISTRY) -> web.AppRunner | None:
    """Serve /metrics on the running event loop; stop it with `await runner.cleanup()`.

    On the loop, a scrape reads the store between two events, never in the middle of one (a
    server thread raced the loop's writes). Port 0 disables it; a port that cannot be bound
    is logged, not raised: metrics are not worth a crash loop. Returns None when not serving."""
    if not port:
        return None
    app = web.Application()
    app.router.add_get("/metrics", make_aiohttp_handler(registry))
    runner = web.AppRunner(app, access_log=None)  # a log line per scrape says nothing
    await runner.setup()
    try:
        await web.TCPSite(runner, addr, port).start()
    except OSError as exc:
        log.error("metrics endpoint on %s:%s not started: %s", addr, port, exc)
        await runner.cleanup()
        return None
    return runner
