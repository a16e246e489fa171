"""The operator's state metrics (scibox_operator/metrics.py): readings of stored objects, the
scrape-time collector through prometheus_client's real exposition, download metrics recorded
from events, and the /metrics endpoint on the event loop (a real aiohttp server on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from scibox_operator import metrics

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def vllmd(name: str, phase: str | None, *, ns: str = "ml", replicas: int | None = 1, ready: int = 0,
          deleting: bool = False) -> dict:
    meta = {"name": name, "namespace": ns}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    spec = {} if replicas is None else {"replicas": replicas}
    status = {} if phase is None else {"phase": phase, "readyReplicas": ready}
    return {"metadata": meta, "spec": spec, "status": status}


def download_job(name: str, *, uid: str, condition: str | None, start: str = "2026-01-01T10:00:00Z",
                 end: str = "2026-01-01T10:02:30Z", failed: int = 0) -> dict:
    status: dict = {"startTime": start, "failed": failed}
    if condition == "Complete":
        status.update(completionTime=end, succeeded=1,
                      conditions=[{"type": "Complete", "status": "True", "lastTransitionTime": end}])
    elif condition == "Failed":
        status["conditions"] = [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                 "lastTransitionTime": end}]
    return {"metadata": {"name": name, "namespace": "ml", "uid": uid,
                         "labels": {"app.kubernetes.io/component": "model-download",
                                    "scibox.io/vllmdeployment": "llama"}},
            "status": status}


def download_pod(job: str, message: str, exit_code: int = 0) -> dict:
    return {"metadata": {"name": f"{job}-x", "namespace": "ml", "labels": {"batch.kubernetes.io/job-name": job}},
            "status": {"containerStatuses": [{"name": "download", "state": {"terminated": {
                "exitCode": exit_code, "message": message}}}]}}


class Store:
    def __init__(self, vllmds=(), jobs=(), pods=()):
        self.vllmds = {(v["metadata"]["namespace"], v["metadata"]["name"]): v for v in vllmds}
        self.children = {"Job": {(j["metadata"]["namespace"], j["metadata"]["name"]): j for j in jobs}}
        self.pods = {(p["metadata"]["namespace"], p["metadata"]["name"]): p for p in pods}


class Queue:
    def __init__(self, depth: int):
        self.value = depth

    def depth(self) -> int:
        return self.value


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


# --- pure readings ---------------------------------------------------------------------------


def test_count_by_phase_reports_every_phase_and_skips_objects_being_deleted():
    counts = metrics.count_by_phase([vllmd("a", "Ready"), vllmd("b", "Ready"), vllmd("c", "Failed"),
                                     vllmd("d", None), vllmd("e", "Ready", deleting=True), vllmd("f", "Weird")])
    assert counts == {"Unknown": 2, "Pending": 0, "Downloading": 0, "Deploying": 0, "Ready": 2, "Degraded": 0,
                      "Stopped": 0, "Failed": 1, "ScaledToZero": 0}


def test_every_phase_the_crd_documents_is_exported():
    import re
    from pathlib import Path

    import yaml

    crd = yaml.safe_load((Path(__file__).resolve().parents[2] / "crds" / "scibox.io_vllmdeployments.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["phase"]
    documented = set(re.search(r"\((.*)\)", schema["description"]).group(1).replace(" ", "").split(","))
    assert len(documented) >= 7 and documented <= set(metrics.PHASES)


def test_read_deployment_defaults_replicas_like_the_crd():
    reading = metrics.read_deployment(vllmd("a", None, replicas=None))
    assert (reading.desired_replicas, reading.ready_replicas, reading.phase) == (1, 0, "Unknown")
    assert metrics.read_deployment(vllmd("b", "Degraded", replicas=3, ready=2)).ready_replicas == 2


def test_a_running_job_has_no_outcome():
    assert metrics.download_outcome(download_job("dl", uid="1", condition=None)) is None


def test_completed_job_outcome_has_duration_and_bytes_from_the_pod_summary():
    summary = json.dumps({"repo": "org/m", "bytes": 900, "downloaded_bytes": 700, "cached": False})
    outcome = metrics.download_outcome(download_job("dl", uid="1", condition="Complete"),
                                       [download_pod("other", json.dumps({"downloaded_bytes": 5})),
                                        download_pod("dl", summary)])
    assert outcome.succeeded and outcome.duration_seconds == 150.0 and outcome.downloaded_bytes == 700
    assert outcome.vllmdeployment == "llama"


@pytest.mark.parametrize("message", ["download failed [auth]: 401", '{"error": "auth"}', ""])
def test_bytes_are_unknown_without_a_summary(message):
    outcome = metrics.download_outcome(download_job("dl", uid="1", condition="Complete"), [download_pod("dl", message)])
    assert outcome.downloaded_bytes is None


def test_failed_job_outcome():
    outcome = metrics.download_outcome(download_job("dl", uid="1", condition="Failed"))
    assert outcome is not None and not outcome.succeeded and outcome.downloaded_bytes is None


def test_recorder_counts_each_job_once_and_skips_jobs_finished_before_it_started():
    def value(name):
        return REGISTRY.get_sample_value(name) or 0.0

    before = {n: value(n) for n in ("scibox_operator_model_download_duration_seconds_count",
                                    "scibox_operator_model_download_duration_seconds_sum",
                                    "scibox_operator_model_download_bytes_total",
                                    "scibox_operator_model_download_failures_total")}
    recorder = metrics.DownloadRecorder(since=EPOCH)
    done = download_job("dl", uid="u1", condition="Complete")
    pods = [download_pod("dl", json.dumps({"downloaded_bytes": 1000}))]
    assert recorder.observe(done, pods) is not None
    assert recorder.observe(done, pods) is None, "the same Job again"
    assert recorder.observe(download_job("bad", uid="u2", condition="Failed")) is not None
    old = download_job("old", uid="u3", condition="Complete", start="2025-12-31T10:00:00Z", end="2025-12-31T11:00:00Z")
    assert recorder.observe(old) is None, "finished before the operator started"
    delta = {n: value(n) - v for n, v in before.items()}
    assert delta == {"scibox_operator_model_download_duration_seconds_count": 1.0,
                     "scibox_operator_model_download_duration_seconds_sum": 150.0,
                     "scibox_operator_model_download_bytes_total": 1000.0,
                     "scibox_operator_model_download_failures_total": 1.0}


# --- the collector, through a real registry and exposition -----------------------------------


def test_state_collector_exports_per_object_gauges_and_follows_the_store():
    store = Store(vllmds=[vllmd("llama", "Ready", replicas=2, ready=2), vllmd("qwen", "Deploying", ns="cv")],
                  jobs=[download_job("dl-llama", uid="j1", condition=None, failed=2)])
    queue = Queue(3)
    registry = CollectorRegistry()
    metrics.register_state_collector(store, queue, registry=registry)
    got = samples(registry)
    key = (("vllmdeployment", "llama"), ("vllmdeployment_namespace", "ml"))
    assert got[("scibox_operator_vllmdeployment_desired_replicas", key)] == 2
    assert got[("scibox_operator_vllmdeployment_ready_replicas", key)] == 2
    assert got[("scibox_operator_vllmdeployment_phase", tuple(sorted(key + (("phase", "Ready"),))))] == 1
    assert got[("scibox_operator_vllmdeployment_phase", tuple(sorted(key + (("phase", "Failed"),))))] == 0
    assert got[("scibox_operator_model_download_failed_pods",
                (("download_job", "dl-llama"), ("vllmdeployment_namespace", "ml")))] == 2
    assert REGISTRY.get_sample_value("scibox_operator_vllmdeployments", {"phase": "Deploying"}) == 1
    assert REGISTRY.get_sample_value("scibox_operator_queue_depth") == 3

    del store.vllmds[("cv", "qwen")]
    queue.value = 0
    got = samples(registry)
    assert not any(dict(labels).get("vllmdeployment") == "qwen" for _, labels in got), "deleted: its series go"
    assert REGISTRY.get_sample_value("scibox_operator_vllmdeployments", {"phase": "Deploying"}) == 0
    assert REGISTRY.get_sample_value("scibox_operator_queue_depth") == 0


def test_registering_again_replaces_the_previous_binding():
    registry = CollectorRegistry()
    metrics.register_state_collector(Store(vllmds=[vllmd("old", "Ready")]), Queue(0), registry=registry)
    metrics.register_state_collector(Store(vllmds=[vllmd("new", "Ready")]), Queue(0), registry=registry)
    names = {dict(labels).get("vllmdeployment") for _, labels in samples(registry)}
    assert names == {"new"}


def test_a_broken_store_never_breaks_the_metrics_endpoint():
    class Broken:
        @property
        def vllmds(self):
            raise RuntimeError("boom")

        children: dict = {}

    registry = CollectorRegistry()
    collector = metrics.StateCollector(Broken())
    registry.register(collector)
    assert samples(registry) == {}


def test_concurrent_scrapes_record_a_download_once():
    from concurrent.futures import ThreadPoolExecutor

    recorder = metrics.DownloadRecorder(since=EPOCH)
    job = download_job("dl", uid="u-concurrent", condition="Complete")
    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(lambda _: recorder.observe(job), range(64)))
    assert sum(o is not None for o in outcomes) == 1


# --- download metrics, recorded from events ----------------------------------------------------

DOWNLOAD_SERIES = ("scibox_operator_model_download_duration_seconds_count",
                   "scibox_operator_model_download_bytes_total",
                   "scibox_operator_model_download_failures_total")


def download_values() -> dict[str, float]:
    return {n: REGISTRY.get_sample_value(n) or 0.0 for n in DOWNLOAD_SERIES}


def grown(before: dict[str, float]) -> dict[str, float]:
    return {n: v - before[n] for n, v in download_values().items()}


def finished_download(uid: str, downloaded: int):
    job = download_job(f"dl-{uid}", uid=uid, condition="Complete")
    return job, download_pod(job["metadata"]["name"], json.dumps({"downloaded_bytes": downloaded}))


@pytest.mark.parametrize("order", ["pod-then-job", "job-then-pod"])
def test_a_download_is_recorded_when_its_events_arrive_in_either_order(order):
    recorder = metrics.DownloadRecorder(since=EPOCH)
    job, pod = finished_download(f"ev-{order}", 4096)
    running = download_job(job["metadata"]["name"], uid=job["metadata"]["uid"], condition=None)
    before = download_values()
    recorder.job_event("ADDED", running)
    events = [("pod", pod), ("job", job)] if order == "pod-then-job" else [("job", job), ("pod", pod)]
    for what, body in events:
        (recorder.pod_event if what == "pod" else recorder.job_event)("MODIFIED", body)
    for what, body in events:  # the same events again (a re-list): nothing more
        (recorder.pod_event if what == "pod" else recorder.job_event)("MODIFIED", body)
    assert grown(before) == {"scibox_operator_model_download_duration_seconds_count": 1.0,
                             "scibox_operator_model_download_bytes_total": 4096.0,
                             "scibox_operator_model_download_failures_total": 0.0}


def test_a_failed_download_job_event_counts_a_failure_and_a_server_job_counts_nothing():
    recorder = metrics.DownloadRecorder(since=EPOCH)
    before = download_values()
    recorder.job_event("MODIFIED", download_job("bad", uid="ev-failed", condition="Failed"))
    other = download_job("not-a-download", uid="ev-other", condition="Complete")
    other["metadata"]["labels"]["app.kubernetes.io/component"] = "server"
    assert recorder.job_event("MODIFIED", other) is None
    assert grown(before)["scibox_operator_model_download_failures_total"] == 1.0
    assert grown(before)["scibox_operator_model_download_duration_seconds_count"] == 0.0


def test_a_deleted_job_is_forgotten():
    recorder = metrics.DownloadRecorder(since=EPOCH)
    job, pod = finished_download("ev-deleted", 10)
    recorder.pod_event("MODIFIED", pod)
    assert recorder.job_event("MODIFIED", job) is not None
    recorder.pod_event("DELETED", pod)
    recorder.job_event("DELETED", job)
    assert not recorder._seen and not recorder._bytes and not recorder._pending


def test_a_scrape_records_no_download():
    """Scraping reads: finished Jobs and their pods in the store are not counted by a scrape."""
    just_now = datetime.now(UTC) + timedelta(seconds=30)  # after any recorder's start
    job = download_job("dl-scrape", uid="scrape-only", condition="Complete",
                       start=(just_now - timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                       end=just_now.strftime("%Y-%m-%dT%H:%M:%SZ"))
    pod = download_pod("dl-scrape", json.dumps({"downloaded_bytes": 777}))
    registry = CollectorRegistry()
    metrics.register_state_collector(Store(jobs=[job], pods=[pod]), Queue(0), registry=registry)
    before = download_values()
    samples(registry)
    generate_latest(REGISTRY)
    assert grown(before) == dict.fromkeys(DOWNLOAD_SERIES, 0.0)


# --- the endpoint on the event loop --------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThreadProbe(Collector):
    """A collector that notes the thread each scrape runs on."""

    def __init__(self):
        self.threads: list[int] = []

    def collect(self):
        self.threads.append(threading.get_ident())
        yield GaugeMetricFamily("scibox_test_probe", "scrapes seen", value=len(self.threads))


def test_metrics_are_served_on_the_event_loop_and_stop_with_it():
    async def scenario():
        registry = CollectorRegistry()
        probe = ThreadProbe()
        registry.register(probe)
        port = free_port()
        runner = await metrics.serve(port, "127.0.0.1", registry=registry)
        assert runner is not None
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
                text, ctype = await resp.text(), resp.headers["Content-Type"]
            await runner.cleanup()
            with pytest.raises(aiohttp.ClientConnectionError):
                async with session.get(f"http://127.0.0.1:{port}/metrics"):
                    pass
        return text, ctype, probe.threads

    text, ctype, threads = asyncio.run(scenario())
    assert "scibox_test_probe 1.0" in text and ctype.startswith("text/plain")
    assert threads == [threading.get_ident()], "the scrape ran off the event loop's thread"


def test_a_port_in_use_is_logged_not_raised_and_port_zero_disables(caplog):
    async def scenario():
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            return await metrics.serve(port, "127.0.0.1"), await metrics.serve(0, "127.0.0.1"), port

    busy, disabled, port = asyncio.run(scenario())
    assert busy is None and disabled is None
    assert any(r.levelname == "ERROR" and str(port) in r.getMessage() for r in caplog.records)


def test_autoscaled_objects_export_their_max_replicas_and_others_do_not():
    scaled = vllmd("scaled", "Ready", replicas=2, ready=2)
    scaled["spec"]["autoscaling"] = {"minReplicas": 1, "maxReplicas": 4}
    registry = CollectorRegistry()
    metrics.register_state_collector(Store(vllmds=[scaled, vllmd("fixed", "Ready")]), Queue(0), registry=registry)
    got = {labels: v for (name, labels), v in samples(registry).items()
           if name == "scibox_operator_vllmdeployment_autoscaling_max_replicas"}
    assert got == {(("vllmdeployment", "scaled"), ("vllmdeployment_namespace", "ml")): 4}
