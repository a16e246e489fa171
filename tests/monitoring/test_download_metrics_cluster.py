"""Download metrics of a real download Job on the local cluster, recorded from its watch events
and read through the operator's real /metrics endpoint (aiohttp on the event loop).

The session cluster's kwok nodes complete download pods without a termination message, so the
bytes counted must be what the pods reported: none here (the e2e cluster runs the real script)."""

from __future__ import annotations

import json
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.operator.kubehelp import apply, get, wait_for

pytestmark = pytest.mark.cluster

SERIES = ("scibox_operator_model_download_duration_seconds_count", "scibox_operator_model_download_bytes_total",
          "scibox_operator_model_download_failures_total")


def download_series(text: str) -> dict[str, float]:
    found = dict.fromkeys(SERIES, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in found:
                found[sample.name] += sample.value
    return found


def finished_job(cluster, namespace: str) -> dict | None:
    jobs = get(cluster, "jobs", None, namespace)["items"]
    done = [j for j in jobs if any(c["type"] == "Complete" and c["status"] == "True"
                                   for c in (j.get("status") or {}).get("conditions") or [])]
    return done[0] if done else None


def reported_bytes(cluster, namespace: str, job: str) -> int:
    """downloaded_bytes of the Job's succeeded pod, 0 when it left no report."""
    for pod in get(cluster, "pods", None, namespace)["items"]:
        if (pod["metadata"].get("labels") or {}).get("batch.kubernetes.io/job-name") != job:
            continue
        for state in pod["status"].get("containerStatuses") or []:
            terminated = state["state"].get("terminated") or {}
            if terminated.get("exitCode") == 0 and terminated.get("message"):
                return json.loads(terminated["message"].splitlines()[-1]).get("downloaded_bytes") or 0
    return 0


def test_a_finished_download_is_counted_once_with_the_bytes_its_pod_reported(cluster, operator, namespace):
    before = download_series(operator.metrics())
    apply(cluster, namespace, {
        "apiVersion": "scibox.io/v1alpha1", "kind": "VLLMDeployment", "metadata": {"name": "dl-metrics"},
        "spec": {"model": {"name": "scibox/tiny-llama", "revision": "main"}, "resources": {"gpus": 1},
                 "cache": {"size": "1Gi"}}})
    job = wait_for(lambda: finished_job(cluster, namespace), timeout=120, what="the download Job complete")
    expected = reported_bytes(cluster, namespace, job["metadata"]["name"])

    def counted():
        now = download_series(operator.metrics())
        return now if now[SERIES[0]] > before[SERIES[0]] else None

    after = wait_for(counted, timeout=30, what="the download in the operator's metrics")
    assert {n: after[n] - before[n] for n in SERIES} == {SERIES[0]: 1.0, SERIES[1]: float(expected), SERIES[2]: 0.0}
    time.sleep(1)
    for _ in range(3):  # scrapes only read
        assert download_series(operator.metrics()) == after
