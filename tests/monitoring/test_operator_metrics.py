"""The operator's state metrics (scibox_operator/metrics.py): readings of stored objects and the
scrape-time collector, through prometheus_client's real exposition."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from scibox_operator import metrics

EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)


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
                      "Stopped": 0, "Failed": 1}


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
    metrics.register_state_collector(store, queue, registry=registry, since=EPOCH)
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
    collector = metrics.StateCollector(Broken(), metrics.DownloadRecorder(since=EPOCH))
    registry.register(collector)
    assert samples(registry) == {}


def test_concurrent_scrapes_record_a_download_once():
    from concurrent.futures import ThreadPoolExecutor

    recorder = metrics.DownloadRecorder(since=EPOCH)
    job = download_job("dl", uid="u-concurrent", condition="Complete")
    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(lambda _: recorder.observe(job), range(64)))
    assert sum(o is not None for o in outcomes) == 1
